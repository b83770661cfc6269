"""The vault's records in the Store: what each one is bound to, and how it is kept.

A record holds one credential, encrypted as a whole: a user's tokens for an OAuth connection
(bound to connection, tenant and user), or the static key of an API-key connection (bound to
the connection). Its binding decides both where it is stored and the encryption context it is
sealed under:

- the store key is the SHA-256 of the binding, so user ids of any length or alphabet make a
  valid key, and the binding is also written beside the ciphertext in the clear, so a
  rotation can rebuild the context of a record it only knows by key;
- reading a record for a binding checks the stored binding, then opens the ciphertext under
  the context derived from the binding *asked for*, not the one stored: a record copied onto
  another row fails to decrypt even when its clear-text binding was edited to match.

Records live in namespace ``vault`` without expiry. The store lists a namespace only by a
full scan (a table Scan on DynamoDB), too costly for a rotation to repeat, so the vault keeps
its own index, ``vault_index``: 64 shards, each the sorted list of record keys
whose digest falls in it, updated by compare-and-set. A rotation walks the shards.

NOTE: a shard holds about 5,000 keys within the store's value limit, so the index covers about
300,000 records; a link beyond that raises `VaultError` rather than go unindexed.

Each record value, beside the sealed credential, may hold a refresh *lease*: a fetcher that
refreshes an OAuth token first writes its lease into the record by compare-and-set, so
fetchers in other processes wait for its result instead of refreshing the same token again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fleetid.store import Clock, Record, Store
from fleetid.store.base import unix_now
from fleetid.vault.envelope import Envelope, Sealed
from fleetid.vault.errors import DecryptionFailed, VaultError

__all__ = [
    "INDEX_NAMESPACE",
    "INDEX_SHARDS",
    "NAMESPACE",
    "Binding",
    "Lease",
    "RotationFailure",
    "RotationReport",
    "VaultRecord",
    "VaultRecords",
]

NAMESPACE: Final = "vault"
INDEX_NAMESPACE: Final = "vault_index"
INDEX_SHARDS: Final = 64
RECORD_FORMAT: Final = "fleetid-vault-record/1"
_INDEX_ATTEMPTS: Final = 50

Purpose = Literal["oauth", "api_key", "link"]
Status = Literal["linked", "broken"]

# What each kind of record is for, as the encryption context says it.
_CONTEXT_PURPOSE: Final[Mapping[str, str]] = {
    "oauth": "connection-tokens",
    "api_key": "connection-api-key",
    "link": "connection-link",
}


@dataclass(frozen=True, slots=True)
class Binding:
    """What a record belongs to: a user's link, or a connection's API key."""

    purpose: Purpose
    connection: str
    tenant: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if self.purpose not in _CONTEXT_PURPOSE or not self.connection:
            raise ValueError("a binding names its purpose and a connection")

        per_user = self.purpose != "api_key"
        if per_user and not (self.tenant and self.user):
            raise ValueError(f"a {self.purpose} record is bound to a tenant and a user")
        if not per_user and (self.tenant is not None or self.user is not None):
            raise ValueError("an API key is bound to its connection only")

    @property
    def key(self) -> str:
        """The store key: a digest, so any user id makes a valid key."""
        encoded = json.dumps(
            [self.purpose, self.connection, self.tenant, self.user],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()

    def context(self, fleet: str) -> dict[str, str]:
        """The encryption context: KMS context and AEAD associated data alike."""
        context = {
            "fleetid:purpose": _CONTEXT_PURPOSE[self.purpose],
            "fleetid:fleet": fleet,
            "fleetid:connection": self.connection,
        }
        if self.tenant is not None and self.user is not None:
            context["fleetid:tenant"] = self.tenant
            context["fleetid:user"] = self.user

        return context

    def to_json(self) -> dict[str, str | None]:
        return {
            "purpose": self.purpose,
            "connection": self.connection,
            "tenant": self.tenant,
            "user": self.user,
        }

    @classmethod
    def from_json(cls, value: Any) -> Binding:
        if not isinstance(value, Mapping):
            raise DecryptionFailed("the record does not say what it is bound to")

        try:
            return cls(
                purpose=value["purpose"],
                connection=value["connection"],
                tenant=value.get("tenant"),
                user=value.get("user"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DecryptionFailed("the record's binding is malformed") from exc


@dataclass(frozen=True, slots=True)
class Lease:
    """A refresh in progress: `holder` refreshes, and nobody else may before `until`."""

    holder: str
    until: int


@dataclass(frozen=True, slots=True)
class VaultRecord:
    """One record as read: still sealed. `version` is the store's, for compare-and-set."""

    binding: Binding
    version: int
    status: Status
    sealed: Sealed | None
    lease: Lease | None = None
    broken_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RotationFailure:
    """A record the rotation could not re-wrap, by store key, with the error's code."""

    key: str
    code: str


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What one walk over every record did."""

    examined: int
    rewrapped: int
    current: int
    missing: int
    leased: int
    failed: tuple[RotationFailure, ...]

    @property
    def complete(self) -> bool:
        """Whether every record found is now under the current master key."""
        return self.examined == self.rewrapped + self.current + self.missing


class VaultRecords:
    """Sealed records in a `Store`, bound to the fleet `fleet`, and their index."""

    def __init__(
        self, store: Store, envelope: Envelope, *, fleet: str, clock: Clock = time.time
    ) -> None:
        if not fleet:
            raise ValueError("fleet names the fleet the vault serves; it is in every context")

        self.store = store
        self.envelope = envelope
        self.fleet = fleet
        self._clock = clock

    def seal_value(self, binding: Binding, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A store value holding `payload` sealed for `binding`."""
        encoded = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True)
        sealed = self.envelope.seal(encoded.encode("utf-8"), binding.context(self.fleet))

        return {"format": RECORD_FORMAT, "binding": binding.to_json(), "sealed": sealed.to_json()}

    def open_value(self, binding: Binding, value: Mapping[str, Any]) -> dict[str, Any]:
        """The payload of a store value read for `binding`."""
        if Binding.from_json(value.get("binding")) != binding:
            raise DecryptionFailed(
                "the record stored under this key belongs to another connection, tenant or user"
            )

        return self._decode(binding, Sealed.from_json(value.get("sealed")))

    def read(self, binding: Binding) -> VaultRecord | None:
        """The record for `binding`, still sealed, or None."""
        stored = self.store.get(NAMESPACE, binding.key)
        if stored is None:
            return None

        return self._record(binding, stored)

    def open(self, record: VaultRecord) -> dict[str, Any]:
        """Decrypt a record's payload under the context of the binding it was read for."""
        if record.sealed is None:
            raise DecryptionFailed("the record holds no credential")

        return self._decode(record.binding, record.sealed)

    def create(self, binding: Binding, payload: Mapping[str, Any]) -> bool:
        """Store a new record; False when one exists already."""
        value = self.seal_value(binding, payload) | {"status": "linked"}

        # Indexed first: a record is never stored without an index entry, at worst an entry
        # outlives a record that was never stored.
        self._index_add(binding.key)

        return self.store.create(NAMESPACE, binding.key, value, expires_at=None)

    def replace(
        self,
        record: VaultRecord,
        *,
        payload: Mapping[str, Any] | None = None,
        sealed: Sealed | None = None,
        status: Status | None = None,
        lease: Lease | None = None,
        broken_reason: str | None = None,
    ) -> VaultRecord | None:
        """Write a new state of `record` if nobody changed it since it was read.

        The credential is `payload` sealed anew, or `sealed` as given, or else the record's
        own; a lease or broken reason not given is dropped. Returns the record written, or
        None when another writer got there first.
        """
        binding = record.binding
        if payload is not None:
            value = self.seal_value(binding, payload)
        else:
            kept = sealed if sealed is not None else record.sealed
            value = {"format": RECORD_FORMAT, "binding": binding.to_json()}
            value["sealed"] = None if kept is None else kept.to_json()
        value["status"] = status or record.status
        if lease is not None:
            value["lease"] = {"holder": lease.holder, "until": lease.until}
        if broken_reason is not None:
            value["broken_reason"] = broken_reason
        if value["status"] == "broken":
            value["sealed"] = None

        written = self.store.replace(
            NAMESPACE, binding.key, value, version=record.version, expires_at=None
        )
        if not written:
            return None

        return _parse(binding, value, record.version + 1)

    def delete(self, binding: Binding) -> None:
        """Remove the record and its index entry."""
        self.store.delete(NAMESPACE, binding.key)
        self._index_remove(binding.key)

    def rewrap(self, record: VaultRecord) -> VaultRecord | None:
        """The record with its data key re-wrapped under the current master key.

        Returns the record unchanged when it already is or while a refresh holds its lease
        (the refresh seals it anew, and must not lose its compare-and-set to a re-wrap), and
        None when another writer changed it first (it was then sealed anew, under the current
        key).
        """
        if record.sealed is None or not self.envelope.needs_rewrap(record.sealed):
            return record

        if self.leased(record):
            return record

        sealed = self.envelope.rewrap(record.sealed, record.binding.context(self.fleet))

        return self.replace(record, sealed=sealed, broken_reason=record.broken_reason)

    def rewrap_all(self) -> RotationReport:
        """Walk every indexed record and re-wrap those under an older master key.

        Safe to run while the vault serves: each re-wrap is a compare-and-set, and a record
        changed meanwhile was sealed under the current key by whoever changed it. A record
        whose refresh lease is held is left to that refresh and counted as `leased`; run the
        walk again until the report is `complete` before retiring the old master key.
        """
        examined = rewrapped = current = missing = leased = 0
        failed: list[RotationFailure] = []

        for key in self.keys():
            examined += 1
            try:
                outcome = self._rewrap_key(key)
            except VaultError as error:
                failed.append(RotationFailure(key, error.code))
                continue

            if outcome == "rewrapped":
                rewrapped += 1
            elif outcome == "current":
                current += 1
            elif outcome == "leased":
                leased += 1
            else:
                missing += 1

        return RotationReport(examined, rewrapped, current, missing, leased, tuple(failed))

    def leased(self, record: VaultRecord) -> bool:
        """Whether a refresh holds the record's lease now; an expired lease holds nothing."""
        return record.lease is not None and record.lease.until > unix_now(self._clock)

    def keys(self) -> Iterator[str]:
        """The store keys of every indexed record, shard by shard."""
        for shard in range(INDEX_SHARDS):
            stored = self.store.get(INDEX_NAMESPACE, _shard_name(shard))
            if stored is not None:
                yield from _index_keys(stored)

    def _rewrap_key(self, key: str) -> Literal["rewrapped", "current", "missing", "leased"]:
        for _ in range(3):
            stored = self.store.get(NAMESPACE, key)
            if stored is None:
                return "missing"

            binding = Binding.from_json(stored.value.get("binding"))
            if binding.key != key:
                raise DecryptionFailed("the record's binding does not match its store key")

            record = self._record(binding, stored)
            if record.sealed is None or not self.envelope.needs_rewrap(record.sealed):
                return "current"

            if self.leased(record):
                return "leased"

            if self.rewrap(record) is not None:
                return "rewrapped"

        raise VaultError("the record kept changing while it was re-wrapped")

    def _decode(self, binding: Binding, sealed: Sealed) -> dict[str, Any]:
        plaintext = self.envelope.open(sealed, binding.context(self.fleet))
        try:
            payload = json.loads(plaintext)
        except ValueError as exc:
            raise DecryptionFailed("the decrypted record is not JSON") from exc

        if not isinstance(payload, dict):
            raise DecryptionFailed("the decrypted record is not a JSON object")

        return payload

    def _record(self, binding: Binding, stored: Record) -> VaultRecord:
        if Binding.from_json(stored.value.get("binding")) != binding:
            raise DecryptionFailed(
                "the record stored under this key belongs to another connection, tenant or user"
            )

        return _parse(binding, stored.value, stored.version)

    def _index_add(self, key: str) -> None:
        self._index_update(key, add=True)

    def _index_remove(self, key: str) -> None:
        self._index_update(key, add=False)

    def _index_update(self, key: str, *, add: bool) -> None:
        shard = _shard_name(int(key[:4], 16) % INDEX_SHARDS)

        for _ in range(_INDEX_ATTEMPTS):
            stored = self.store.get(INDEX_NAMESPACE, shard)
            keys = set() if stored is None else set(_index_keys(stored))
            if (key in keys) == add:
                return

            keys = keys | {key} if add else keys - {key}
            value = {"keys": sorted(keys)}
            try:
                if stored is None:
                    done = self.store.create(INDEX_NAMESPACE, shard, value, expires_at=None)
                else:
                    done = self.store.replace(
                        INDEX_NAMESPACE, shard, value, version=stored.version, expires_at=None
                    )
            except ValueError as exc:
                raise VaultError(f"the vault's record index shard {shard} is full") from exc

            # Lost to a concurrent link or unlink in the same shard: read it again.
            if done:
                return

        raise VaultError(f"the vault's record index shard {shard} stayed contended")


