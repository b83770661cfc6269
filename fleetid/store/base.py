"""The storage contract that every fleetid backend implements.

The identity server remembers short-lived, security-relevant facts: authorization codes that
may be redeemed once, refresh-token families that rotate, ``jti`` values already seen in client
assertions, revoked access tokens, pending approvals and device codes. Each is a JSON object
kept under a (namespace, key) pair with a version for compare-and-set and an optional expiry.
Beside them sits an append-only audit trail. ``Store`` is that shape and nothing more;
``SQLiteStore`` and ``DynamoDBStore`` implement it and pass the same contract tests, so the
server behaves the same embedded and deployed.

What every implementation guarantees:

- A record is live until its ``expires_at`` (unix seconds): once ``expires_at <= now`` it is
  absent to every read and ``create`` may overwrite it. Backends remove expired records
  lazily, but no caller can observe one.
- ``version`` is 1 after ``create`` and grows by one on each successful ``replace``.
- ``create``, ``replace`` and ``redeem`` are atomic against concurrent callers in any thread or
  process. Losing a race is a normal outcome reported by the return value, not an exception.
- Audit events come back oldest first. ``since`` is inclusive. Events with the same time come
  back in an order that is stable but otherwise unspecified.
- ``scan`` yields every record of a namespace that is live when it is reached, each once.
  Records written while it runs may or may not be among them.

What every implementation accepts, checked here so that both refuse the same input:

- a namespace is a lowercase identifier of at most 63 characters (``auth_code``);
- a key is a non-empty string of at most 1024 UTF-8 bytes; callers pass digests of codes and
  tokens, never the codes and tokens themselves;
- a value or audit event is a JSON object of at most ``MAX_ENCODED_BYTES`` once encoded, which
  keeps every record inside DynamoDB's 400 KB item limit;
- an audit event carries ``"time"`` (unix seconds, an int or a float) and ``"agent"`` (a
  non-empty string).

The validators and codecs below are public so that another backend can enforce the same rules.
"""

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import orjson

from fleetid.store.errors import StoreError

__all__ = [
    "MAX_AUDIT_TIME",
    "MAX_BATCH",
    "MAX_ENCODED_BYTES",
    "MAX_KEY_BYTES",
    "Clock",
    "Record",
    "Store",
    "decode_object",
    "encode_audit_event",
    "encode_value",
    "unix_now",
    "validate_address",
    "validate_audit_query",
    "validate_batch",
    "validate_expires_at",
    "validate_namespace",
    "validate_version",
]

MAX_KEY_BYTES: Final = 1024
MAX_ENCODED_BYTES: Final = 350_000
# What DynamoDB's BatchGetItem reads in one request.
MAX_BATCH: Final = 100
# Eleven integer digits cover every time before the year 5000 and keep fixed-width time
# strings (DynamoDB sort keys) in numeric order.
MAX_AUDIT_TIME: Final = 10**11

Clock = Callable[[], float]
"""Returns unix seconds; stores take one so that tests can move time."""

_NAMESPACE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Record:
    """One live record as read from a store."""

    value: Mapping[str, Any]
    version: int
    expires_at: int | None


