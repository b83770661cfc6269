"""Compiling a fleet into a revision: the hash covers meaning and nothing else, and the
revision cannot be changed once built."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from fleetid.fleet.compile import Revision, canonical_json, compile_fleet, compile_sources
from fleetid.fleet.load import FleetInvalid, FleetSources, load

MakeSources = Callable[..., FleetSources]


@pytest.fixture(scope="module")
def example(
    example_fleet_text: str, example_policy_texts: dict[str, str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The example as plain data: the fleet, and each policy file by name."""
    policies = {name: yaml.safe_load(text) for name, text in example_policy_texts.items()}
    return yaml.safe_load(example_fleet_text), policies


@pytest.fixture(scope="module")
def example_hash(
    example_fleet_text: str,
    example_policy_texts: dict[str, str],
    make_sources: MakeSources,
) -> str:
    return revision_of(make_sources, example_fleet_text, example_policy_texts).hash


def revision_of(
    make_sources: MakeSources, fleet: str | dict[str, Any], policies: dict[str, Any]
) -> Revision:
    fleet_text = fleet if isinstance(fleet, str) else yaml.safe_dump(fleet, sort_keys=False)
    policy_texts = {
        f"policies/{name}": text if isinstance(text, str) else yaml.safe_dump(text)
        for name, text in policies.items()
    }
    return compile_sources(make_sources(fleet_text, policy_texts))


def reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: reverse_keys(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reverse_keys(item) for item in value]
    return value


def reverse_sets(value: Any, key: str | None = None) -> Any:
    """Reverse every list of plain strings except the one whose order means something."""
    if isinstance(value, dict):
        return {name: reverse_sets(child, name) for name, child in value.items()}
    if isinstance(value, list):
        items = [reverse_sets(item) for item in value]
        if key != "entry_point" and all(isinstance(item, str) for item in items):
            return items[::-1]
        return items
    return value


def test_the_hash_is_a_sha256_and_short_is_its_prefix(example_revision: Revision) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", example_revision.hash)
    assert example_revision.short == example_revision.hash[:12]


def test_the_hash_is_the_same_on_every_compile(
    example_hash: str, example_revision: Revision
) -> None:
    assert example_revision.hash == example_hash


# What must not change the hash


def test_reordering_mapping_keys_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    reordered = {name: reverse_keys(policy) for name, policy in policies.items()}

    assert revision_of(make_sources, reverse_keys(fleet), reordered).hash == example_hash


def test_sorting_mapping_keys_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    text = yaml.safe_dump(fleet, sort_keys=True)

    assert revision_of(make_sources, text, policies).hash == example_hash


def test_reordering_set_like_lists_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    reordered = {name: reverse_sets(policy) for name, policy in policies.items()}
    assert reverse_sets(fleet) != fleet

    assert revision_of(make_sources, reverse_sets(fleet), reordered).hash == example_hash


def test_reordering_rules_in_a_file_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    reordered = {
        name: {**policy, "rules": policy["rules"][::-1]} for name, policy in policies.items()
    }

    assert revision_of(make_sources, fleet, reordered).hash == example_hash


def test_comments_and_whitespace_keep_the_hash(
    make_sources: MakeSources,
    example_fleet_text: str,
    example_policy_texts: dict[str, str],
    example_hash: str,
) -> None:
    without_comments = "\n".join(
        line for line in example_fleet_text.splitlines() if not line.lstrip().startswith("#")
    )
    spaced = "\n\n".join(without_comments.splitlines()) + "\n\n\n"
    commented = {
        name: f"# a new comment\n{text}\n# and one at the end\n"
        for name, text in example_policy_texts.items()
    }

    assert revision_of(make_sources, spaced, commented).hash == example_hash


def test_layout_and_quoting_style_keep_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    quoted = yaml.safe_dump(fleet, default_style='"', indent=4)
    flow = {
        name: yaml.safe_dump(policy, default_flow_style=True) for name, policy in policies.items()
    }
    as_json = json.dumps(fleet, indent=1)

    assert revision_of(make_sources, quoted, flow).hash == example_hash
    assert revision_of(make_sources, as_json, policies).hash == example_hash


def test_renaming_a_policy_file_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    renamed = {f"renamed-{index}.yml": policy for index, policy in enumerate(policies.values())}

    assert revision_of(make_sources, fleet, renamed).hash == example_hash


def test_moving_a_rule_to_another_file_keeps_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    rules = [rule for policy in policies.values() for rule in policy["rules"]]
    assert len(rules) == 3
    moved = {
        "one.yaml": {"version": 1, "rules": [rules[2], rules[0]]},
        "two.yaml": {"version": 1, "rules": [rules[1]]},
    }

    revision = revision_of(make_sources, fleet, moved)

    assert revision.hash == example_hash
    assert {rule.file for rule in revision.rules} == {"policies/one.yaml", "policies/two.yaml"}


