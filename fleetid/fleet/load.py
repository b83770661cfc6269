"""Loading a fleet: files in, a validated model or every problem with its position out.

A fleet is `fleet.yaml` plus every `policies/*.yaml` beside it. Sources are plain
`(name, bytes)` pairs so that the same code reads the working tree, a git revision
(`fleetid diff --base origin/main`) or an object fetched by the deployed server.

Loading runs in three passes and reports everything it finds in all of them: YAML
(syntax, duplicate keys, aliases), the schema (through the pydantic models that also
generate the shipped JSON Schema), then the cross-reference checks. A later pass runs
only on files whose earlier passes were clean, since its findings would otherwise be
noise about values that are already known to be wrong.
"""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from fleetid.fleet.model import (
    NAME_PATTERN,
    SCOPE_PATTERN,
    Agent,
    Connection,
    DevUser,
    Fleet,
    Gateway,
    Identity,
    PolicyFile,
    Registration,
    Resource,
    Role,
    Tenant,
)
from fleetid.fleet.semantics import ANY_NAME, Known, check_fleet, check_policies
from fleetid.fleet.source import Document, Problem, escape_pointer, parse_yaml

__all__ = [
    "FleetInvalid",
    "FleetSources",
    "LoadedFleet",
    "git_sources",
    "load",
    "paused_gc",
    "read_sources",
]

MAX_POLICY_FILES = 200
Model = TypeVar("Model", bound=BaseModel)


