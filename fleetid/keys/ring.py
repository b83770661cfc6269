"""The key ring: which keys exist, which one signs, and which ones a JWKS publishes.

A ring holds at most three kinds of key. The `active` key signs every token. The `next` key is
published in the JWKS before it ever signs, so resource servers that cache the JWKS already
know it on the day it becomes active. A `previous` key no longer signs but stays published
until `retire_at`, by which time every token it signed has expired. Rotation moves each key
one step along that line and adds a fresh `next`.

A next key is useful only once verifiers have it. One that cached the JWKS just before the
key was published keeps that copy for up to `JWKS_MAX_AGE` seconds, so a rotation is refused
(`RotationTooSoon`) until the next key has been published that long, unless it is forced.

The ring is public information only. Private keys, and how each custody keeps them, live in
the custodies; the ring document written here has a `private_key` slot per key that each
custody fills in its own way and that this module never looks inside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from fleetid.keys.algorithms import Algorithm, PrivateKey, PublicKey, algorithm_for_key
from fleetid.keys.errors import KeyCustodyError, KeyRingInvalid
from fleetid.keys.jwk import jwk_thumbprint, public_jwk, public_key_from_jwk

__all__ = [
    "JWKS_MAX_AGE",
    "RING_FORMAT",
    "JsonWebKeySet",
    "KeyRecord",
    "KeyRing",
    "KeyState",
    "RotationTooSoon",
    "check_rotation_states",
]

KeyState: TypeAlias = Literal["next", "active", "previous"]
JsonWebKeySet: TypeAlias = dict[str, list[dict[str, str]]]

RING_FORMAT: Final = "fleetid.key-ring.v1"

STATES: Final[tuple[KeyState, ...]] = ("active", "next", "previous")

JWKS_MAX_AGE: Final = 300
"""Seconds a verifier may cache the JWKS (its `Cache-Control: max-age`), and so how long a
next key must have been published before a rotation makes it active."""


class RotationTooSoon(KeyCustodyError):
    """The next key was published too recently to sign: verifiers may not have it yet."""

    def __init__(self, kid: str, *, age: int, rotatable_at: int) -> None:
        when = datetime.fromtimestamp(rotatable_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(
            f"the next key {kid!r} was published {age} seconds ago; verifiers cache the JWKS "
            f"for up to {JWKS_MAX_AGE} seconds, so it can become active from {when} (in "
            f"{JWKS_MAX_AGE - age} seconds). Forcing the rotation now makes verifiers with a "
            "cached JWKS refuse new tokens until they fetch it again"
        )
        self.kid = kid
        self.age = age
        self.rotatable_at = rotatable_at


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One public key of a ring and its place in the rotation; times are unix seconds.

    `created_at` is None for keys fleetid did not create (KMS keys made by provisioning).
    `retire_at` is set on `previous` keys only: the JWKS stops publishing them from then on.
    """

    kid: str
    alg: Algorithm
    state: KeyState
    jwk: Mapping[str, str]
    created_at: int | None
    rotated_at: int | None = None
    retire_at: int | None = None

    @classmethod
    def for_key(
        cls,
        key: PrivateKey | PublicKey,
        *,
        state: KeyState,
        created_at: int | None,
        retire_at: int | None = None,
    ) -> KeyRecord:
        """The record of `key`, named by its RFC 7638 thumbprint."""
        jwk = public_jwk(key)

        return cls(
            kid=jwk_thumbprint(jwk),
            alg=algorithm_for_key(key),
            state=state,
            jwk=jwk,
            created_at=created_at,
            retire_at=retire_at,
        )

    def is_published(self, now: int) -> bool:
        """Whether a JWKS at `now` lists this key."""
        return self.retire_at is None or now < self.retire_at

    def published_jwk(self) -> dict[str, str]:
        """This key as a JWKS member: the key parameters plus kid, alg and use."""
        # RFC 7517 §4.2 gives "use" the value "sig" for signature keys; "alg" (§4.4) pins the
        # algorithm the key is for, so a verifier can refuse a token naming another.
        return {"kid": self.kid, "kty": self.jwk["kty"], "alg": self.alg, "use": "sig", **self.jwk}


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys of one custody: exactly one active, at most one next, any number previous."""

    keys: tuple[KeyRecord, ...]

    def __post_init__(self) -> None:
        check_rotation_states(
            [(record.kid, record.state, record.retire_at) for record in self.keys]
        )

    @property
    def active(self) -> KeyRecord:
        """The key that signs."""
        return next(record for record in self.keys if record.state == "active")

    @property
    def next(self) -> KeyRecord | None:
        """The key that signs after the next rotation, already published."""
        return next((record for record in self.keys if record.state == "next"), None)

    def published(self, now: int) -> tuple[KeyRecord, ...]:
        """The keys a JWKS lists at `now`: active first, then next, then unretired previous."""
        records = [record for record in self.keys if record.is_published(now)]

        return tuple(sorted(records, key=lambda record: STATES.index(record.state)))

    def jwks(self, now: int) -> JsonWebKeySet:
        """The RFC 7517 §5 JWK Set a resource server verifies this ring's tokens with."""
        return {"keys": [record.published_jwk() for record in self.published(now)]}

    def rotated(
        self,
        fresh_next: KeyRecord,
        *,
        now: int,
        max_token_lifetime: int,
        force: bool = False,
    ) -> KeyRing:
        """The ring after one rotation at `now`; retired previous keys are left out.

        Raises `RotationTooSoon` when the next key was published less than `JWKS_MAX_AGE`
        seconds ago, unless `force` is true.
        """
        if max_token_lifetime < 0:
            raise ValueError("max_token_lifetime is a number of seconds, zero or more")

        upcoming = self.next
        if upcoming is None:
            raise KeyRingInvalid("the key ring has no next key to make active")

        if fresh_next.state != "next":
            raise KeyRingInvalid("a rotation adds a key in the next state")

        # A key fleetid did not create has no creation time; provisioning answers for it.
        if not force and upcoming.created_at is not None:
            age = now - upcoming.created_at
            if age < JWKS_MAX_AGE:
                raise RotationTooSoon(
                    upcoming.kid, age=age, rotatable_at=upcoming.created_at + JWKS_MAX_AGE
                )

        activated = dataclasses.replace(upcoming, state="active", rotated_at=now)

        # Every token the active key signed expires within max_token_lifetime of now, so
        # publishing its public key that long is enough for all of them to verify.
        retiring = dataclasses.replace(
            self.active, state="previous", rotated_at=now, retire_at=now + max_token_lifetime
        )
        still_published = [
            record
            for record in self.keys
            if record.state == "previous" and record.is_published(now)
        ]

        return KeyRing((activated, fresh_next, retiring, *still_published))

    def to_document(self, private_keys: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The ring as a JSON document; `private_keys` fills each key's `private_key` slot."""
        entries = []
        for record in self.keys:
            entry: dict[str, Any] = {
                "kid": record.kid,
                "alg": record.alg,
                "state": record.state,
                "jwk": dict(record.jwk),
                "created_at": record.created_at,
                "rotated_at": record.rotated_at,
                "retire_at": record.retire_at,
            }
            if record.kid in private_keys:
                entry["private_key"] = dict(private_keys[record.kid])

            entries.append(entry)

        return {"format": RING_FORMAT, "keys": entries}

    @classmethod
    def from_document(
        cls, document: Mapping[str, Any]
    ) -> tuple[KeyRing, dict[str, Mapping[str, Any]]]:
        """Read a ring document; returns the ring and each key's `private_key` slot by kid.

        Every stored `kid` is checked against the thumbprint of the stored public key, and
        every `alg` against the key type, so a hand-edited ring fails here and not in a
        verifier.
        """
        if not isinstance(document, Mapping) or document.get("format") != RING_FORMAT:
            raise KeyRingInvalid(f"a key ring document must have format {RING_FORMAT!r}")

        entries = document.get("keys")
        if not isinstance(entries, list):
            raise KeyRingInvalid("a key ring document lists its keys under 'keys'")

        records = []
        private_keys: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            record = _record_from_entry(entry)
            records.append(record)

            slot = entry.get("private_key")
            if slot is not None:
                if not isinstance(slot, Mapping):
                    raise KeyRingInvalid(f"key {record.kid!r}: private_key must be an object")

                private_keys[record.kid] = slot

        return cls(tuple(records)), private_keys


def check_rotation_states(keys: Sequence[tuple[str, KeyState, int | None]]) -> None:
    """Check (name, state, retire_at) triples against the ring's rules, or raise KeyRingInvalid.

    The rules: names are unique, one key is active, at most one is next, and a key has a
    retire_at exactly when it is previous.
    """
    names = [name for name, _, _ in keys]
    if len(set(names)) != len(names):
        raise KeyRingInvalid("a key ring lists the same key twice")

    states = [state for _, state, _ in keys]
    if states.count("active") != 1:
        raise KeyRingInvalid(f"a key ring needs one active key, not {states.count('active')}")

    if states.count("next") > 1:
        raise KeyRingInvalid("a key ring has at most one next key")

    for name, state, retire_at in keys:
        if (state == "previous") != (retire_at is not None):
            raise KeyRingInvalid(
                f"key {name!r}: a key has a retire_at exactly when it is previous"
            )


def _record_from_entry(entry: object) -> KeyRecord:
    if not isinstance(entry, Mapping):
        raise KeyRingInvalid("each key of a key ring document is an object")

    kid = entry.get("kid")
    if not isinstance(kid, str):
        raise KeyRingInvalid("each key of a key ring document has a string kid")

    jwk = entry.get("jwk")
    if not isinstance(jwk, Mapping):
        raise KeyRingInvalid(f"key {kid!r}: jwk must be an object")

    key, algorithm = public_key_from_jwk(jwk)
    canonical_jwk = public_jwk(key)
    if jwk_thumbprint(canonical_jwk) != kid:
        raise KeyRingInvalid(f"key {kid!r}: kid is not the RFC 7638 thumbprint of its jwk")

    if entry.get("alg") != algorithm:
        raise KeyRingInvalid(f"key {kid!r}: alg does not match its key type ({algorithm})")

    return KeyRecord(
        kid=kid,
        alg=algorithm,
        state=_state(kid, entry.get("state")),
        jwk=canonical_jwk,
        created_at=_timestamp(kid, entry, "created_at"),
        rotated_at=_timestamp(kid, entry, "rotated_at"),
        retire_at=_timestamp(kid, entry, "retire_at"),
    )


def _state(kid: str, value: object) -> KeyState:
    for state in STATES:
        if value == state:
            return state

    raise KeyRingInvalid(f"key {kid!r}: state must be one of {', '.join(STATES)}")


def _timestamp(kid: str, entry: Mapping[str, Any], name: str) -> int | None:
    value = entry.get(name)

    # bool is an int in Python, and true is no timestamp.
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value

    raise KeyRingInvalid(f"key {kid!r}: {name} must be unix seconds or null")