def test_durations_in_other_units_and_written_defaults_keep_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example
    fleet = json.loads(json.dumps(fleet))
    fleet["identity"]["tokens"]["access_token"] = 900
    fleet["identity"]["tokens"]["id_token"] = "1h"
    fleet["resources"]["crm"]["scopes"]["crm:write"]["max_lifetime"] = "300s"
    fleet["resources"]["crm"]["scopes"]["crm:read"]["requires_approval"] = False
    fleet["agents"]["crm-reconciler"]["token_endpoint_auth_method"] = "client_secret_basic"

    assert revision_of(make_sources, fleet, policies).hash == example_hash


# What must change the hash


def edited(data: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copy = json.loads(json.dumps(data))
    change(copy)
    return copy


def add_scope(fleet: dict[str, Any]) -> None:
    fleet["resources"]["crm"]["scopes"]["crm:delete"] = {
        "description": "Delete",
        "roles": ["sales-manager"],
    }


def list_scope(fleet: dict[str, Any]) -> None:
    fleet["agents"]["support-triage"]["scopes"]["crm"].append("crm:write")


def remap_group(fleet: dict[str, Any]) -> None:
    fleet["tenants"]["acme"]["groups"]["Sales"] = ["sales", "sales-manager"]


def add_role_to_scope(fleet: dict[str, Any]) -> None:
    fleet["resources"]["crm"]["scopes"]["crm:write"]["roles"].append("sales")


def change_lifetime(fleet: dict[str, Any]) -> None:
    fleet["resources"]["crm"]["scopes"]["crm:write"]["max_lifetime"] = "6m"


def change_default_lifetime(fleet: dict[str, Any]) -> None:
    fleet["identity"]["tokens"]["access_token"] = "10m"


def require_approval(fleet: dict[str, Any]) -> None:
    fleet["resources"]["crm"]["scopes"]["crm:read"]["requires_approval"] = True


def serve_tenant(fleet: dict[str, Any]) -> None:
    fleet["agents"]["finance-reporter"]["tenants"].append("globex")


def change_identifier(fleet: dict[str, Any]) -> None:
    fleet["resources"]["crm"]["identifier"] = "https://crm2.acme.example.com"


FLEET_CHANGES = {
    "a scope added": add_scope,
    "a scope listed by an agent": list_scope,
    "a group mapped to another role": remap_group,
    "a role allowed a scope": add_role_to_scope,
    "a scope's lifetime": change_lifetime,
    "the default lifetime": change_default_lifetime,
    "a scope needing approval": require_approval,
    "a tenant served": serve_tenant,
    "a resource identifier": change_identifier,
}


@pytest.mark.parametrize("change", FLEET_CHANGES.values(), ids=FLEET_CHANGES.keys())
def test_a_change_of_meaning_in_the_fleet_changes_the_hash(
    make_sources: MakeSources,
    example: tuple[dict[str, Any], dict[str, Any]],
    example_hash: str,
    change: Callable[[dict[str, Any]], None],
) -> None:
    fleet, policies = example

    assert revision_of(make_sources, edited(fleet, change), policies).hash != example_hash


def rule(policies: dict[str, Any], rule_id: str) -> dict[str, Any]:
    (found,) = [r for policy in policies.values() for r in policy["rules"] if r["id"] == rule_id]
    return found


APPROVAL = "crm-write-needs-approval"
POLICY_CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "an effect": lambda policies: rule(policies, APPROVAL).update(effect="deny"),
    "a subject selector": lambda policies: rule(policies, APPROVAL)["match"].update(subject="any"),
    "a tenant selector": lambda policies: rule(policies, APPROVAL)["match"].update(
        tenants=["acme"]
    ),
    "a rule id": lambda policies: rule(policies, APPROVAL).update(id="renamed-rule"),
    "a capped lifetime": lambda policies: rule(policies, "crm-machine-tokens-short").update(
        max_lifetime="3m"
    ),
    "a denied tenant": lambda policies: rule(policies, "globex-no-crm-writes")["match"].update(
        tenants=["acme"]
    ),
}


@pytest.mark.parametrize("change", POLICY_CHANGES.values(), ids=POLICY_CHANGES.keys())
def test_a_change_of_meaning_in_a_policy_changes_the_hash(
    make_sources: MakeSources,
    example: tuple[dict[str, Any], dict[str, Any]],
    example_hash: str,
    change: Callable[[dict[str, Any]], None],
) -> None:
    fleet, policies = example

    assert revision_of(make_sources, fleet, edited(policies, change)).hash != example_hash