class Store(ABC):
    """Versioned, expiring JSON records and an audit trail, shared by every server instance."""

    @abstractmethod
    def create(
        self, namespace: str, key: str, value: Mapping[str, Any], *, expires_at: int | None
    ) -> bool:
        """Store a new record at version 1.

        Returns False, and writes nothing, when a live record already holds the key.
        """

    @abstractmethod
    def get(self, namespace: str, key: str) -> Record | None:
        """Return the live record under the key, or None."""

    def get_many(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        """The live records at these (namespace, key) addresses; absent ones are left out.

        For requests that need several records at once; a backend that reads them in one
        statement or round trip overrides this. At most `MAX_BATCH` addresses.
        """
        found: dict[tuple[str, str], Record] = {}
        for namespace, key in validate_batch(addresses):
            record = self.get(namespace, key)
            if record is not None:
                found[(namespace, key)] = record
        return found

    @abstractmethod
    def replace(
        self,
        namespace: str,
        key: str,
        value: Mapping[str, Any],
        *,
        version: int,
        expires_at: int | None,
    ) -> bool:
        """Overwrite a live record if its version is still ``version``; the new one is +1.

        Returns False, and writes nothing, when the record is absent, expired or at another
        version: someone else changed it since the caller read it.
        """

    @abstractmethod
    def redeem(self, namespace: str, key: str) -> Record | None:
        """Delete a live record and return it; of concurrent callers exactly one gets it."""

    @abstractmethod
    def delete(self, namespace: str, key: str) -> None:
        """Remove the record under the key, if any."""

    @abstractmethod
    def scan(self, namespace: str) -> Iterator[tuple[str, Record]]:
        """Every live record of one namespace, as (key, record) pairs, in no given order.

        For rare sweeps, such as ending the sign-ins of an agent removed from the fleet: it
        reads the whole namespace, and on DynamoDB the whole table. The caller may write to
        the store between two pairs.
        """

    @abstractmethod
    def append_audit(self, event: Mapping[str, Any]) -> None:
        """Add an event, with at least ``"time"`` and ``"agent"``, to the audit trail."""

    @abstractmethod
    def audit(
        self, *, agent: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` audit events, oldest first, of one agent or of all.

        ``since`` keeps only events whose time is at or after it.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the backend's connections; the store is unusable afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def validate_namespace(namespace: str) -> None:
    """Refuse a namespace that some backend could not keep apart from the others."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError("namespace must be a lowercase identifier of at most 63 characters")


def validate_address(namespace: str, key: str) -> None:
    """Refuse a namespace or key that some backend could not store unambiguously."""
    validate_namespace(namespace)

    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")

    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"key must be at most {MAX_KEY_BYTES} bytes of UTF-8")


def validate_batch(addresses: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The distinct addresses of a `get_many`, in order, once each is checked."""
    if len(addresses) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} records can be read at once")
    for namespace, key in addresses:
        validate_address(namespace, key)
    return list(dict.fromkeys(addresses))


def validate_expires_at(expires_at: int | None) -> None:
    """Refuse an expiry that is not whole unix seconds."""
    if expires_at is None:
        return

    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise TypeError("expires_at must be an int (unix seconds) or None")


def validate_version(version: int) -> None:
    """Refuse a version that no record can have."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError("version must be an int")

    if version < 1:
        raise ValueError("version must be at least 1")


def encode_value(value: Mapping[str, Any]) -> str:
    """Encode a record's value as compact JSON, refusing what some backend could not keep."""
    if not isinstance(value, Mapping):
        raise TypeError("value must be a mapping")

    try:
        # NaN and infinity are not JSON; another reader of the store would reject them.
        encoded = json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError("value must be JSON-serialisable") from exc

    if len(encoded.encode()) > MAX_ENCODED_BYTES:
        raise ValueError(f"value must encode to at most {MAX_ENCODED_BYTES} bytes")

    return encoded


def decode_object(encoded: str) -> dict[str, Any]:
    """Decode a value or audit event written by ``encode_value`` or ``encode_audit_event``."""
    try:
        decoded = orjson.loads(encoded)
    except (TypeError, ValueError) as exc:
        raise StoreError("stored record is not valid JSON") from exc

    if not isinstance(decoded, dict):
        raise StoreError("stored record is not a JSON object")

    return decoded


def encode_audit_event(event: Mapping[str, Any]) -> tuple[float, str, str]:
    """Check an audit event and return its time, its agent and its JSON encoding."""
    if not isinstance(event, Mapping):
        raise TypeError("audit event must be a mapping")

    event_time = event.get("time")
    if isinstance(event_time, bool) or not isinstance(event_time, int | float):
        raise ValueError('audit event needs a numeric "time" in unix seconds')

    if not 0 <= event_time < MAX_AUDIT_TIME:
        raise ValueError('audit event "time" is out of range')

    agent = event.get("agent")
    if not isinstance(agent, str) or not agent:
        raise ValueError('audit event needs a non-empty string "agent"')

    if len(agent.encode()) > MAX_KEY_BYTES:
        raise ValueError(f'audit event "agent" must be at most {MAX_KEY_BYTES} bytes of UTF-8')

    return float(event_time), agent, encode_value(event)


def validate_audit_query(agent: str | None, since: float | None, limit: int) -> None:
    """Refuse audit query parameters that no backend can answer."""
    if agent is not None and (not isinstance(agent, str) or not agent):
        raise ValueError("agent must be a non-empty string or None")

    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since)
    ):
        raise ValueError("since must be a finite number of unix seconds or None")

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive int")


def unix_now(clock: Clock) -> int:
    """The clock's current time in whole seconds, rounded down.

    Records expire at whole seconds, so ``expires_at <= floor(now)`` is the same test as
    ``expires_at <= now`` while keeping every comparison in integers.
    """
    return math.floor(clock())
