"""The audit trail: one structured line per issuance decision.

A line says when, which revision decided, which agent asked for whom (subject, tenant and
the actor chain), for what resource, which scopes were requested, granted and refused with
their reasons, and the `jti` of the token issued. It never holds a token, a code, a secret
or a key: events are built from decisions and claims, never from request bodies, and
`audit_event` takes only named fields.

Sinks: `JsonlAudit` appends to `<state>/audit.jsonl` for `fleetid serve`; `StoreAudit`
writes to the store (DynamoDB on AWS); every event also goes to the `fleetid.audit` logger.

`read_jsonl` reads an audit file back line by line, so a damaged line costs only itself: a
line that is not UTF-8, not JSON or not shaped as an event is handed to the caller as an
`UnreadableLine` and skipped, and the lines after it are read as usual.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fleetid.policy.decide import Decision
from fleetid.store import Store

__all__ = [
    "AuditSink",
    "JsonlAudit",
    "StoreAudit",
    "UnreadableLine",
    "audit_event",
    "matching",
    "read_jsonl",
]

logger = logging.getLogger("fleetid.audit")


def audit_event(
    *,
    time: float,
    event: str,
    decision: Decision | None = None,
    agent: str | None = None,
    grant_type: str | None = None,
    jti: str | None = None,
    act: Mapping[str, Any] | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    subject: str | None = None,
    tenant: str | None = None,
    resource: str | None = None,
    revision: str | None = None,
) -> dict[str, Any]:
    line: dict[str, Any] = {"time": round(time, 3), "event": event}
    if grant_type is not None:
        line["grant_type"] = grant_type
    if decision is not None:
        request = decision.request
        person = request.subject
        line.update(
            revision=decision.revision,
            agent=request.agent,
            subject=person.user if person is not None else None,
            tenant=person.tenant if person is not None else None,
            resource=request.resource,
            requested=list(request.scopes),
            granted=list(decision.granted),
            refused=[
                {"scope": refusal.scope, "code": refusal.code, "reason": refusal.reason}
                for refusal in decision.refused
            ],
            lifetime=decision.lifetime,
        )
    else:
        if agent is not None:
            line["agent"] = agent
        given = (
            ("revision", revision),
            ("subject", subject),
            ("tenant", tenant),
            ("resource", resource),
        )
        for name, value in given:
            if value is not None:
                line[name] = value
    line["act"] = _actors(act)
    line["jti"] = jti
    if outcome is not None:
        line["outcome"] = outcome
    if reason is not None:
        line["reason"] = reason
    return line


def _actors(act: Mapping[str, Any] | None) -> list[str]:
    """The actor chain, outermost (the current actor) first."""
    chain: list[str] = []
    while act:
        chain.append(str(act.get("sub", "")))
        nested = act.get("act")
        act = nested if isinstance(nested, Mapping) else None
    return chain


class AuditSink(ABC):
    def record(self, event: Mapping[str, Any]) -> None:
        line = orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode()
        logger.info("%s", line)
        self.write(event, line)

    @abstractmethod
    def write(self, event: Mapping[str, Any], line: str) -> None:
        """Keep the event; `line` is its JSON text, as logged."""


class JsonlAudit(AuditSink):
    """Appends one JSON object per line; O_APPEND keeps lines whole across processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, event: Mapping[str, Any], line: str) -> None:
        encoded = f"{line}\n".encode()
        with self._lock:
            os.write(self._descriptor, encoded)

    def close(self) -> None:
        os.close(self._descriptor)


class StoreAudit(AuditSink):
    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, event: Mapping[str, Any], line: str) -> None:
        self.store.append_audit({**event, "agent": event.get("agent") or ""})


@dataclass(frozen=True, slots=True)
class UnreadableLine:
    """A line of an audit file that holds no event, and why."""

    path: Path
    number: int
    reason: str

    def format(self) -> str:
        return f"{self.path}:{self.number}: {self.reason}; line skipped"


# Fields an event may carry, by what `audit_event` puts in them.
_TEXT_FIELDS = (
    "agent",
    "subject",
    "tenant",
    "resource",
    "revision",
    "grant_type",
    "jti",
    "outcome",
    "reason",
)
_LIST_FIELDS = ("act", "requested", "granted")


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    unreadable: Callable[[UnreadableLine], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The events in an audit file, oldest first; none when the file does not exist.

    A line that holds no event is given to `unreadable` and skipped. The exception is a last
    line that has no newline and does not parse: it is being written right now, or a crash
    cut it short, and it is skipped without a word. Blank lines are skipped too.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            problem: str | None
            try:
                event = _parse(raw)
            except ValueError as exc:
                if not raw.endswith(b"\n"):
                    return
                problem = _unparsable(exc)
            else:
                problem = _shape_problem(event)
            if problem is None:
                yield event
            elif unreadable is not None:
                unreadable(UnreadableLine(path, number, problem))


class _NotJsonConstant(ValueError):
    """NaN and Infinity, which Python's json accepts and JSON does not."""


def _reject_constant(name: str) -> Any:
    raise _NotJsonConstant(name)


def _parse(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def _unparsable(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start + 1})"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg}: column {exc.colno})"
    if isinstance(exc, _NotJsonConstant):
        return f"not JSON ({exc} is not a JSON value)"
    return "not JSON"


def _shape_problem(event: Any) -> str | None:
    """What keeps a parsed line from being an audit event, or None."""
    if not isinstance(event, dict):
        return "not a JSON object"
    moment = event.get("time")
    if isinstance(moment, bool) or not isinstance(moment, int | float):
        return "time is not a number of seconds"
    try:
        datetime.fromtimestamp(moment, UTC)
    except (OverflowError, OSError, ValueError):
        return "time is out of range"
    if not isinstance(event.get("event"), str):
        return "event is not a string"
    for name in _TEXT_FIELDS:
        if event.get(name) is not None and not isinstance(event[name], str):
            return f"{name} is not a string"
    for name in _LIST_FIELDS:
        values = event.get(name, [])
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            return f"{name} is not a list of strings"
    refused = event.get("refused", [])
    if not isinstance(refused, list):
        return "refused is not a list"
    for index, refusal in enumerate(refused):
        if not isinstance(refusal, dict):
            return f"refused[{index}] is not an object"
        for name in ("scope", "code"):
            if not isinstance(refusal.get(name), str):
                return f"refused[{index}] has no {name}"
    return None


def matching(
    events: Iterator[dict[str, Any]], *, agent: str | None, since: float | None
) -> Sequence[dict[str, Any]]:
    """The events of `agent` (any agent when None) at or after `since`."""
    return [
        event
        for event in events
        if (agent is None or event.get("agent") == agent)
        and (since is None or event["time"] >= since)
    ]