def test_dropping_a_policy_file_changes_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]], example_hash: str
) -> None:
    fleet, policies = example

    assert revision_of(make_sources, fleet, {"crm.yaml": policies["crm.yaml"]}).hash != (
        example_hash
    )


def with_code_artifact(fleet: dict[str, Any], entry_point: list[str]) -> dict[str, Any]:
    def change(copy: dict[str, Any]) -> None:
        copy["agents"]["sales-assistant"]["agentcore"]["artifact"] = {
            "code": {"bucket": "acme-agents", "prefix": "sales/1.4.2", "entry_point": entry_point}
        }

    return edited(fleet, change)


def test_the_order_of_the_entry_point_changes_the_hash(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    fleet, policies = example
    forward = with_code_artifact(fleet, ["opentelemetry-instrument", "main.py"])
    backward = with_code_artifact(fleet, ["main.py", "opentelemetry-instrument"])

    first = revision_of(make_sources, forward, policies)
    second = revision_of(make_sources, backward, policies)

    assert first.hash != second.hash
    assert first.hash == revision_of(make_sources, reverse_sets(forward), policies).hash


def test_a_resource_named_entry_point_is_still_a_set_of_scopes(
    make_sources: MakeSources, example: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    fleet, _ = example

    def rename(copy: dict[str, Any]) -> None:
        copy["resources"]["entry_point"] = copy["resources"].pop("crm")
        for agent in copy["agents"].values():
            scopes = agent.get("scopes", {})
            if "crm" in scopes:
                scopes["entry_point"] = scopes.pop("crm")

    def reorder(copy: dict[str, Any]) -> None:
        copy["agents"]["crm-reconciler"]["scopes"]["entry_point"].reverse()

    renamed = edited(fleet, rename)
    reordered = edited(renamed, reorder)

    assert revision_of(make_sources, renamed, {}).hash == (
        revision_of(make_sources, reordered, {}).hash
    )


def test_canonical_json_is_sorted_and_compact(example_revision: Revision) -> None:
    text = canonical_json(example_revision.fleet, example_revision.policies)
    document = json.loads(text)

    # Compact, mappings of names sorted, set-like lists sorted.
    assert text == json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    for section in ("tenants", "roles", "resources", "agents", "connections", "dev_users"):
        names = list(document["fleet"][section])
        assert names == sorted(names)
    for agent in document["fleet"]["agents"].values():
        assert agent["tenants"] == sorted(agent["tenants"])
        assert list(agent["scopes"]) == sorted(agent["scopes"])
    assert [rule["id"] for rule in document["rules"]] == sorted(
        rule["id"] for rule in document["rules"]
    )
    assert "crm.yaml" not in text


# What the revision holds


def test_the_revision_indexes_the_example(example_revision: Revision) -> None:
    revision = example_revision

    assert revision.resource_by_audience["https://crm.acme.example.com"] == "crm"
    assert revision.connection_by_urn["urn:fleetid:connection:reporting"] == "reporting"
    assert revision.agent_scopes[("support-triage", "crm")] == frozenset({"crm:read"})
    assert revision.scope_roles[("crm", "crm:write")] == frozenset({"sales-manager", "crm-sync"})
    assert revision.agent_tenants["finance-reporter"] == frozenset({"acme"})
    assert revision.agent_roles["crm-reconciler"] == frozenset({"crm-sync"})
    assert revision.group_roles["globex"]["crm-admins@globex.example"] == frozenset(
        {"sales", "sales-manager"}
    )
    assert [rule.id for rule in revision.rules] == sorted(rule.id for rule in revision.rules)
    assert revision.summary() == {
        "revision": revision.hash,
        "name": "acme-agents",
        "tenants": 2,
        "roles": 5,
        "resources": 2,
        "scopes": 4,
        "agents": 4,
        "gateways": 1,
        "connections": 2,
        "policy_rules": 3,
        "dev_users": 4,
    }


def test_rules_are_resolved_against_the_fleet(example_revision: Revision) -> None:
    rules = {rule.id: rule for rule in example_revision.rules}

    approval = rules["crm-write-needs-approval"]
    assert (approval.effect, approval.subject) == ("require_approval", "user")
    assert approval.resources == frozenset({"crm"})
    assert approval.scopes == frozenset({"crm:write"})
    assert approval.scope_patterns == ("crm:write",)
    assert rules["crm-machine-tokens-short"].scopes is None
    assert rules["crm-machine-tokens-short"].max_lifetime == 120
    assert rules["globex-no-crm-writes"].tenants == frozenset({"globex"})
    assert rules["globex-no-crm-writes"].resources is None
    assert [rule.id for rule in example_revision.rules_covering("crm", "crm:write")] == [
        "crm-machine-tokens-short",
        "crm-write-needs-approval",
        "globex-no-crm-writes",
    ]
    assert example_revision.rules_covering("tools", "tools:search") == ()
    assert example_revision.rules_covering("nowhere", "x") == ()


def test_patterns_are_resolved_to_the_names_they_match(
    make_sources: MakeSources, example_fleet_text: str
) -> None:
    policy = {
        "version": 1,
        "rules": [
            {
                "id": "support-reads-only",
                "description": "d",
                "effect": "deny",
                "match": {"agents": ["support-*", "nobody-*"], "scopes": ["*:write", "tools:t*"]},
            }
        ],
    }

    revision = revision_of(make_sources, example_fleet_text, {"p.yaml": policy})

    (rule,) = revision.rules
    assert rule.agents == frozenset({"support-triage"})
    assert rule.scopes == frozenset({"crm:write", "tools:tickets"})


def test_roles_come_only_from_the_tenants_own_map(example_revision: Revision) -> None:
    roles_of = example_revision.roles_of

    assert roles_of("acme", ["Sales Managers"]) == frozenset({"sales", "sales-manager"})
    assert roles_of("acme", ["crm-admins@globex.example"]) == frozenset()
    assert roles_of("globex", ["Sales Managers"]) == frozenset()
    assert roles_of("acme", ["Unknown", "Sales"]) == frozenset({"sales"})
    assert roles_of("initech", ["Sales"]) == frozenset()


# Immutability


def test_the_revision_cannot_be_reassigned(example_revision: Revision) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        example_revision.hash = "0" * 64  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        example_revision.rules[0].effect = "deny"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        example_revision.fleet.identity = example_revision.fleet.identity  # type: ignore[misc]
    with pytest.raises(ValidationError):
        example_revision.fleet.resources["crm"].scopes["crm:write"].max_lifetime = 9999  # type: ignore[misc]


@pytest.mark.parametrize(
    "mapping",
    [
        "policies",
        "resource_by_audience",
        "connection_by_urn",
        "agent_scopes",
        "scope_roles",
        "group_roles",
        "rules_for",
        "agent_tenants",
        "agent_roles",
    ],
)
def test_the_revisions_mappings_cannot_be_mutated(
    example_revision: Revision, mapping: str
) -> None:
    target = getattr(example_revision, mapping)
    key = next(iter(target))

    with pytest.raises(TypeError):
        target[key] = target[key]
    with pytest.raises(TypeError):
        del target[key]


def test_the_values_in_the_indexes_are_immutable(example_revision: Revision) -> None:
    with pytest.raises(TypeError):
        example_revision.group_roles["acme"]["Sales"] = frozenset({"sales-manager"})  # type: ignore[index]
    assert all(isinstance(value, frozenset) for value in example_revision.agent_scopes.values())
    assert all(isinstance(value, tuple) for value in example_revision.rules_for.values())
    assert isinstance(example_revision.rules, tuple)


def test_the_fleet_inside_a_revision_cannot_be_mutated(
    make_sources: MakeSources, example_fleet_text: str
) -> None:
    revision = compile_sources(make_sources(example_fleet_text))

    crm = revision.fleet.resources["crm"]
    with pytest.raises(AttributeError):
        crm.scopes["crm:write"].roles.append("sales")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        crm.scopes["crm:delete"] = crm.scopes["crm:write"]  # type: ignore[index]
    with pytest.raises(TypeError):
        revision.fleet.agents["sales-assistant"].scopes["crm"] = ("crm:read",)  # type: ignore[index]


# Compile and errors


def test_compile_sources_is_load_then_compile_fleet(
    make_sources: MakeSources, example_fleet_text: str, example_policy_texts: dict[str, str]
) -> None:
    sources = make_sources(example_fleet_text, example_policy_texts)

    assert compile_fleet(load(sources)).hash == compile_sources(sources).hash


def test_compile_sources_raises_fleet_invalid(make_sources: MakeSources) -> None:
    with pytest.raises(FleetInvalid):
        compile_sources(make_sources("version: 1\n"))


def test_a_deeply_aliased_value_is_refused_not_a_crash(
    make_sources: MakeSources, example_fleet_text: str
) -> None:
    lines = [
        "    jwks:",
        "      keys: [{kty: RSA, n: AQAB, e: AQAB}]",
        "      padding:",
    ]
    previous = "0"
    for index in range(50):
        lines.append(f"        - &deep{index} " + "[" * 55 + previous + "]" * 55)
        previous = f"*deep{index}"
    anchor = "    roles: [crm-sync]\n"
    text = example_fleet_text.replace(anchor, anchor + "\n".join(lines) + "\n")
    assert text != example_fleet_text

    with pytest.raises(FleetInvalid):
        compile_sources(make_sources(text))
