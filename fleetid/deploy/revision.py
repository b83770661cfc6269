"""A directory revision as the deployed server receives it: one object named by its hash, one
pointer saying which is live.

In the revisions bucket:

- ``revisions/<sha256>.json``: the fleet's sources, fleet.yaml and each policy file as
  written, with the hash of the revision they compile to. Written once and never changed;
- ``revisions/live``: ``{"format": ..., "revision": "<sha256>", "issuer": "..."}``. Replacing
  this one small object is what deploys, or rolls back, a revision: the server switches to
  the whole new revision at once.

The object holds sources rather than a compiled form because compiling is deterministic and
is the one place that interprets them: the server compiles the sources exactly as
``fleetid serve`` does, and refuses the object unless the result has the hash the object is
named by. A corrupted, truncated or substituted object is never served.

Every document is serialised canonically (sorted keys, no insignificant whitespace), so the
same revision always gives the same bytes, and an upload of an unchanged fleet changes
nothing.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetInvalid, FleetSources

__all__ = [
    "DOCUMENT_FORMAT",
    "POINTER_FORMAT",
    "POINTER_KEY",
    "REVISION_PREFIX",
    "Pointer",
    "RevisionDeliveryError",
    "RevisionIntegrityError",
    "pack_document",
    "pointer_document",
    "read_pointer",
    "read_revision_document",
    "revision_document",
    "revision_key",
    "unpack_document",
]

REVISION_PREFIX: Final = "revisions/"
POINTER_KEY: Final = "revisions/live"
DOCUMENT_FORMAT: Final = "fleetid.revision/1"
POINTER_FORMAT: Final = "fleetid.pointer/1"

_HASH: Final = re.compile(r"^[0-9a-f]{64}$")


class RevisionDeliveryError(Exception):
    """A revision object or the pointer cannot be read or used."""


class RevisionIntegrityError(RevisionDeliveryError):
    """A revision object does not compile to the revision it is named by."""


@dataclass(frozen=True, slots=True)
class Pointer:
    """Which revision is live, and under which issuer the server runs."""

    revision: str
    issuer: str | None


def revision_key(revision_hash: str) -> str:
    """The object key of a revision; refuses anything but a SHA-256 in hex."""
    _check_hash(revision_hash)

    return f"{REVISION_PREFIX}{revision_hash}.json"


def revision_document(sources: FleetSources, revision_hash: str) -> bytes:
    """The object for a revision compiled from `sources`.

    File names are kept relative (``fleet.yaml``, ``policies/crm.yaml``): they only appear in
    error messages, and an absolute path of the machine that deployed says nothing useful.
    """
    _check_hash(revision_hash)
    document = {
        "format": DOCUMENT_FORMAT,
        "revision": revision_hash,
        "fleet": {"name": PurePath(sources.fleet_name).name, "text": _text(sources.fleet)},
        "policies": {
            f"policies/{PurePath(name).name}": _text(content)
            for name, content in sorted(sources.policies.items())
        },
    }

    return _canonical(document)


def read_revision_document(body: bytes, expected_hash: str | None = None) -> Revision:
    """Compile a revision object and check that it is the revision it claims to be.

    The claim is `expected_hash` (the hash in the object's name) when given, and otherwise
    the hash the object itself records.
    """
    document = _object(body, "the revision object")
    recorded = document.get("revision")
    if document.get("format") != DOCUMENT_FORMAT or not isinstance(recorded, str):
        raise RevisionDeliveryError(f"the revision object is not in format {DOCUMENT_FORMAT}")

    claimed = recorded if expected_hash is None else expected_hash
    _check_hash(claimed)
    fleet, policies = document.get("fleet"), document.get("policies")
    if not (isinstance(fleet, dict) and isinstance(policies, dict)):
        raise RevisionDeliveryError(f"revision object {claimed[:12]} is malformed")

    texts = [fleet.get("name"), fleet.get("text"), *policies.values()]
    if not all(isinstance(text, str) for text in texts):
        raise RevisionDeliveryError(f"revision object {claimed[:12]} is malformed")

    sources = FleetSources(
        str(fleet["name"]),
        str(fleet["text"]).encode("utf-8"),
        {str(name): str(text).encode("utf-8") for name, text in policies.items()},
    )
    try:
        revision = compile_sources(sources)
    except FleetInvalid as exc:
        raise RevisionIntegrityError(
            f"revision object {claimed[:12]} does not compile: {exc}"
        ) from exc

    # The hash covers meaning, so this holds only for the very fleet that was deployed.
    if revision.hash != claimed or recorded != claimed:
        raise RevisionIntegrityError(
            f"revision object {claimed[:12]} compiles to {revision.short}, not to the "
            "revision it is named by"
        )

    return revision


def pointer_document(revision_hash: str, issuer: str | None) -> bytes:
    """The pointer that makes `revision_hash` live."""
    _check_hash(revision_hash)

    return _canonical({"format": POINTER_FORMAT, "revision": revision_hash, "issuer": issuer})


def read_pointer(body: bytes) -> Pointer:
    document = _object(body, "the revision pointer")
    revision, issuer = document.get("revision"), document.get("issuer")
    if document.get("format") != POINTER_FORMAT or not isinstance(revision, str):
        raise RevisionDeliveryError(f"the revision pointer is not in format {POINTER_FORMAT}")
    if not _HASH.match(revision):
        raise RevisionDeliveryError("the revision pointer does not name a revision hash")
    if issuer is not None and not isinstance(issuer, str):
        raise RevisionDeliveryError("the revision pointer's issuer is not a string")

    return Pointer(revision, issuer.rstrip("/") if issuer else None)


def pack_document(document: bytes) -> str:
    """A revision object as compact text (gzip, base64) for a stack output.

    The fixed gzip timestamp keeps the text the same for the same object.
    """
    return base64.b64encode(gzip.compress(document, compresslevel=9, mtime=0)).decode("ascii")


def unpack_document(packed: str) -> bytes:
    try:
        return gzip.decompress(base64.b64decode(packed, validate=True))
    except (ValueError, OSError, EOFError) as exc:
        raise RevisionDeliveryError("the packed revision object is not gzip in base64") from exc


def _check_hash(revision_hash: str) -> None:
    if not _HASH.match(revision_hash):
        raise ValueError("a revision hash is 64 lower-case hexadecimal digits")


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RevisionDeliveryError("fleet and policy files must be UTF-8") from exc


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RevisionDeliveryError(f"{what} is not JSON") from exc

    if not isinstance(document, dict):
        raise RevisionDeliveryError(f"{what} is not a JSON object")

    return document
