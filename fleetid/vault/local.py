"""`LocalEnvelope`: the vault's master keys in one owner-only file, for `fleetid serve`.

The file (`<state>/vault.key` by default) holds one or more 256-bit AES keys, each with an
id. It is created with mode 0600 on first use, and a file found open to other users is
refused. The newest key wraps new data keys; every key in the file unwraps. Data keys are
wrapped with AES-256-GCM whose associated data is the master key's id and the record's
encryption context, so a wrapped key opens only for the record it was made for, as a KMS
ciphertext does under its encryption context.

Rotation without downtime: `rotate_master_key` adds a key to the file and `Vault.rewrap_all`
(or `Envelope.rewrap` per record) moves every record to it; `retire_master_key` then removes
the old key. Other processes that share the file notice the change on their next seal (the
file's identity is checked on each one) or when they meet a record under a key id they have
not loaded, so a record re-wrapped by one worker is readable by all.

NOTE: the master keys are plaintext in the file; its mode is what protects them, as for the
signing key ring beside it. The file is replaced atomically under an exclusive lock, so
concurrent rotations on one machine do not lose a key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetid.keys.errors import KeyExposureRisk, KeyRingConflict, KeyRingInvalid
from fleetid.keys.persistence import JsonFilePersistence
from fleetid.vault.envelope import DATA_KEY_BYTES, NONCE_BYTES, Envelope, validate_context
from fleetid.vault.errors import DecryptionFailed, EnvelopeError, SecretExposureRisk

__all__ = ["LocalEnvelope"]

FILE_FORMAT: Final = "fleetid-vault-master-keys/1"
_WRAP_PREFIX: Final = b"fleetid-vault-data-key/1\n"
_SAVE_ATTEMPTS: Final = 10


@dataclass(frozen=True, slots=True)
class _MasterKey:
    key_id: str
    created_at: int
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Held:
    keys: tuple[_MasterKey, ...]  # oldest first; the last one encrypts
    stamp: tuple[int, int, int]

    def find(self, key_id: str) -> _MasterKey | None:
        return next((key for key in self.keys if key.key_id == key_id), None)


class LocalEnvelope(Envelope):
    """Master keys in the 0600 file at `path`, created there on first use."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = JsonFilePersistence(self.path)
        self._lock = threading.Lock()
        self._held: _Held | None = None

    def current_key_id(self) -> str:
        return self._current().keys[-1].key_id

    def key_ids(self) -> tuple[str, ...]:
        return tuple(key.key_id for key in reversed(self._current().keys))

    def rotate_master_key(self) -> str:
        """Add a new master key, which wraps every data key from now on; return its id."""
        for _ in range(_SAVE_ATTEMPTS):
            stored = self._read()
            keys = () if stored is None else _parse(self.path, stored[0])
            version = None if stored is None else stored[1]
            try:
                self._save((*keys, _new_master_key()), version)
            except KeyRingConflict:
                continue

            return self._reload().keys[-1].key_id

        raise EnvelopeError(f"{self.path} kept changing while a master key was added")

    def retire_master_key(self, key_id: str) -> None:
        """Remove an old master key once no record is wrapped by it any more."""
        for _ in range(_SAVE_ATTEMPTS):
            stored = self._read()
            keys = () if stored is None else _parse(self.path, stored[0])
            if not keys or keys[-1].key_id == key_id:
                raise ValueError("the current master key can't be retired; rotate first")

            remaining = tuple(key for key in keys if key.key_id != key_id)
            if len(remaining) == len(keys):
                return

            try:
                self._save(remaining, stored[1] if stored else None)
            except KeyRingConflict:
                continue

            self._reload()
            return

        raise EnvelopeError(f"{self.path} kept changing while a master key was retired")

    def _new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, bytes, str]:
        master = self._current().keys[-1]
        data_key = AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)

        return data_key, _wrap(master, data_key, context), master.key_id

    def _unwrap(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        master = self._master(key_id)
        nonce, ciphertext = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]

        try:
            return AESGCM(master.key).decrypt(nonce, ciphertext, _wrap_aad(key_id, context))
        except (InvalidTag, ValueError) as exc:
            raise DecryptionFailed(
                "the record's data key does not unwrap under its binding: the record was "
                "moved to another row or changed"
            ) from exc

    def _rewrap(
        self, key_id: str, wrapped: bytes, context: Mapping[str, str]
    ) -> tuple[bytes, str]:
        data_key = self._unwrap(key_id, wrapped, context)
        current = self._current().keys[-1]

        return _wrap(current, data_key, context), current.key_id

    def _master(self, key_id: str) -> _MasterKey:
        master = self._current().find(key_id)
        if master is None:
            # Another process may have rotated since this one loaded the file.
            master = self._reload().find(key_id)
        if master is None:
            raise DecryptionFailed(
                f"the record is wrapped by master key {key_id!r}, which {self.path} does not hold"
            )

        return master

    def _current(self) -> _Held:
        held = self._held
        if held is not None and held.stamp == self._stamp():
            return held

        return self._reload()

    def _reload(self) -> _Held:
        with self._lock:
            for _ in range(_SAVE_ATTEMPTS):
                # Stamped before reading: a change made after this point is seen next time.
                stamp = self._stamp()
                stored = self._read()
                if stored is not None:
                    self._held = _Held(_parse(self.path, stored[0]), stamp)
                    return self._held

                try:
                    self._save((_new_master_key(),), None)
                except KeyRingConflict:
                    # Another process created the file first; read theirs.
                    continue

        raise EnvelopeError(f"{self.path} could not be created or read")

    def _stamp(self) -> tuple[int, int, int]:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)

        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def _read(self) -> tuple[Mapping[str, Any], str] | None:
        try:
            stored = self._file.load()
        except KeyExposureRisk as exc:
            raise SecretExposureRisk(
                f"the vault master key file {self.path} is open to other users; make it 0600"
            ) from exc
        except KeyRingInvalid as exc:
            raise EnvelopeError(f"the vault master key file {self.path} is not JSON") from exc

        return None if stored is None else (stored.document, stored.version)

    def _save(self, keys: tuple[_MasterKey, ...], version: str | None) -> None:
        document = {
            "format": FILE_FORMAT,
            "keys": [
                {
                    "kid": key.key_id,
                    "created_at": key.created_at,
                    "key": base64.b64encode(key.key).decode("ascii"),
                }
                for key in keys
            ],
        }
        self._file.save(document, expected_version=version)


