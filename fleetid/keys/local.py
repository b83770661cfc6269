"""`LocalKeyFile`: signing keys in one owner-only JSON file, for `fleetid serve` on one machine.

The embedded server needs keys that survive a restart, with nothing to set up: the first
start generates a ring and writes it, later starts read it back. The private keys are PEM
(PKCS#8, unencrypted) inside the file, so the file's 0600 mode is what protects them; the
file is created with that mode, and a file found open to other users is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import Encoding

from fleetid.keys.algorithms import Algorithm, PrivateKey
from fleetid.keys.custody import Clock
from fleetid.keys.errors import KeyRingInvalid
from fleetid.keys.persistence import JsonFilePersistence, StoredRing
from fleetid.keys.ring import KeyRecord
from fleetid.keys.ring_custody import RingCustody, _HeldRing, decode_pkcs8, encode_pkcs8

__all__ = ["LocalKeyFile"]

PEM_FORMAT: Final = "pkcs8-pem"


class LocalKeyFile(RingCustody):
    """A key ring in the JSON file at `path`, generated there on first use."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        algorithm: Algorithm = "RS256",
        clock: Clock = time.time,
    ) -> None:
        self.path = Path(path)
        super().__init__(JsonFilePersistence(self.path), algorithm=algorithm, clock=clock)

    def _store_private_key(self, record: KeyRecord, key: PrivateKey) -> dict[str, Any]:
        return {"format": PEM_FORMAT, "pem": encode_pkcs8(key, Encoding.PEM).decode("ascii")}

    def _load_private_key(self, record: KeyRecord, slot: Mapping[str, Any]) -> PrivateKey:
        pem = slot.get("pem")
        if slot.get("format") != PEM_FORMAT or not isinstance(pem, str):
            raise KeyRingInvalid(
                f"key {record.kid!r} in {self.path} is not stored as {PEM_FORMAT!r}; "
                "the file was written by another kind of key custody"
            )

        return decode_pkcs8(record.kid, pem.encode("utf-8"), Encoding.PEM)

    def _adopt(self, stored: StoredRing, reuse: _HeldRing | None) -> _HeldRing:
        # The ring's own checks know the document, not where it came from; whoever reads the
        # error needs the file.
        try:
            return super()._adopt(stored, reuse)
        except KeyRingInvalid as exc:
            if str(self.path) in str(exc):
                raise
            raise KeyRingInvalid(f"key ring file {self.path}: {exc}") from exc
