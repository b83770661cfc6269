"""Where a key ring document is kept: a two-method contract and two implementations.

Custodies that generate their own keys keep the ring as one JSON document. Several processes
can share it (uvicorn workers on one machine, Lambda instances on AWS), and two of them may
start at the same moment on an empty store; each would generate a ring. Saving is therefore a
compare-and-set on an opaque version, so exactly one ring is ever stored and the other process
loads it instead of its own.

A store implements `load` and `save`; a DynamoDB item or an S3 object with a conditional write
fits the same contract as the JSON file and the in-memory store here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetid.keys.errors import KeyExposureRisk, KeyRingConflict, KeyRingInvalid

__all__ = ["InMemoryPersistence", "JsonFilePersistence", "RingPersistence", "StoredRing"]

OWNER_ONLY = 0o600


@dataclass(frozen=True, slots=True)
class StoredRing:
    """A ring document as stored, with the version a `save` must name to replace it."""

    document: Mapping[str, Any]
    version: str


class RingPersistence(ABC):
    """Storage for one key ring document, replaced only by compare-and-set."""

    @abstractmethod
    def load(self) -> StoredRing | None:
        """The stored document and its version, or None when nothing is stored yet."""

    @abstractmethod
    def save(self, document: Mapping[str, Any], *, expected_version: str | None) -> str:
        """Store `document` if the stored version is still `expected_version`.

        `expected_version=None` means "only if nothing is stored yet". Returns the new
        version; raises `KeyRingConflict` when another writer got there first.
        """


class JsonFilePersistence(RingPersistence):
    """A ring document in one JSON file, owner-only (0600) and replaced atomically.

    The version is the SHA-256 of the file's bytes. Compare-and-set holds an exclusive
    `flock` on a sibling `.lock` file, which every process on the machine honours, so this
    is safe between workers but not on a network file system without working locks.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(f"{self.path.name}.lock")

    def load(self) -> StoredRing | None:
        """Read the file; None when it does not exist."""
        raw = self._read()
        if raw is None:
            return None

        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise KeyRingInvalid(f"key ring file {self.path} is not JSON") from exc

        if not isinstance(document, dict):
            raise KeyRingInvalid(f"key ring file {self.path} does not hold a JSON object")

        return StoredRing(document=document, version=_version(raw))

    def save(self, document: Mapping[str, Any], *, expected_version: str | None) -> str:
        """Replace the file if its bytes still hash to `expected_version`."""
        raw = (json.dumps(dict(document), indent=2, sort_keys=True) + "\n").encode("utf-8")

        with self._exclusive():
            current = self._read()
            current_version = None if current is None else _version(current)
            if current_version != expected_version:
                raise KeyRingConflict()

            self._replace(raw)

        return _version(raw)

    def _read(self) -> bytes | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None

        with os.fdopen(fd, "rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)

            # The same refusal ssh makes for a private key file others can read: the file may
            # hold private keys, and its mode is the only thing guarding them.
            if mode & 0o077:
                raise KeyExposureRisk(
                    f"key ring file {self.path} is open to other users (mode {mode:04o}); "
                    "make it 0600"
                )

            return file.read()

    def _replace(self, raw: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")

        # Created 0600 in the same call that creates it, so no other user can ever open it,
        # and renamed over the old file, so a reader sees the old ring or the new, never half.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(raw)
                file.flush()
                os.fsync(file.fileno())

            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

        _fsync_directory(self.path.parent)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, OWNER_ONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the lock.
            os.close(fd)


class InMemoryPersistence(RingPersistence):
    """A ring document kept in this process, for tests; stored as JSON text like the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored: tuple[str, str] | None = None

    def load(self) -> StoredRing | None:
        """A fresh copy of the stored document, or None."""
        with self._lock:
            stored = self._stored

        if stored is None:
            return None

        text, version = stored
        return StoredRing(document=json.loads(text), version=version)

    def save(self, document: Mapping[str, Any], *, expected_version: str | None) -> str:
        """Store `document` if nothing newer than `expected_version` was stored."""
        text = json.dumps(dict(document))

        with self._lock:
            current_version = None if self._stored is None else self._stored[1]
            if current_version != expected_version:
                raise KeyRingConflict()

            version = str(int(current_version or "0") + 1)
            self._stored = (text, version)

        return version


def _version(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
