"""The server's log formatter writes what the logging module's own formatter writes."""

from __future__ import annotations

import logging
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetid.server.logs import LOG_FORMAT, StampFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("fleetid.server", logging.INFO, __file__, 1, "%s", ("line",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


# Moments within a few seconds of each other, in any order: the remembered second is
# sometimes right, sometimes one behind, sometimes ahead. Some are before 1970, where
# rounding toward zero and rounding down differ.
_MOMENTS = st.lists(
    st.floats(min_value=1_800_000_000, max_value=1_800_000_004)
    | st.floats(min_value=-3, max_value=3),
    min_size=1,
)


@given(_MOMENTS)
def test_lines_match_the_standard_formatter(moments: list[float]) -> None:
    ours, standard = StampFormatter(), logging.Formatter(LOG_FORMAT)

    for created in moments:
        assert ours.format(_record(created)) == standard.format(_record(created))


@given(
    st.text(),
    st.lists(st.integers() | st.floats(allow_nan=False) | st.text(), max_size=3),
    st.booleans(),
)
def test_messages_arguments_and_exceptions_come_out_as_the_standard_formatter_writes(
    text: str, arguments: list[object], failed: bool
) -> None:
    message = text.replace("%", "%%") + " %r" * len(arguments)
    record = logging.LogRecord(
        "fleetid.audit", logging.INFO, __file__, 1, message, tuple(arguments), None
    )
    if failed:
        try:
            raise ValueError("the failure being logged")
        except ValueError:
            record.exc_info = sys.exc_info()

    assert StampFormatter().format(record) == logging.Formatter(LOG_FORMAT).format(record)


def test_a_format_of_the_callers_own_is_honoured() -> None:
    record = _record(1_800_000_000.25)
    form = "%(levelname)s [%(name)s] %(message)s at %(asctime)s"

    assert StampFormatter(form).format(record) == logging.Formatter(form).format(record)


def test_a_date_format_of_the_callers_own_is_honoured() -> None:
    record = _record(1_800_000_000.25)

    assert StampFormatter(LOG_FORMAT, "%Y").format(record) == logging.Formatter(
        LOG_FORMAT, "%Y"
    ).format(record)


def test_a_changed_converter_is_not_served_a_stale_stamp() -> None:
    formatter, standard = StampFormatter(), logging.Formatter(LOG_FORMAT)
    record = _record(1_800_000_000.5)
    formatter.format(record)

    # An hour ahead of any time zone the machine may be in.
    def ahead(seconds: float | None) -> time.struct_time:
        return time.localtime((seconds or 0) + 3600)

    formatter.converter = standard.converter = ahead

    assert formatter.format(record) == standard.format(record)


def test_the_date_is_formatted_once_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    strftime = time.strftime

    def counting_strftime(form: str, moment: time.struct_time) -> str:
        calls.append(form)
        return strftime(form, moment)

    monkeypatch.setattr(time, "strftime", counting_strftime)
    formatter = StampFormatter()

    stamps = [
        formatter.formatTime(_record(moment))
        for moment in (1_800_000_000.125, 1_800_000_000.5, 1_800_000_000.875, 1_800_000_001.0)
    ]

    assert len(calls) == 2
    assert [stamp[-3:] for stamp in stamps] == ["125", "500", "875", "000"]
    assert stamps[0][:-4] == stamps[2][:-4] != stamps[3][:-4]