def _shard_name(shard: int) -> str:
    return f"shard-{shard:02d}"


def _index_keys(stored: Record) -> list[str]:
    keys = stored.value.get("keys")
    if not isinstance(keys, list):
        raise VaultError("a vault index shard is malformed")

    return [key for key in keys if isinstance(key, str)]


def _parse(binding: Binding, value: Mapping[str, Any], version: int) -> VaultRecord:
    if value.get("format") != RECORD_FORMAT:
        raise DecryptionFailed(f"the record is not a {RECORD_FORMAT} record")

    status = value.get("status", "linked")
    if status not in ("linked", "broken"):
        raise DecryptionFailed("the record's status is malformed")

    raw_sealed = value.get("sealed")
    sealed = None if raw_sealed is None else Sealed.from_json(raw_sealed)

    lease = None
    raw_lease = value.get("lease")
    if isinstance(raw_lease, Mapping):
        holder, until = raw_lease.get("holder"), raw_lease.get("until")
        if isinstance(holder, str) and isinstance(until, int) and not isinstance(until, bool):
            lease = Lease(holder, until)

    reason = value.get("broken_reason")

    return VaultRecord(
        binding=binding,
        version=version,
        status=status,
        sealed=sealed,
        lease=lease,
        broken_reason=reason if isinstance(reason, str) else None,
    )
