"""The shipped JSON Schemas: current with the models, valid draft 2020-12, accepted by the
example, in agreement with fleetid on invalid documents, and named by the example's files."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetid.fleet.jsonschema import DIALECT, SCHEMA_FILES, generate, rendered, shipped
from fleetid.fleet.load import FleetInvalid, FleetSources, load

MakeSources = Callable[..., FleetSources]
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "fleetid" / "fleet" / "schema"
SCHEMA_COMMENT = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(shipped(kind)))


@pytest.fixture(scope="module")
def example_fleet(example_fleet_text: str) -> dict[str, Any]:
    data = yaml.safe_load(example_fleet_text)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_the_shipped_schema_is_current(kind: str) -> None:
    assert shipped(kind) == rendered(kind), (
        f"fleetid/fleet/schema/{SCHEMA_FILES[kind]} is stale: run `fleetid schema --write`"
    )


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_the_schema_file_in_the_repository_is_the_one_shipped(kind: str) -> None:
    assert (SCHEMA_DIR / SCHEMA_FILES[kind]).read_text() == shipped(kind)


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_the_schema_is_valid_draft_2020_12(kind: str) -> None:
    schema = json.loads(shipped(kind))

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://fleetid.dev/schema/{SCHEMA_FILES[kind]}"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


def test_generate_and_rendered_agree() -> None:
    for kind in ("fleet", "policy"):
        assert json.loads(rendered(kind)) == generate(kind)
        assert rendered(kind).endswith("}\n")


def test_the_example_fleet_validates_against_the_schema(example_fleet: dict[str, Any]) -> None:
    errors = list(validator("fleet").iter_errors(example_fleet))

    assert errors == []


def test_the_example_policies_validate_against_the_schema(
    example_policy_texts: dict[str, str],
) -> None:
    assert example_policy_texts
    for name, text in example_policy_texts.items():
        errors = list(validator("policy").iter_errors(yaml.safe_load(text)))
        assert errors == [], name


# Agreement: what one rejects, the other rejects too


def changed(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(document)
    node = result
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return result


DELETE = object()

FLEET_BREAKAGES = {
    "unknown top-level key": (("extras",), True),
    "unknown agent key": (("agents", "crm-reconciler", "owner"), "me"),
    "wrong resource kind": (("resources", "crm", "kind"), "rest"),
    "wrong runtime": (("agents", "support-triage", "runtime"), "lambda"),
    "wrong signing algorithm": (("identity", "signing", "algorithm"), "HS256"),
    "duration spelled out": (("identity", "tokens", "access_token"), "15 minutes"),
    "zero duration": (("resources", "crm", "scopes", "crm:write", "max_lifetime"), 0),
    "inline secret": (("connections", "reporting", "key"), "sk-live-abc"),
    "empty secret reference": (("connections", "reporting", "key"), {}),
    "missing identity": (("identity",), DELETE),
    "missing description": (("agents", "crm-reconciler", "description"), DELETE),
    "scope without roles": (("resources", "crm", "scopes", "crm:read", "roles"), []),
    "resource without scopes": (("resources", "tools", "scopes"), {}),
    "bad role name in a list": (("agents", "crm-reconciler", "roles"), ["CRM Sync"]),
    "bad scope in an agent": (("agents", "crm-reconciler", "scopes", "crm"), ["crm read"]),
    "wrong version": (("version",), 2),
    "string where a list belongs": (("agents", "crm-reconciler", "tenants"), "acme"),
    "wrong connection kind": (("connections", "reporting", "kind"), "password"),
    "bad subnet": (
        ("agents", "sales-assistant", "agentcore", "network"),
        {"mode": "VPC", "subnets": ["net-1"], "security_groups": ["sg-1"]},
    ),
}


@pytest.mark.parametrize(("path", "value"), FLEET_BREAKAGES.values(), ids=FLEET_BREAKAGES.keys())
def test_an_invalid_fleet_is_rejected_by_both(
    example_fleet: dict[str, Any],
    make_sources: MakeSources,
    example_policy_texts: dict[str, str],
    path: tuple[str | int, ...],
    value: Any,
) -> None:
    document = changed(example_fleet, path, value)

    assert not validator("fleet").is_valid(document)
    with pytest.raises(FleetInvalid):
        load(make_sources(yaml.safe_dump(document), example_policy_texts))


POLICY = {
    "version": 1,
    "rules": [
        {
            "id": "no-writes",
            "description": "No writes",
            "effect": "cap_lifetime",
            "max_lifetime": "2m",
            "match": {"resources": ["crm"], "subject": "machine"},
        }
    ],
}

POLICY_BREAKAGES = {
    "unknown effect": (("rules", 0, "effect"), "block"),
    "cap without a lifetime": (("rules", 0, "max_lifetime"), DELETE),
    "unknown match key": (("rules", 0, "match", "users"), ["alice"]),
    "unknown subject": (("rules", 0, "match", "subject"), "robot"),
    "bad rule id": (("rules", 0, "id"), "No Writes"),
    "no rules": (("rules",), []),
    "unknown key": (("owner",), "me"),
    "missing description": (("rules", 0, "description"), DELETE),
}


def test_the_policy_used_for_breakage_is_valid(
    example_fleet_text: str, make_sources: MakeSources
) -> None:
    assert validator("policy").is_valid(POLICY)
    assert load(make_sources(example_fleet_text, {"p.yaml": yaml.safe_dump(POLICY)})).policies


@pytest.mark.parametrize(("path", "value"), POLICY_BREAKAGES.values(), ids=POLICY_BREAKAGES.keys())
def test_an_invalid_policy_is_rejected_by_both(
    example_fleet_text: str, make_sources: MakeSources, path: tuple[str | int, ...], value: Any
) -> None:
    document = changed(POLICY, path, value)

    assert not validator("policy").is_valid(document)
    with pytest.raises(FleetInvalid):
        load(make_sources(example_fleet_text, {"p.yaml": yaml.safe_dump(document)}))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("resources", "CRM"), {"kind": "rest"}),
        (("agents", "Support Bot"), 42),
        (("resources", "tools", "scopes", "tools search"), {}),
    ],
    ids=["resource", "agent", "scope"],
)
def test_an_entry_with_an_invalid_name_is_rejected_by_both(
    example_fleet: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    assert not validator("fleet").is_valid(changed(example_fleet, path, value))


def test_a_boolean_duration_is_rejected_by_both(
    example_fleet: dict[str, Any], make_sources: MakeSources
) -> None:
    document = changed(example_fleet, ("identity", "tokens", "access_token"), True)

    assert not validator("fleet").is_valid(document)
    with pytest.raises(FleetInvalid):
        load(make_sources(yaml.safe_dump(document)))


# The files name their schema


def schema_comment(path: Path) -> Path:
    first = path.read_text().splitlines()[0]
    match = SCHEMA_COMMENT.match(first)
    assert match, f"{path} does not start with `# yaml-language-server: $schema=...`"
    return (path.parent / match.group(1)).resolve()


def test_the_example_fleet_names_the_fleet_schema(repo_root: Path) -> None:
    target = schema_comment(repo_root / "fleet.yaml")

    assert target.is_file()
    assert target == (SCHEMA_DIR / "fleet.schema.json").resolve()


def test_each_example_policy_names_the_policy_schema(repo_root: Path) -> None:
    policies = sorted((repo_root / "policies").glob("*.yaml"))
    assert policies

    for path in policies:
        target = schema_comment(path)
        assert target.is_file(), path
        assert target == (SCHEMA_DIR / "policy.schema.json").resolve(), path
