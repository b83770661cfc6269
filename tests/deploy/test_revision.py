"""The revision object and the pointer: same bytes for the same fleet, and no object served
unless it compiles to the revision it is named by."""

from __future__ import annotations

import json

import pytest

from fleetid.deploy.revision import (
    POINTER_KEY,
    Pointer,
    RevisionDeliveryError,
    RevisionIntegrityError,
    pack_document,
    pointer_document,
    read_pointer,
    read_revision_document,
    revision_document,
    revision_key,
    unpack_document,
)
from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetSources, read_sources


@pytest.fixture(scope="module")
def sources(repo_root) -> FleetSources:  # type: ignore[no-untyped-def]
    return read_sources(repo_root / "fleet.yaml")


def test_the_object_rebuilds_the_same_revision(sources: FleetSources) -> None:
    revision = compile_sources(sources)
    document = revision_document(sources, revision.hash)

    rebuilt = read_revision_document(document, revision.hash)

    assert rebuilt.hash == revision.hash
    assert revision_key(revision.hash) == f"revisions/{revision.hash}.json"


def test_the_object_is_the_same_bytes_every_time(sources: FleetSources) -> None:
    revision = compile_sources(sources)
    reordered = FleetSources(
        "/somewhere/else/fleet.yaml",
        sources.fleet,
        dict(reversed(list(sources.policies.items()))),
    )

    assert revision_document(sources, revision.hash) == revision_document(reordered, revision.hash)


def test_file_names_are_kept_relative(sources: FleetSources) -> None:
    revision = compile_sources(sources)
    document = json.loads(revision_document(sources, revision.hash))

    assert document["fleet"]["name"] == "fleet.yaml"
    assert sorted(document["policies"]) == ["policies/crm.yaml", "policies/tenants.yaml"]


def test_an_object_under_another_revisions_name_is_refused(
    sources: FleetSources, example_revision: Revision
) -> None:
    edited = FleetSources(
        sources.fleet_name,
        sources.fleet.replace(b"Drafts follow-ups", b"Writes follow-ups"),
        sources.policies,
    )
    other = compile_sources(edited)
    assert other.hash != example_revision.hash

    with pytest.raises(RevisionIntegrityError, match="not to the revision it is named by"):
        read_revision_document(revision_document(edited, other.hash), example_revision.hash)


def test_an_object_that_does_not_compile_is_refused(example_revision: Revision) -> None:
    broken = FleetSources("fleet.yaml", b"version: 2\n", {})

    with pytest.raises(RevisionIntegrityError, match="does not compile"):
        read_revision_document(
            revision_document(broken, example_revision.hash), example_revision.hash
        )


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"format": "other"}', b'{"format": "fleetid.revision/1"}'],
)
def test_malformed_objects_are_refused(body: bytes, example_revision: Revision) -> None:
    with pytest.raises(RevisionDeliveryError):
        read_revision_document(body, example_revision.hash)


def test_the_pointer_round_trips(example_revision: Revision) -> None:
    body = pointer_document(example_revision.hash, "https://id.example.test/")

    assert read_pointer(body) == Pointer(example_revision.hash, "https://id.example.test")
    assert POINTER_KEY == "revisions/live"


@pytest.mark.parametrize(
    "body",
    [
        b'{"format": "fleetid.pointer/1", "revision": "../../etc/passwd"}',
        b'{"format": "fleetid.pointer/1"}',
        b'{"format": "fleetid.pointer/2", "revision": "' + b"a" * 64 + b'"}',
        b'{"format": "fleetid.pointer/1", "revision": "' + b"a" * 64 + b'", "issuer": 3}',
    ],
)
def test_a_pointer_names_a_revision_hash_and_nothing_else(body: bytes) -> None:
    with pytest.raises(RevisionDeliveryError):
        read_pointer(body)


def test_keys_are_only_ever_made_of_hashes() -> None:
    with pytest.raises(ValueError, match="64 lower-case"):
        revision_key("../live")


def test_packing_for_a_stack_output_is_stable(sources: FleetSources) -> None:
    revision = compile_sources(sources)
    document = revision_document(sources, revision.hash)

    packed = pack_document(document)

    assert packed == pack_document(document)
    assert unpack_document(packed) == document
    assert len(packed) < len(document)
    assert read_revision_document(unpack_document(packed)).hash == revision.hash
