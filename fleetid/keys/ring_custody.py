"""Custody of keys fleetid generates itself and holds in memory while it signs.

`LocalKeyFile` and `KmsWrappedKeys` differ in one step only: how a private key is written
into the ring document (a PEM; a KMS ciphertext) and read back. `RingCustody` owns the rest:
generating the first ring, loading the stored one once, signing with no I/O at all, rotating,
and adopting the ring another process stored first.

Only the active and next keys keep their private halves. A previous key never signs again, so
rotation drops its private key from memory and from the stored document and keeps only the
public key that verifiers still need.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedByCryptography
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetid.keys.algorithms import (
    Algorithm,
    PrivateKey,
    generate_private_key,
    parse_algorithm,
    sign_with_private_key,
)
from fleetid.keys.custody import Clock, KeyCustody, Signature
from fleetid.keys.errors import KeyRingConflict, KeyRingInvalid
from fleetid.keys.jwk import public_jwk
from fleetid.keys.offload import SigningThreads, native_signing_available
from fleetid.keys.persistence import RingPersistence, StoredRing
from fleetid.keys.ring import JsonWebKeySet, KeyRecord, KeyRing, KeyState

__all__ = ["RingCustody", "decode_pkcs8", "encode_pkcs8"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _HeldRing:
    """One consistent state of a custody, replaced whole so `sign` needs no lock."""

    ring: KeyRing
    private_keys: Mapping[str, PrivateKey]
    private_key_slots: Mapping[str, Mapping[str, Any]]
    version: str


class RingCustody(KeyCustody):
    """A ring of keys generated here, kept in a `RingPersistence`, held in memory to sign.

    The ring is loaded (or, on an empty store, generated) on first use, not on construction,
    so building a custody costs nothing until a token or the JWKS is asked for.
    """

    def __init__(
        self, persistence: RingPersistence, *, algorithm: Algorithm, clock: Clock
    ) -> None:
        self._persistence = persistence
        self._algorithm = parse_algorithm(algorithm)
        self._clock = clock
        self._lock = threading.Lock()
        self._held: _HeldRing | None = None
        self._threads: SigningThreads | None = None

    @abstractmethod
    def _store_private_key(self, record: KeyRecord, key: PrivateKey) -> dict[str, Any]:
        """The `private_key` slot that keeps `key` in the ring document."""

    @abstractmethod
    def _load_private_key(self, record: KeyRecord, slot: Mapping[str, Any]) -> PrivateKey:
        """The private key kept in `slot`; the caller checks it matches `record`."""

    def active_key(self) -> tuple[str, Algorithm]:
        """The kid and alg of the key that signs now."""
        active = self._current().ring.active

        return active.kid, active.alg

    def sign(self, signing_input: bytes) -> Signature:
        """Sign with the active key, in memory."""
        held = self._current()
        active = held.ring.active
        value = sign_with_private_key(held.private_keys[active.kid], active.alg, signing_input)

        return Signature(kid=active.kid, alg=active.alg, value=value)

    async def sign_async(self, signing_input: bytes) -> Signature:
        """Sign with the active key, on the signing threads when `sign_on_threads` gave
        it some."""
        held = self._current()
        active = held.ring.active
        key = held.private_keys[active.kid]
        threads = self._threads
        if threads is None or not threads.usable():
            return self.sign(signing_input)

        value = await threads.sign(active.kid, key, signing_input)

        return Signature(kid=active.kid, alg=active.alg, value=value)

    def sign_on_threads(self, threads: int) -> None:
        """Make `sign_async`'s signatures on this many native threads, where the compiled
        signing threads exist."""
        if native_signing_available():
            self._threads = SigningThreads(threads)

    def jwks(self) -> JsonWebKeySet:
        """The next, active and unretired previous public keys."""
        return self._current().ring.jwks(now=self._now())

    def rotate(self, *, max_token_lifetime: int, force: bool = False) -> None:
        """Rotate and store the new ring; new keys use this custody's algorithm.

        Raises `KeyRingConflict` if another process changed the stored ring since this one
        loaded it; this custody then holds the stored ring, not rotated again.
        """
        with self._lock:
            held = self._held or self._load(reuse=None)
            now = self._now()
            fresh_key, fresh = self._generate("next", now)
            ring = held.ring.rotated(
                fresh, now=now, max_token_lifetime=max_token_lifetime, force=force
            )

            signing_kids = {record.kid for record in ring.keys if record.state != "previous"}
            private_keys = {
                kid: key for kid, key in held.private_keys.items() if kid in signing_kids
            }
            private_keys[fresh.kid] = fresh_key
            slots = {
                kid: slot for kid, slot in held.private_key_slots.items() if kid in signing_kids
            }
            slots[fresh.kid] = self._store_private_key(fresh, fresh_key)

            try:
                version = self._persistence.save(
                    ring.to_document(slots), expected_version=held.version
                )
            except KeyRingConflict:
                # Someone else rotated first. Rotating their ring again would activate a next
                # key published only moments ago, before verifiers could have fetched it.
                self._held = self._load(reuse=held)
                raise

            self._held = _HeldRing(ring, private_keys, slots, version)

        logger.info(
            "key ring rotated: active %s, next %s, previous %s published until %d",
            ring.active.kid,
            fresh.kid,
            held.ring.active.kid,
            now + max_token_lifetime,
        )

    def reload(self) -> None:
        """Adopt the ring as stored now, such as after another process rotated it.

        Private keys already held are reused; only keys new to this process are loaded.
        """
        with self._lock:
            self._held = self._load(reuse=self._held)

    def _current(self) -> _HeldRing:
        held = self._held
        if held is not None:
            return held

        with self._lock:
            if self._held is None:
                self._held = self._load(reuse=None)

            return self._held

    def _load(self, *, reuse: _HeldRing | None) -> _HeldRing:
        stored = self._persistence.load()
        if stored is None:
            return self._create()

        return self._adopt(stored, reuse)

    def _create(self) -> _HeldRing:
        now = self._now()
        active_key, active = self._generate("active", now)
        next_key, upcoming = self._generate("next", now)
        ring = KeyRing((active, upcoming))
        slots = {
            active.kid: self._store_private_key(active, active_key),
            upcoming.kid: self._store_private_key(upcoming, next_key),
        }

        # Two processes starting on an empty store both get here; the compare-and-set lets
        # one ring in, and the other process drops the keys it made and uses that ring.
        try:
            version = self._persistence.save(ring.to_document(slots), expected_version=None)
        except KeyRingConflict:
            stored = self._persistence.load()
            if stored is None:
                raise

            return self._adopt(stored, reuse=None)

        logger.info(
            "key ring created: active %s, next %s, %s", active.kid, upcoming.kid, active.alg
        )

        return _HeldRing(ring, {active.kid: active_key, upcoming.kid: next_key}, slots, version)

    def _adopt(self, stored: StoredRing, reuse: _HeldRing | None) -> _HeldRing:
        ring, slots = KeyRing.from_document(stored.document)

        private_keys: dict[str, PrivateKey] = {}
        kept_slots: dict[str, Mapping[str, Any]] = {}
        for record in ring.keys:
            if record.state == "previous":
                continue

            slot = slots.get(record.kid)
            if slot is None:
                raise KeyRingInvalid(
                    f"key {record.kid!r} is {record.state} but has no private key"
                )

            if reuse is not None and record.kid in reuse.private_keys:
                key = reuse.private_keys[record.kid]
            else:
                key = self._load_private_key(record, slot)

                # A kid is a thumbprint of the public key, so a private key stored under the
                # wrong kid would sign tokens no published key verifies.
                if public_jwk(key) != record.jwk:
                    raise KeyRingInvalid(
                        f"the private key stored for {record.kid!r} does not match its public key"
                    )

            private_keys[record.kid] = key
            kept_slots[record.kid] = slot

        return _HeldRing(ring, private_keys, kept_slots, stored.version)

    def _generate(self, state: KeyState, now: int) -> tuple[PrivateKey, KeyRecord]:
        key = generate_private_key(self._algorithm)

        return key, KeyRecord.for_key(key, state=state, created_at=now)

    def _now(self) -> int:
        return int(self._clock())


def encode_pkcs8(key: PrivateKey, encoding: serialization.Encoding) -> bytes:
    """`key` as an unencrypted PKCS#8 private key, PEM or DER."""
    return key.private_bytes(
        encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def decode_pkcs8(kid: str, octets: bytes, encoding: serialization.Encoding) -> PrivateKey:
    """Read a PKCS#8 private key written by `encode_pkcs8`, or raise `KeyRingInvalid`."""
    try:
        if encoding == serialization.Encoding.PEM:
            key = serialization.load_pem_private_key(octets, password=None)
        else:
            key = serialization.load_der_private_key(octets, password=None)
    except (TypeError, ValueError, UnsupportedByCryptography):
        # The parser's own error is left out: it was handed private key bytes, and what it
        # says about them is not this module's to control.
        raise KeyRingInvalid(f"the private key stored for {kid!r} is not PKCS#8") from None

    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyRingInvalid(f"the private key stored for {kid!r} is neither RSA nor EC")

    return key
