"""The server's log formatter writes what the logging module's own formatter writes."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from fleetid.server.logs import LOG_FORMAT, StampFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("fleetid.server", logging.INFO, __file__, 1, "%s", ("line",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


# Moments within a few seconds of each other, in any order: the remembered second is
# sometimes right, sometimes one behind, sometimes ahead.
_MOMENTS = st.lists(
    st.floats(min_value=1_800_000_000, max_value=1_800_000_004, allow_nan=False), min_size=1
)


@given(_MOMENTS)
def test_lines_match_the_standard_formatter(moments: list[float]) -> None:
    ours, standard = StampFormatter(), logging.Formatter(LOG_FORMAT)

    for created in moments:
        assert ours.format(_record(created)) == standard.format(_record(created))


def test_a_date_format_of_the_callers_own_is_honoured() -> None:
    record = _record(1_800_000_000.25)

    assert StampFormatter().formatTime(record, "%Y") == logging.Formatter().formatTime(
        record, "%Y"
    )


def test_a_stamp_is_reused_within_its_second_and_renewed_after() -> None:
    formatter = StampFormatter()

    first = formatter.formatTime(_record(1_800_000_000.125))
    same_second = formatter.formatTime(_record(1_800_000_000.875))
    next_second = formatter.formatTime(_record(1_800_000_001.0))

    assert first[:-4] == same_second[:-4]
    assert (first[-3:], same_second[-3:]) == ("125", "875")
    assert next_second[:-4] != first[:-4]
    assert next_second.endswith(",000")
