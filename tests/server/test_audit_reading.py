"""Reading an audit file back: every line that holds an event is read, a damaged line is
reported with its number and why, and only a torn last line is passed over in silence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetid.server.audit import JsonlAudit, UnreadableLine, audit_event, read_jsonl


def _read(path: Path) -> tuple[list[dict[str, Any]], list[UnreadableLine]]:
    unreadable: list[UnreadableLine] = []
    events = list(read_jsonl(path, unreadable=unreadable.append))
    return events, unreadable


def _line(**fields: Any) -> bytes:
    return json.dumps({"time": 1.0, "event": "token_issued", **fields}).encode() + b"\n"


def test_what_the_sink_writes_reads_back(tmp_path: Path) -> None:
    sink = JsonlAudit(tmp_path / "audit.jsonl")
    written = [
        audit_event(time=10.0, event="revoked", agent="a", jti="j1", outcome="revoked"),
        audit_event(time=11.0, event="sign_ins_ended", agent="b", reason="removed"),
    ]
    for event in written:
        sink.record(event)
    sink.close()

    events, unreadable = _read(tmp_path / "audit.jsonl")

    assert events == written
    assert unreadable == []


def test_a_missing_file_has_no_events(tmp_path: Path) -> None:
    assert _read(tmp_path / "audit.jsonl") == ([], [])


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xc3\x28\n", "not UTF-8 text (byte 1)"),
        (b"{oops}\n", "not JSON (Expecting property name enclosed in double quotes: column 2)"),
        (b'{"time": NaN, "event": "x"}\n', "not JSON (NaN is not a JSON value)"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"event": "x"}\n', "time is not a number of seconds"),
        (b'{"time": true, "event": "x"}\n', "time is not a number of seconds"),
        (b'{"time": 1e300, "event": "x"}\n', "time is out of range"),
        (b'{"time": 1}\n', "event is not a string"),
        (_line(agent=7), "agent is not a string"),
        (_line(granted="crm:read"), "granted is not a list of strings"),
        (_line(act=[{"sub": "x"}]), "act is not a list of strings"),
        (_line(refused={"scope": "a"}), "refused is not a list"),
        (_line(refused=["a"]), "refused[0] is not an object"),
        (_line(refused=[{"code": "denied"}]), "refused[0] has no scope"),
    ],
)
def test_a_damaged_middle_line_is_reported_and_the_rest_read(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(jti="before") + line + _line(jti="after"))

    events, unreadable = _read(path)

    assert [event["jti"] for event in events] == ["before", "after"]
    assert unreadable == [UnreadableLine(path, 2, reason)]
    assert unreadable[0].format() == f"{path}:2: {reason}; line skipped"


@pytest.mark.parametrize(
    "torn",
    [b'{"time": 2.0, "ev', '{"time": 2.0, "subject": "zo\u00eb'.encode()[:-1]],
    ids=["inside-json", "inside-a-character"],
)
def test_a_torn_last_line_is_skipped_in_silence(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(jti="whole") + torn)

    events, unreadable = _read(path)

    assert [event["jti"] for event in events] == ["whole"]
    assert unreadable == []


def test_a_whole_last_line_without_its_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(_line(jti="first") + _line(jti="last").rstrip(b"\n"))

    events, _ = _read(path)

    assert [event["jti"] for event in events] == ["first", "last"]


def test_blank_lines_are_no_events_and_no_damage(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"\n" + _line(jti="one") + b"   \n")

    events, unreadable = _read(path)

    assert [event["jti"] for event in events] == ["one"]
    assert unreadable == []


def test_a_folder_in_place_of_the_file_is_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()

    with pytest.raises(IsADirectoryError):
        _read(tmp_path / "audit.jsonl")