class FleetInvalid(Exception):
    """The fleet has problems; `problems` holds every one of them, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        super().__init__(f"the fleet has {count} problem{'s' if count != 1 else ''}")


@dataclass(frozen=True)
class FleetSources:
    """The bytes of one fleet: its fleet file and its policy files, by display name."""

    fleet_name: str
    fleet: bytes
    policies: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedFleet:
    fleet: Fleet
    policies: Mapping[str, PolicyFile]


def read_sources(fleet_path: str | Path) -> FleetSources:
    """Read a fleet file and the `policies/*.yaml` in its folder."""
    path = Path(fleet_path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise FleetInvalid(
            [Problem(str(path), 1, 1, "", f"cannot read the file: {exc.strerror}")]
        ) from exc

    policies: dict[str, bytes] = {}
    folder = path.parent / "policies"
    if folder.is_dir():
        files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
        if len(files) > MAX_POLICY_FILES:
            raise FleetInvalid(
                [Problem(str(folder), 1, 1, "", f"more than {MAX_POLICY_FILES} policy files")]
            )
        for policy in files:
            try:
                policies[str(policy)] = policy.read_bytes()
            except OSError as exc:
                raise FleetInvalid(
                    [Problem(str(policy), 1, 1, "", f"cannot read the file: {exc.strerror}")]
                ) from exc
    return FleetSources(str(path), content, policies)


def git_sources(
    revision: str, fleet_path: str = "fleet.yaml", *, cwd: str | Path = "."
) -> FleetSources:
    """The fleet as it stands at a git revision, policies included; paths are relative to
    `cwd`, which must be inside the repository."""
    if Path(fleet_path).is_absolute():
        fleet_path = os.path.relpath(fleet_path, cwd)
    relative = PurePosixPath(fleet_path)
    folder = relative.parent / "policies"
    label = f"{revision}:{relative}"
    content = _git(cwd, "show", f"{revision}:./{relative}", label=label)
    listing = _git(cwd, "ls-tree", "--name-only", revision, f"{folder}/", label=label)
    policies: dict[str, bytes] = {}
    for name in sorted(listing.decode().splitlines()):
        if name.endswith((".yaml", ".yml")):
            policies[f"{revision}:{name}"] = _git(
                cwd, "show", f"{revision}:./{name}", label=f"{revision}:{name}"
            )
    return FleetSources(label, content, policies)


def _git(cwd: str | Path, *args: str, label: str) -> bytes:
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments are not a shell line
            ["git", *args],  # noqa: S607
            cwd=cwd,
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FleetInvalid([Problem(label, 1, 1, "", f"git failed: {exc}")]) from exc
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        message = reason[-1] if reason else f"git {args[0]} failed"
        raise FleetInvalid([Problem(label, 1, 1, "", f"git: {message}")])
    return done.stdout


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a fleet is read or compiled.

    NOTE: a large fleet creates about a million short-lived containers (YAML nodes, their
    marks, values, model objects) and none of them form reference cycles, so the collector
    only walks the growing heap again and again: two thirds of the time at 10,000 agents.
    Reference counting still frees everything; collection resumes afterwards.

    What was created meanwhile and lives on (the revision) is moved to the oldest
    generation as it is resumed: left in the youngest, it would all be walked by the very
    next collection, only to be found alive. Freezing and unfreezing moves every tracked
    object there at once, so it is done only when nothing else is frozen, which it would
    otherwise thaw.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def load(sources: FleetSources) -> LoadedFleet:
    """Validate a fleet completely; raise FleetInvalid with every problem found."""
    with paused_gc():
        return _load(sources)


def _load(sources: FleetSources) -> LoadedFleet:
    problems: list[Problem] = []

    fleet_document, found = parse_yaml(sources.fleet_name, sources.fleet)
    problems.extend(found)
    fleet = None
    # A duplicate key leaves the rest of the file readable; only a file that could not be
    # built at all skips the later passes.
    if fleet_document.data is not None:
        fleet = _validate(Fleet, fleet_document, problems)

    policy_documents: dict[str, Document] = {}
    policies: dict[str, PolicyFile] = {}
    for name, content in sources.policies.items():
        document, found = parse_yaml(name, content)
        problems.extend(found)
        if document.data is None:
            continue
        policy_documents[name] = document
        policy = _validate(PolicyFile, document, problems)
        if policy is not None:
            policies[name] = policy

    checked, known = (fleet, None) if fleet is not None else _partial_fleet(fleet_document.data)
    if checked is not None:
        for pointer, message in check_fleet(checked, known):
            problems.append(fleet_document.problem(pointer, message))
        for name, (pointer, message) in check_policies(checked, policies, known):
            problems.append(policy_documents[name].problem(pointer, message))

    if problems or fleet is None:
        raise FleetInvalid(sorted(problems, key=_file_order(sources)))
    return LoadedFleet(fleet, policies)


_ENTRIES: dict[str, TypeAdapter[Any]] = {
    "tenants": TypeAdapter(Tenant),
    "roles": TypeAdapter(Role),
    "resources": TypeAdapter(Resource),
    "agents": TypeAdapter(Agent),
    "gateways": TypeAdapter(Gateway),
    "connections": TypeAdapter(Connection),
    "dev_users": TypeAdapter(DevUser),
}


def _partial_fleet(data: Any) -> tuple[Fleet | None, Known | None]:
    """The entries of an invalid fleet that are valid on their own, so that the
    cross-reference checks can still run and report in the same pass."""
    if not isinstance(data, dict):
        return None, None
    sections: dict[str, dict[str, Any]] = {}
    broken: dict[str, set[str]] = {}
    for section, adapter in _ENTRIES.items():
        entries = data.get(section)
        sections[section] = {}
        broken[section] = set()
        if entries is not None and not isinstance(entries, dict):
            # The section's names cannot be read at all: nothing refers to an unknown one.
            broken[section].add(ANY_NAME)
            continue
        if entries is None:
            continue
        for name, entry in entries.items():
            try:
                sections[section][name] = adapter.validate_python(entry)
            except ValidationError:
                broken[section].add(name)
    try:
        identity = Identity.model_validate(data.get("identity"))
    except ValidationError:
        identity = Identity(name="unnamed")
    try:
        registration = Registration.model_validate(data.get("registration", {}))
    except ValidationError:
        registration = Registration()
    # model_construct skips validation: each entry in `sections` was validated on its own.
    fields: dict[str, Any] = {"version": 1, "identity": identity, "registration": registration}
    fields.update(sections)
    fleet = Fleet.model_construct(**fields)
    return fleet, Known(fleet, broken)


def _file_order(sources: FleetSources) -> Any:
    rank = {sources.fleet_name: 0} | {name: i + 1 for i, name in enumerate(sources.policies)}

    def key(problem: Problem) -> tuple[int, int, int]:
        return rank.get(problem.file, len(rank)), problem.line, problem.column

    return key


def _validate(model: type[Model], document: Document, problems: list[Problem]) -> Model | None:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        inner = {error["loc"][:-1] for error in errors if error["type"] != "too_short"}
        for error in errors:
            # Pydantic counts only the valid items of a tuple; a list whose one item is
            # wrong is not also "empty".
            if error["type"] == "too_short" and any(
                loc[: len(error["loc"])] == error["loc"] for loc in inner
            ):
                continue
            pointer, message = _describe(error, document.data)
            problems.append(document.problem(pointer, message))
        return None


def _describe(error: ErrorDetails, data: Any) -> tuple[str, str]:
    """A JSON pointer into the document and a reviewer's message for one schema error."""
    pointer, path = _pointer_for(error["loc"], data)
    kind = error["type"]
    context = error.get("ctx") or {}
    last = path[-1] if path else None

    if kind == "missing":
        field_name = error["loc"][-1]
        parent = pointer.rsplit("/", 1)[0] if path and path[-1] == field_name else pointer
        return parent, f"`{field_name}` is required"
    if kind == "extra_forbidden":
        return pointer, f"unknown key `{last}`"
    if kind == "string_pattern_mismatch":
        if "[key]" in error["loc"]:
            return pointer, f"{last!r} is not a valid name: {_pattern_words(context)}"
        return pointer, f"not a valid value: {_pattern_words(context)}"
    if kind == "literal_error":
        return pointer, f"must be {context.get('expected', 'one of the allowed values')}"
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        discriminator = str(context.get("discriminator", "kind")).strip("'")
        if kind == "union_tag_not_found":
            return pointer, f"`{discriminator}` is required"
        return f"{pointer}/{escape_pointer(discriminator)}", (
            f"`{discriminator}` must be one of {context.get('expected_tags', '')}"
        )
    if kind == "too_short":
        least = context.get("min_length", 1)
        return pointer, "must not be empty" if least == 1 else f"needs at least {least} items"
    if kind == "dict_type":
        return pointer, "must be a mapping"
    if kind == "list_type":
        return pointer, "must be a list"
    if kind in {"model_type", "model_attributes_type"}:
        return pointer, "must be a mapping"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return pointer, message[:1].lower() + message[1:]


def _pattern_words(context: Mapping[str, Any]) -> str:
    pattern = context.get("pattern")
    if pattern == NAME_PATTERN:
        return "names use lower-case letters, digits, '.', '_' and '-', at most 64 characters"
    if pattern == SCOPE_PATTERN:
        return "a scope is printable ASCII without spaces, quotes or backslashes (RFC 6749)"
    return f"it must match {pattern}"


def _pointer_for(loc: tuple[int | str, ...], data: Any) -> tuple[str, list[str | int]]:
    """Follow pydantic's location through the data; parts that are not in the data (the
    tag of a tagged union, `[key]`) are skipped."""
    node = data
    path: list[str | int] = []
    for part in loc:
        in_mapping = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_mapping or in_list:
            node = node[part]
            path.append(part)
        elif part == "[key]" or (isinstance(node, dict | list) and part != loc[-1]):
            continue
        else:
            path.append(part)
            break
    pointer = "".join("/" + escape_pointer(part) for part in path)
    return pointer, path
