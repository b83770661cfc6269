"""The signing key ring kept as one record of the store: on AWS, one DynamoDB item.

Every Lambda instance shares the ring, and the first instances of a new deployment may all
start on an empty table at once. `RingPersistence` asks for a compare-and-set, which the
store contract already is: `create` lands only where no live record exists, and `replace`
only on the version the caller read. On DynamoDB both are conditional writes on the item's
``version`` attribute, so of two instances racing, exactly one ring is stored and the other
instance adopts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fleetid.keys import KeyRingConflict, KeyRingInvalid, RingPersistence, StoredRing
from fleetid.store import Store

__all__ = ["RING_NAMESPACE", "StoreRingPersistence"]

RING_NAMESPACE: Final = "signing_keys"


class StoreRingPersistence(RingPersistence):
    """A key ring document in the store under (`namespace`, `key`), with no expiry.

    The version handed to `save` is the record's version, as a string.
    """

    def __init__(self, store: Store, key: str, *, namespace: str = RING_NAMESPACE) -> None:
        self._store = store
        self._namespace = namespace
        self._key = key

    def load(self) -> StoredRing | None:
        record = self._store.get(self._namespace, self._key)
        if record is None:
            return None

        return StoredRing(document=record.value, version=str(record.version))

    def save(self, document: Mapping[str, Any], *, expected_version: str | None) -> str:
        if expected_version is None:
            # The first ring: lands only where no ring exists yet.
            if not self._store.create(self._namespace, self._key, document, expires_at=None):
                raise KeyRingConflict()

            return "1"

        try:
            version = int(expected_version)
        except ValueError as exc:
            raise KeyRingInvalid(f"{expected_version!r} is not a version of this store") from exc

        # A rotation: lands only on the ring this process loaded.
        replaced = self._store.replace(
            self._namespace, self._key, document, version=version, expires_at=None
        )
        if not replaced:
            raise KeyRingConflict()

        return str(version + 1)