def _new_master_key() -> _MasterKey:
    return _MasterKey(
        key_id=f"local-{secrets.token_hex(8)}",
        created_at=int(time.time()),
        key=AESGCM.generate_key(bit_length=256),
    )


def _parse(path: Path, document: Mapping[str, Any]) -> tuple[_MasterKey, ...]:
    entries = document.get("keys")
    if document.get("format") != FILE_FORMAT or not isinstance(entries, list) or not entries:
        raise EnvelopeError(f"{path} is not a vault master key file ({FILE_FORMAT})")

    keys = []
    for entry in entries:
        try:
            key = base64.b64decode(entry["key"], validate=True)
            keys.append(
                _MasterKey(key_id=str(entry["kid"]), created_at=int(entry["created_at"]), key=key)
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise EnvelopeError(f"{path} holds a malformed master key entry") from exc

        if len(key) != 32:
            raise EnvelopeError(f"master key {entry['kid']!r} in {path} is not 256 bits")

    return tuple(keys)


def _wrap_aad(key_id: str, context: Mapping[str, str]) -> bytes:
    return _WRAP_PREFIX + key_id.encode("utf-8") + b"\n" + validate_context(context)


def _wrap(master: _MasterKey, data_key: bytes, context: Mapping[str, str]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)

    return nonce + AESGCM(master.key).encrypt(nonce, data_key, _wrap_aad(master.key_id, context))
