"""The audit trail: one structured line per issuance decision.

A line says when, which revision decided, which agent asked for whom (subject, tenant and
the actor chain), for what resource, which scopes were requested, granted and refused with
their reasons, and the `jti` of the token issued. It never holds a token, a code, a secret
or a key: events are built from decisions and claims, never from request bodies, and
`audit_event` takes only named fields.

Sinks: `JsonlAudit` appends to `<state>/audit.jsonl` for `fleetid serve`; `StoreAudit`
writes to the store (DynamoDB on AWS); every event also goes to the `fleetid.audit` logger.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from fleetid.policy.decide import Decision
from fleetid.store import Store

__all__ = ["AuditSink", "JsonlAudit", "StoreAudit", "audit_event", "read_jsonl"]

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
        for name, value in (("subject", subject), ("tenant", tenant), ("resource", resource)):
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


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events in an audit file; a torn last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


def matching(
    events: Iterator[dict[str, Any]], *, agent: str | None, since: float | None
) -> Sequence[dict[str, Any]]:
    return [
        event
        for event in events
        if (agent is None or event.get("agent") == agent)
        and (since is None or float(event.get("time", 0)) >= since)
    ]
