"""Contract tests for key ring persistence: compare-and-set, run against every store.

A store that lets a stale writer through would let two processes keep two rings, and tokens
from one would not verify against the other's JWKS; these tests pin the behaviour any new
store (DynamoDB, S3) must share.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fleetid.keys import (
    InMemoryPersistence,
    JsonFilePersistence,
    KeyExposureRisk,
    KeyRingConflict,
    KeyRingInvalid,
    RingPersistence,
)

RING = {"format": "fleetid.key-ring.v1", "keys": []}
ROTATED = {"format": "fleetid.key-ring.v1", "keys": [{"kid": "k"}]}


@pytest.fixture(params=["file", "memory"])
def persistence(request: pytest.FixtureRequest, tmp_path: Path) -> RingPersistence:
    if request.param == "file":
        return JsonFilePersistence(tmp_path / "ring.json")

    return InMemoryPersistence()


def test_an_empty_store_loads_nothing(persistence: RingPersistence) -> None:
    assert persistence.load() is None


def test_a_saved_document_loads_with_its_version(persistence: RingPersistence) -> None:
    version = persistence.save(RING, expected_version=None)
    stored = persistence.load()

    assert stored is not None
    assert stored.document == RING
    assert stored.version == version


def test_only_the_first_creation_wins(persistence: RingPersistence) -> None:
    persistence.save(RING, expected_version=None)

    with pytest.raises(KeyRingConflict):
        persistence.save(ROTATED, expected_version=None)

    stored = persistence.load()
    assert stored is not None
    assert stored.document == RING


def test_a_stale_version_is_refused(persistence: RingPersistence) -> None:
    first = persistence.save(RING, expected_version=None)
    second = persistence.save(ROTATED, expected_version=first)

    with pytest.raises(KeyRingConflict):
        persistence.save(RING, expected_version=first)

    assert second != first
    stored = persistence.load()
    assert stored is not None
    assert (stored.document, stored.version) == (ROTATED, second)


def test_loaded_documents_are_copies(persistence: RingPersistence) -> None:
    persistence.save(RING, expected_version=None)
    stored = persistence.load()
    assert stored is not None

    stored.document["keys"].append("changed")

    again = persistence.load()
    assert again is not None
    assert again.document == RING


def test_file_is_owner_only_and_replaced_whole(tmp_path: Path) -> None:
    persistence = JsonFilePersistence(tmp_path / "fleet" / "ring.json")
    first = persistence.save(RING, expected_version=None)
    persistence.save(ROTATED, expected_version=first)

    assert stat.S_IMODE(persistence.path.stat().st_mode) == 0o600
    assert json.loads(persistence.path.read_text()) == ROTATED
    assert sorted(path.name for path in persistence.path.parent.iterdir()) == [
        "ring.json",
        "ring.json.lock",
    ]


def test_file_versions_are_shared_between_instances(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    version = JsonFilePersistence(path).save(RING, expected_version=None)

    JsonFilePersistence(path).save(ROTATED, expected_version=version)

    with pytest.raises(KeyRingConflict):
        JsonFilePersistence(path).save(RING, expected_version=version)


def test_file_open_to_others_is_refused(tmp_path: Path) -> None:
    persistence = JsonFilePersistence(tmp_path / "ring.json")
    persistence.save(RING, expected_version=None)
    persistence.path.chmod(0o640)

    with pytest.raises(KeyExposureRisk):
        persistence.load()


def test_file_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text("{not json")
    path.chmod(0o600)

    with pytest.raises(KeyRingInvalid):
        JsonFilePersistence(path).load()
