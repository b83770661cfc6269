"""The semantic diff: effective access agrees with `decide`, every kind of change gets the
effect a reviewer expects, the three output formats, and `fleetid diff` on files and on git
revisions."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from clikit import Run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetid.fleet.compile import Revision, compile_fleet, compile_sources
from fleetid.fleet.diff import (
    MARKDOWN_LIST_ITEMS,
    MARKDOWN_TABLE_ROWS,
    AccessTuple,
    Change,
    FleetDiff,
    diff_json,
    diff_revisions,
    effective_access,
    render_markdown,
    render_text,
    verdict,
)
from fleetid.fleet.load import LoadedFleet, read_sources
from fleetid.fleet.model import Fleet, PolicyFile
from fleetid.policy.decide import AccessRequest, Subject, decide

REPO = Path(__file__).resolve().parents[2]
Document = dict[str, Any]
Policies = dict[str, Document]
Edit = Callable[[Document, Policies], None]


# -- Building fleets -------------------------------------------------------------------


def example() -> tuple[Document, Policies]:
    fleet = yaml.safe_load((REPO / "fleet.yaml").read_text())
    policies = {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted((REPO / "policies").glob("*.yaml"))
    }
    return fleet, policies


def write_fleet(folder: Path, fleet: Document, policies: Policies) -> Path:
    (folder / "policies").mkdir(parents=True, exist_ok=True)
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    for name, document in policies.items():
        (folder / "policies" / name).write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def compiled(folder: Path, fleet: Document, policies: Policies) -> Revision:
    return compile_sources(read_sources(write_fleet(folder, fleet, policies)))


def from_documents(fleet: Document, rules: list[Document]) -> Revision:
    """A revision straight from the model, for fleets made up by the property tests."""
    policies = {}
    if rules:
        policies["rules.yaml"] = PolicyFile.model_validate({"version": 1, "rules": rules})
    return compile_fleet(LoadedFleet(Fleet.model_validate(fleet), policies))


def edited(tmp_path: Path, *edits: Edit) -> tuple[Revision, Revision]:
    """The example fleet, and the example fleet after `edits`."""
    fleet, policies = example()
    base = compiled(tmp_path / "base", fleet, policies)
    for edit in edits:
        edit(fleet, policies)
    head = compiled(tmp_path / "head", fleet, policies)
    return base, head


def rule_of(policies: Policies, rule_id: str) -> Document:
    for policy in policies.values():
        for rule in policy["rules"]:
            if rule["id"] == rule_id:
                return dict[str, Any](rule)
    raise KeyError(rule_id)


def drop_rule(policies: Policies, rule_id: str) -> None:
    for name, policy in list(policies.items()):
        policy["rules"] = [rule for rule in policy["rules"] if rule["id"] != rule_id]
        if not policy["rules"]:
            del policies[name]


def set_rule(policies: Policies, rule_id: str, **fields: Any) -> None:
    for policy in policies.values():
        for rule in policy["rules"]:
            if rule["id"] == rule_id:
                rule.update(fields)


def test_all_names_the_public_api() -> None:
    from fleetid.fleet import diff

    defined_here = {
        name
        for name, value in vars(diff).items()
        if not name.startswith("_")
        and (callable(value) or isinstance(value, int))
        and getattr(value, "__module__", diff.__name__) == diff.__name__
    }
    assert defined_here <= set(diff.__all__)
    assert all(hasattr(diff, name) for name in diff.__all__)


# -- Effective access against decide ---------------------------------------------------


def assert_agrees_with_decide(revision: Revision) -> None:
    """Effective access is exactly what decide grants (or holds for approval).

    A tuple with a tenant is in the set when some user holding one IdP group of that tenant
    gets the scope and the group gives the tuple's role, which is one of the scope's roles;
    a tuple without a tenant when the agent acting as itself gets it through its own role.
    Users holding two groups get nothing that the set does not already explain.
    """
    fleet = revision.fleet
    access = effective_access(revision)
    expected: set[AccessTuple] = set()

    def obtains(agent: str, resource: str, scope: str, subject: Subject | None) -> bool:
        decision = decide(revision, AccessRequest(agent, resource, (scope,), subject))
        return scope in decision.granted or scope in decision.needs_approval

    for agent, (resource_name, resource) in itertools.product(
        fleet.agents, fleet.resources.items()
    ):
        for scope, definition in resource.scopes.items():
            holders = set(definition.roles)
            if obtains(agent, resource_name, scope, None):
                for role in holders & set(fleet.agents[agent].roles):
                    expected.add(AccessTuple(agent, resource_name, scope, role, None))
            for tenant_name, tenant in fleet.tenants.items():
                for group, roles in tenant.groups.items():
                    if obtains(agent, resource_name, scope, Subject("u", tenant_name, (group,))):
                        for role in holders & set(roles):
                            expected.add(
                                AccessTuple(agent, resource_name, scope, role, tenant_name)
                            )
                for first, second in itertools.combinations(tenant.groups, 2):
                    both = Subject("u", tenant_name, (first, second))
                    if obtains(agent, resource_name, scope, both):
                        roles = set(tenant.groups[first]) | set(tenant.groups[second])
                        assert any(
                            AccessTuple(agent, resource_name, scope, role, tenant_name) in access
                            for role in roles & holders
                        )

    assert access == expected


def test_access_of_the_example_fleet_agrees_with_decide() -> None:
    revision = compile_sources(read_sources(REPO / "fleet.yaml"))
    assert_agrees_with_decide(revision)

    access = effective_access(revision)
    # Globex's deny rule keeps crm:write from its sales managers, not from Acme's.
    assert AccessTuple("sales-assistant", "crm", "crm:write", "sales-manager", "acme") in access
    assert (
        AccessTuple("sales-assistant", "crm", "crm:write", "sales-manager", "globex") not in access
    )
    assert AccessTuple("crm-reconciler", "crm", "crm:write", "crm-sync", None) in access


def small_fleet(**agents: Document) -> Document:
    return {
        "version": 1,
        "identity": {"name": "small"},
        "roles": {name: {} for name in ("reader", "writer", "admin", "bot")},
        "tenants": {
            "north": {"groups": {"readers": ["reader"], "writers": ["reader", "writer"]}},
            "south": {"groups": {"admins": ["admin", "writer"], "nobody": []}},
            "empty": {},
        },
        "resources": {
            "docs": {
                "kind": "api",
                "identifier": "https://docs.example.com",
                "scopes": {
                    "docs:read": {"description": "read", "roles": ["reader", "admin", "bot"]},
                    "docs:write": {
                        "description": "write",
                        "roles": ["writer", "bot"],
                        "requires_approval": True,
                    },
                    "docs:admin": {"description": "admin", "roles": ["admin"]},
                },
            },
        },
        "agents": agents,
    }


def agent(**fields: Any) -> Document:
    return {"runtime": "external", "description": "an agent", **fields}


def test_access_with_deny_rules_on_roles_agents_and_machines_agrees_with_decide() -> None:
    fleet = small_fleet(
        **{
            "editor-one": agent(
                scopes={"docs": ["docs:read", "docs:write", "docs:admin"]},
                tenants=["north", "south", "empty"],
                roles=["bot"],
            ),
            "editor-two": agent(scopes={"docs": ["docs:read", "docs:write"]}, tenants=["south"]),
            "machine": agent(scopes={"docs": ["docs:read", "docs:write"]}, roles=["bot"]),
        }
    )
    rules = [
        # Denies writers everywhere, so the admins group (admin + writer) loses docs:read
        # too: a deny on a role applies to anyone holding it.
        {
            "id": "no-writers-read",
            "description": "d",
            "effect": "deny",
            "match": {"scopes": ["docs:read"], "roles": ["writer"]},
        },
        {
            "id": "editors-not-in-south",
            "description": "d",
            "effect": "deny",
            "match": {"agents": ["editor-*"], "tenants": ["south"], "scopes": ["docs:w*"]},
        },
        {
            "id": "machines-no-write",
            "description": "d",
            "effect": "deny",
            "match": {"subject": "machine", "scopes": ["docs:write"]},
        },
        {"id": "approve-admin", "description": "d", "effect": "require_approval"},
    ]
    revision = from_documents(fleet, rules)

    assert_agrees_with_decide(revision)
    access = effective_access(revision)
    assert AccessTuple("editor-one", "docs", "docs:read", "reader", "north") in access
    assert AccessTuple("editor-one", "docs", "docs:read", "admin", "south") not in access
    assert AccessTuple("editor-two", "docs", "docs:write", "writer", "south") not in access
    assert AccessTuple("machine", "docs", "docs:read", "bot", None) in access
    assert AccessTuple("machine", "docs", "docs:write", "bot", None) not in access


def test_access_needs_a_listed_scope_a_served_tenant_and_a_group() -> None:
    fleet = small_fleet(
        lister=agent(scopes={"docs": ["docs:read"]}, tenants=["empty"]),
        nobody=agent(scopes={}, tenants=["north", "south"], roles=["admin"]),
    )
    revision = from_documents(fleet, [])

    assert_agrees_with_decide(revision)
    assert effective_access(revision) == frozenset()


ROLES = ("r0", "r1", "r2", "r3")


@st.composite
def random_fleets(draw: st.DrawFn) -> tuple[Document, list[Document]]:
    subsets = st.lists(st.sampled_from(ROLES), unique=True, max_size=3)
    tenants = {
        f"t{index}": {
            "groups": {f"g{group}": draw(subsets) for group in range(draw(st.integers(0, 3)))}
        }
        for index in range(draw(st.integers(1, 3)))
    }
    resources = {
        f"res{index}": {
            "kind": "api",
            "identifier": f"https://res{index}.example.com",
            "scopes": {
                f"s{scope}": {
                    "description": "d",
                    "roles": draw(st.lists(st.sampled_from(ROLES), unique=True, min_size=1)),
                    "requires_approval": draw(st.booleans()),
                }
                for scope in range(draw(st.integers(1, 3)))
            },
        }
        for index in range(draw(st.integers(1, 2)))
    }
    agents = {}
    for index in range(draw(st.integers(1, 3))):
        listed = draw(st.lists(st.sampled_from(sorted(resources)), unique=True))
        agents[f"a{index}"] = agent(
            scopes={
                name: draw(
                    st.lists(st.sampled_from(sorted(resources[name]["scopes"])), unique=True)
                )
                for name in listed
            },
            roles=draw(subsets),
            tenants=draw(st.lists(st.sampled_from(sorted(tenants)), unique=True)),
        )
    fleet = {
        "version": 1,
        "identity": {"name": "random"},
        "roles": {role: {} for role in ROLES},
        "tenants": tenants,
        "resources": resources,
        "agents": agents,
    }
    return fleet, draw(random_rules(sorted(resources), sorted(tenants), sorted(agents)))


def random_rules(
    resources: list[str], tenants: list[str], agents: list[str]
) -> st.SearchStrategy[list[Document]]:
    match = st.fixed_dictionaries(
        {},
        optional={
            "resources": st.lists(st.sampled_from(resources), unique=True, min_size=1),
            "scopes": st.lists(st.sampled_from(["s0", "s1", "s2", "s*", "*1"]), min_size=1),
            "agents": st.lists(st.sampled_from([*agents, "a*"]), unique=True, min_size=1),
            "tenants": st.lists(st.sampled_from(tenants), unique=True, min_size=1),
            "roles": st.lists(st.sampled_from(ROLES), unique=True, min_size=1),
            "subject": st.sampled_from(["any", "user", "machine"]),
        },
    )
    effects = st.sampled_from(["deny", "deny", "require_approval", "cap_lifetime"])
    rule = st.builds(
        lambda effect, selectors: {
            "description": "d",
            "effect": effect,
            "match": selectors,
            **({"max_lifetime": 60} if effect == "cap_lifetime" else {}),
        },
        effects,
        match,
    )
    return st.lists(rule, max_size=4).map(
        lambda rules: [{"id": f"rule-{index}", **rule} for index, rule in enumerate(rules)]
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_fleets())
def test_access_of_random_fleets_agrees_with_decide(
    drawn: tuple[Document, list[Document]],
) -> None:
    fleet, rules = drawn
    assert_agrees_with_decide(from_documents(fleet, rules))


@st.composite
def fleet_pairs(draw: st.DrawFn) -> tuple[Revision, Revision]:
    """Two fleets that differ the way a change does: a few parts of one drawn again."""
    fleet, rules = draw(random_fleets())
    head, head_rules = copy.deepcopy(fleet), copy.deepcopy(rules)
    tenants, agents = sorted(fleet["tenants"]), sorted(fleet["agents"])
    if draw(st.booleans()):
        tenant = draw(st.sampled_from(tenants))
        head["tenants"][tenant]["groups"] = {
            f"g{group}": draw(st.lists(st.sampled_from(ROLES), unique=True, max_size=3))
            for group in range(draw(st.integers(0, 3)))
        }
    if draw(st.booleans()):
        name = draw(st.sampled_from(agents))
        which = draw(st.sampled_from(["roles", "tenants", "scopes"]))
        if which == "roles":
            head["agents"][name]["roles"] = draw(
                st.lists(st.sampled_from(ROLES), unique=True, max_size=3)
            )
        elif which == "tenants":
            head["agents"][name]["tenants"] = draw(st.lists(st.sampled_from(tenants), unique=True))
        else:
            head["agents"][name]["scopes"] = {}
    if draw(st.booleans()):
        resource = draw(st.sampled_from(sorted(fleet["resources"])))
        scopes = head["resources"][resource]["scopes"]
        scope = draw(st.sampled_from(sorted(scopes)))
        scopes[scope]["roles"] = draw(st.lists(st.sampled_from(ROLES), unique=True, min_size=1))
    if draw(st.booleans()):
        head_rules = draw(random_rules(sorted(fleet["resources"]), tenants, agents))
    elif head_rules and draw(st.booleans()):
        head_rules.pop(draw(st.integers(0, len(head_rules) - 1)))
    return from_documents(fleet, rules), from_documents(head, head_rules)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_pairs())
def test_access_delta_is_the_difference_of_the_access_sets(
    pair: tuple[Revision, Revision],
) -> None:
    base, head = pair
    before, after = effective_access(base), effective_access(head)

    result = diff_revisions(base, head)

    assert set(result.added) == after - before
    assert set(result.removed) == before - after
    assert len(result.added) == len(after - before)
    if result.added:
        assert result.widens


# -- Each kind of change, and its effect -----------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    edit: Edit
    kind: str
    effect: str
    words: str
    back: str | None = None  # the effect of the same change undone, when it differs


def _agent(name: str, **fields: Any) -> Edit:
    def edit(fleet: Document, policies: Policies) -> None:
        fleet["agents"][name].update(fields)

    return edit


def _at(path: str, value: Any) -> Edit:
    """Set (or with `...`, delete) the value at a slash-separated path in fleet.yaml."""

    def edit(fleet: Document, policies: Policies) -> None:
        *parents, last = path.split("/")
        node = fleet
        for part in parents:
            node = node.setdefault(part, {})
        if value is ...:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)

    return edit


def _rule(rule_id: str, **fields: Any) -> Edit:
    def edit(fleet: Document, policies: Policies) -> None:
        set_rule(policies, rule_id, **fields)

    return edit


def _match(rule_id: str, **selectors: Any) -> Edit:
    def edit(fleet: Document, policies: Policies) -> None:
        match = rule_of(policies, rule_id).get("match", {})
        for key, value in selectors.items():
            if value is None:
                match.pop(key, None)
            else:
                match[key] = value
        set_rule(policies, rule_id, match=match)

    return edit


def _drop_rule(rule_id: str) -> Edit:
    def edit(fleet: Document, policies: Policies) -> None:
        drop_rule(policies, rule_id)

    return edit


def _add_rule(rule: Document) -> Edit:
    def edit(fleet: Document, policies: Policies) -> None:
        policies["added.yaml"] = {"version": 1, "rules": [rule]}

    return edit


# A public EC key: the fleet holds public keys only, and the diff never parses them.
PUBLIC_KEY = {
    "kty": "EC",
    "crv": "P-256",
    "kid": "k1",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
}

CASES = [
    Case(
        "agent scope added",
        _agent(
            "support-triage",
            scopes={"crm": ["crm:read", "crm:write"], "tools": ["tools:search", "tools:tickets"]},
        ),
        "agent.scopes",
        "widens",
        "agent support-triage may now request crm:write on crm",
        back="narrows",
    ),
    Case(
        "agent added",
        _at("agents/helper", agent(scopes={"tools": ["tools:search"]}, tenants=["acme"])),
        "agent",
        "widens",
        "agent helper (external) added",
        back="narrows",
    ),
    Case(
        "agent serves another tenant",
        _agent("finance-reporter", tenants=["acme", "globex"]),
        "agent.tenants",
        "widens",
        "agent finance-reporter now serves users of tenant globex",
        back="narrows",
    ),
    Case(
        "agent role of its own",
        _agent("crm-reconciler", roles=["crm-sync", "support"]),
        "agent.roles",
        "widens",
        "agent crm-reconciler, acting as itself, now holds role support",
        back="narrows",
    ),
    Case(
        "agent connection dropped",
        _agent("sales-assistant", connections=[]),
        "agent.connections",
        "narrows",
        "agent sales-assistant may no longer use connection google-calendar",
        back="widens",
    ),
    Case(
        "redirect URI added",
        _agent(
            "support-triage",
            redirect_uris=[
                "https://support.acme.example.com/callback",
                "https://x.example.com/cb",
            ],
        ),
        "redirect_uri",
        "widens",
        "redirect URI https://x.example.com/cb added to agent support-triage",
        back="narrows",
    ),
    Case(
        "agent switches to a private key",
        _agent(
            "support-triage",
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [PUBLIC_KEY]},
        ),
        "agent.auth",
        "narrows",
        "now authenticates with private_key_jwt instead of client_secret_basic",
        back="widens",
    ),
    Case(
        "agent key added",
        _agent(
            "support-triage",
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [PUBLIC_KEY]},
        ),
        "agent.auth",
        "widens",
        "the key k1 may now authenticate as agent support-triage",
        back="narrows",
    ),
    Case(
        "agent secret sent in the body",
        _agent("support-triage", token_endpoint_auth_method="client_secret_post"),
        "agent.auth",
        "neutral",
        "now authenticates with client_secret_post",
    ),
    Case(
        "agent runtime",
        _agent("support-triage", runtime="foundry"),
        "agent",
        "neutral",
        "agent support-triage moves from runtime vertex to foundry",
    ),
    Case(
        "agent description",
        _agent("support-triage", description="Something else"),
        "agent",
        "neutral",
        "the description of agent support-triage changes",
    ),
    Case(
        "agentcore settings",
        _at("agents/sales-assistant/agentcore/environment/LOG_LEVEL", "debug"),
        "agent",
        "neutral",
        "the AgentCore settings of agent sales-assistant change (environment)",
    ),
    Case(
        "access token lifetime",
        _at("identity/tokens/access_token", "1h"),
        "lifetime",
        "widens",
        "the access token lifetime goes from 15m to 1h",
        back="narrows",
    ),
    Case(
        "refresh token lifetime",
        _at("identity/tokens/refresh_token", "7d"),
        "lifetime",
        "narrows",
        "the refresh token lifetime goes from 30d to 7d",
        back="widens",
    ),
    Case(
        "scope cap removed",
        _at("resources/crm/scopes/crm:write/max_lifetime", ...),
        "lifetime",
        "widens",
        "the lifetime of tokens carrying crm:write on crm is no longer capped (it was 5m)",
        back="narrows",
    ),
    Case(
        "scope cap longer",
        _at("resources/crm/scopes/crm:write/max_lifetime", "10m"),
        "lifetime",
        "widens",
        "goes from 5m to 10m",
        back="narrows",
    ),
    Case(
        "scope needs approval",
        _at("resources/tools/scopes/tools:tickets/requires_approval", True),
        "approval",
        "narrows",
        "tools:tickets on tools now needs a person's approval",
        back="widens",
    ),
    Case(
        "scope role added",
        _at("resources/tools/scopes/tools:tickets/roles", ["support", "sales"]),
        "scope.roles",
        "widens",
        "role sales may now hold tools:tickets on tools",
        back="narrows",
    ),
    Case(
        "scope added",
        _at("resources/tools/scopes/tools:admin", {"description": "d", "roles": ["support"]}),
        "scope",
        "neutral",
        "resource tools gains scope tools:admin",
        back="narrows",
    ),
    Case(
        "scope description",
        _at("resources/tools/scopes/tools:tickets/description", "Tickets"),
        "scope",
        "neutral",
        "the description of tools:tickets on tools changes",
    ),
    Case(
        "resource identifier",
        _at("resources/crm/identifier", "https://crm2.acme.example.com"),
        "resource",
        "widens",
        "goes from https://crm.acme.example.com to https://crm2.acme.example.com",
    ),
    Case(
        "resource added",
        _at(
            "resources/wiki",
            {
                "kind": "mcp",
                "identifier": "https://wiki.example.com",
                "scopes": {"wiki:read": {"description": "d", "roles": ["support"]}},
            },
        ),
        "resource",
        "neutral",
        "resource wiki (mcp, https://wiki.example.com) added",
        back="narrows",
    ),
    Case(
        "resource signing algorithm",
        _at("resources/tools/signing_algorithm", "ES256"),
        "signing",
        "neutral",
        "tokens for resource tools are now signed with ES256",
    ),
    Case(
        "resource introspection",
        _at("resources/tools/introspection", True),
        "resource",
        "widens",
        "the server of resource tools may introspect the tokens addressed to it, with a client "
        "secret of its own",
        back="narrows",
    ),
    Case(
        "tenant added",
        _at("tenants/initech", {"groups": {"staff": ["support"]}}),
        "tenant",
        "widens",
        "tenant initech added",
        back="narrows",
    ),
    Case(
        "group maps to one more role",
        _at("tenants/acme/groups/Customer Support", ["support", "sales-manager"]),
        "tenant.group",
        "widens",
        'IdP group "Customer Support" of tenant acme now also maps to role sales-manager',
        back="narrows",
    ),
    Case(
        "group added",
        _at("tenants/globex/groups/finance@globex.example", ["analyst"]),
        "tenant.group",
        "widens",
        'IdP group "finance@globex.example" of tenant globex added, mapping to role analyst',
        back="narrows",
    ),
    Case(
        "IdP issuer",
        _at("tenants/globex/sso/issuer", "https://evil.example.com"),
        "tenant.sso",
        "widens",
        "tenant globex now trusts the IdP at https://evil.example.com",
    ),
    Case(
        "groups claim",
        _at("tenants/globex/sso/groups_claim", "roles"),
        "tenant.sso",
        "widens",
        'now reads IdP groups from the "roles" claim instead of "okta_groups"',
    ),
    Case(
        "sso removed",
        _at("tenants/globex/sso", ...),
        "tenant.sso",
        "narrows",
        "users of tenant globex may no longer sign in through an IdP",
        back="widens",
    ),
    Case(
        "role added",
        _at("roles/auditor", {"description": "Audits"}),
        "role",
        "neutral",
        "role auditor added",
        back="neutral",
    ),
    Case(
        "gateway added",
        _at(
            "gateways/crm-gateway",
            {
                "agents": ["support-triage"],
                "targets": {
                    "crm": {"endpoint": "https://crm.acme.example.com", "resource": "crm"}
                },
            },
        ),
        "gateway",
        "widens",
        "gateway crm-gateway added, for agent support-triage",
        back="narrows",
    ),
    Case(
        "gateway agent added",
        _at("gateways/tools-gateway/agents", ["sales-assistant", "support-triage"]),
        "gateway.agents",
        "widens",
        "agent support-triage may now call gateway tools-gateway",
        back="narrows",
    ),
    Case(
        "gateway target endpoint",
        _at("gateways/tools-gateway/targets/internal-tools/endpoint", "https://other.example.com"),
        "gateway.target",
        "widens",
        "now sends calls to https://other.example.com",
    ),
    Case(
        "gateway target added",
        _at("gateways/tools-gateway/targets/search", {"endpoint": "https://search.example.com"}),
        "gateway.target",
        "widens",
        "gateway tools-gateway gains target search (https://search.example.com)",
        back="narrows",
    ),
    Case(
        "connection added",
        _at(
            "connections/ticketing",
            {"kind": "api_key", "key": {"env": "TICKETING_KEY"}},
        ),
        "connection",
        "widens",
        "connection ticketing (an API key) added",
        back="narrows",
    ),
    Case(
        "connection agent allowed",
        _at("connections/reporting/allowed/agents", ["finance-reporter", "support-triage"]),
        "connection.allowed",
        "widens",
        "connection reporting may now be used by agent support-triage",
        back="narrows",
    ),
    Case(
        "connection open to any role",
        _at("connections/google-calendar/allowed/roles", ...),
        "connection.allowed",
        "widens",
        "connection google-calendar may now be used for any role "
        "(it was limited to sales, sales-manager)",
        back="narrows",
    ),
    Case(
        "connection tenant allowed",
        _at("connections/reporting/allowed/tenants", ["acme", "globex"]),
        "connection.allowed",
        "widens",
        "connection reporting may now be used for tenant globex",
        back="narrows",
    ),
    Case(
        "connection scope",
        _at(
            "connections/google-calendar/scopes",
            ["openid", "https://www.googleapis.com/auth/calendar.events", "email"],
        ),
        "connection.scopes",
        "widens",
        "connection google-calendar now asks the provider for email",
        back="narrows",
    ),
    Case(
        "connection without PKCE",
        _at("connections/google-calendar/pkce", False),
        "connection",
        "widens",
        "connection google-calendar drops PKCE",
        back="narrows",
    ),
    Case(
        "dynamic client registration",
        _at("registration/dynamic_client_registration", True),
        "registration",
        "widens",
        "dynamic client registration (RFC 7591) now accepted",
        back="narrows",
    ),
    Case(
        "registration open to every tenant",
        _at("registration/tenants", ...),
        "registration",
        "widens",
        "users of any tenant may now use self-registered clients (it was limited to acme)",
        back="narrows",
    ),
    Case(
        "registration scope",
        _at("registration/resources/tools", ["tools:search", "tools:tickets"]),
        "registration",
        "widens",
        "self-registered clients may now request tools:tickets on tools",
        back="narrows",
    ),
    Case(
        "registration lifetime",
        _at("registration/max_lifetime", "5m"),
        "lifetime",
        "narrows",
        "the lifetime of tokens for self-registered clients goes from 10m to 5m",
        back="widens",
    ),
    Case(
        "signing custody",
        _at("identity/signing/custody", "kms-sign"),
        "signing",
        "narrows",
        "the signing key now stays in KMS",
        back="widens",
    ),
    Case(
        "signing algorithm",
        _at("identity/signing/algorithm", "ES256"),
        "signing",
        "neutral",
        "tokens are now signed with ES256 instead of RS256",
    ),
    Case(
        "issuer",
        _at("identity/issuer", "https://id.acme.example.com"),
        "identity",
        "neutral",
        "the issuer goes from the server's own URL to https://id.acme.example.com",
    ),
    Case(
        "deny rule removed",
        _drop_rule("globex-no-crm-writes"),
        "policy.rule",
        "widens",
        "policy rule globex-no-crm-writes (deny) removed",
        back="narrows",
    ),
    Case(
        "approval rule removed",
        _drop_rule("crm-write-needs-approval"),
        "policy.rule",
        "widens",
        "policy rule crm-write-needs-approval (require approval) removed",
        back="narrows",
    ),
    Case(
        "rule added",
        _add_rule(
            {
                "id": "no-exports",
                "description": "No tickets from Globex",
                "effect": "deny",
                "match": {"tenants": ["globex"], "scopes": ["tools:tickets"]},
            }
        ),
        "policy.rule",
        "narrows",
        "policy rule no-exports (deny) added: No tickets from Globex",
        back="widens",
    ),
    Case(
        "deny rule covers another tenant",
        _match("globex-no-crm-writes", tenants=["globex", "acme"]),
        "policy.rule",
        "narrows",
        "policy rule globex-no-crm-writes now also applies to tenant acme",
        back="widens",
    ),
    Case(
        "deny rule covers every tenant",
        _match("globex-no-crm-writes", tenants=None),
        "policy.rule",
        "narrows",
        "policy rule globex-no-crm-writes now applies to any tenant "
        "(it applied only to tenants globex)",
        back="widens",
    ),
    Case(
        "approval rule for machines too",
        _match("crm-write-needs-approval", subject="any"),
        "policy.rule",
        "narrows",
        "policy rule crm-write-needs-approval now also applies to agents acting as themselves",
        back="widens",
    ),
    Case(
        "lifetime cap longer",
        _rule("crm-machine-tokens-short", max_lifetime="5m"),
        "policy.rule",
        "widens",
        "the lifetime cap of policy rule crm-machine-tokens-short goes from 2m to 5m",
        back="narrows",
    ),
    Case(
        "rule description",
        _rule("crm-machine-tokens-short", description="Short machine tokens"),
        "policy.rule",
        "neutral",
        "the description of policy rule crm-machine-tokens-short changes",
    ),
    Case(
        "dev user added",
        _at("dev_users/erin", {"name": "Erin", "tenant": "globex", "groups": []}),
        "dev_user",
        "neutral",
        "dev user erin added, in tenant globex, for fleetid serve",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_change_has_its_effect(case: Case, tmp_path: Path) -> None:
    base, head = edited(tmp_path, case.edit)

    result = diff_revisions(base, head)

    found = [
        change
        for change in result.changes
        if change.kind == case.kind and case.words in change.summary
    ]
    assert found, [f"{c.kind} {c.effect}: {c.summary}" for c in result.changes]
    assert {change.effect for change in found} == {case.effect}

    if case.back is not None:
        undone = diff_revisions(head, base)
        assert case.back in {
            change.effect for change in undone.changes if change.kind == case.kind
        }


def test_a_rule_that_changes_effect_is_one_rule_lifted_and_another_imposed(
    tmp_path: Path,
) -> None:
    base, head = edited(tmp_path, _rule("globex-no-crm-writes", effect="require_approval"))

    result = diff_revisions(base, head)

    rule_changes = {(c.effect, c.summary) for c in result.changes if c.kind == "policy.rule"}
    assert (
        "widens",
        "policy rule globex-no-crm-writes (deny) removed: No agent writes to the "
        "CRM on behalf of Globex users",
    ) in rule_changes
    assert any(
        effect == "narrows" and "(require approval) added" in summary
        for effect, summary in rule_changes
    )
    # Approval is a step, not a wall: the Globex sales managers can now get crm:write.
    assert AccessTuple("sales-assistant", "crm", "crm:write", "sales-manager", "globex") in (
        result.added
    )


def test_changes_that_move_access_show_it(tmp_path: Path) -> None:
    base, head = edited(
        tmp_path,
        _drop_rule("globex-no-crm-writes"),
        _agent("finance-reporter", tenants=[], redirect_uris=[]),
    )

    result = diff_revisions(base, head)

    assert result.added == (
        AccessTuple("sales-assistant", "crm", "crm:write", "sales-manager", "globex"),
    )
    assert {entry.agent for entry in result.removed} == {"finance-reporter"}
    assert {entry.tenant for entry in result.removed} == {"acme"}


def test_a_narrowing_edit_that_adds_access_still_counts_as_widening(tmp_path: Path) -> None:
    def deny_sales_writes(fleet: Document, policies: Policies) -> None:
        policies["sales.yaml"] = {
            "version": 1,
            "rules": [
                {
                    "id": "no-sales-writes",
                    "description": "Sales people do not write",
                    "effect": "deny",
                    "match": {"roles": ["sales"], "scopes": ["crm:write"]},
                }
            ],
        }

    fleet, policies = example()
    deny_sales_writes(fleet, policies)
    base = compiled(tmp_path / "base", fleet, policies)
    # Taking `sales` away from the managers' group narrows the map, but frees the group from
    # the rule that denied anyone holding `sales`: its managers can now write.
    fleet["tenants"]["acme"]["groups"]["Sales Managers"] = ["sales-manager"]
    head = compiled(tmp_path / "head", fleet, policies)

    result = diff_revisions(base, head)

    assert {change.effect for change in result.changes} == {"narrows"}
    assert AccessTuple("sales-assistant", "crm", "crm:write", "sales-manager", "acme") in (
        result.added
    )
    assert result.widens
    assert verdict(result).startswith("Widens access in 1 way, narrows it in")


def test_equal_fleets_written_differently_have_no_change(tmp_path: Path) -> None:
    fleet, policies = example()
    base = compiled(tmp_path / "base", fleet, policies)
    shuffled = dict(reversed(list(fleet.items())))
    shuffled["agents"]["sales-assistant"]["scopes"]["crm"].reverse()
    renamed = {f"renamed-{name}": document for name, document in policies.items()}
    head = compiled(tmp_path / "head", shuffled, renamed)

    result = diff_revisions(base, head)

    assert result.unchanged
    assert not result.widens
    assert verdict(result) == "No change to access."
    assert diff_json(result)["changes"] == []
    assert "No other change." in render_text(result)


def test_a_display_name_is_one_neutral_change_named_by_its_pointer(tmp_path: Path) -> None:
    base, head = edited(tmp_path, _at("tenants/acme/display_name", "Acme"))

    result = diff_revisions(base, head)

    assert result.changes == (
        Change(
            "tenant",
            "/tenants/acme/display_name",
            "neutral",
            "the display name of tenant acme changes",
        ),
    )


# -- Output ----------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> FleetDiff:
    """A diff that widens, narrows and changes something neutral."""
    base, head = edited(
        tmp_path,
        _drop_rule("globex-no-crm-writes"),
        _at("identity/tokens/access_token", "1h"),
        _agent("finance-reporter", tenants=[], redirect_uris=[]),
        _at("roles/auditor", {"description": "Audits"}),
    )
    return diff_revisions(base, head)


def test_verdict_counts_widenings_and_narrowings(mixed: FleetDiff) -> None:
    assert verdict(mixed) == "Widens access in 2 ways, narrows it in 2 ways."
    assert mixed.ways_widened == 2
    assert mixed.ways_narrowed == 2


def test_verdict_for_one_way() -> None:
    widening = Change("agent", "/agents/a", "widens", "agent a added")
    narrowing = Change("agent", "/agents/b", "narrows", "agent b removed")

    assert verdict(FleetDiff("x", "y", (), (), (widening,))) == "Widens access in 1 way."
    assert verdict(FleetDiff("x", "y", (), (), (narrowing,))) == "Narrows access in 1 way."
    assert verdict(FleetDiff("x", "y", (), (), ())) == "No change to access."


def test_markdown_opens_with_the_verdict_and_puts_widenings_first(mixed: FleetDiff) -> None:
    text = render_markdown(mixed)
    lines = text.splitlines()

    assert lines[0] == "**Widens access in 2 ways, narrows it in 2 ways.**"
    widens, narrows, other = (
        text.index("### Widens access"),
        text.index("### Narrows access"),
        text.index("### Other changes"),
    )
    assert widens < narrows < other
    assert text.index("Access added") < narrows < text.index("Access removed") < other
    assert "| sales-assistant | crm | crm:write | sales-manager | globex |" in lines
    assert "- the access token lifetime goes from 15m to 1h" in lines


def test_markdown_groups_and_caps_long_tables() -> None:
    added = tuple(
        AccessTuple(f"agent-{index:04}", "crm", "crm:read", role, tenant)
        for index in range(MARKDOWN_TABLE_ROWS + 30)
        for role in ("sales", "support")
        for tenant in ("acme", "globex", None)
    )
    changes = tuple(
        Change("agent", f"/agents/agent-{index:04}", "widens", f"agent agent-{index:04} added")
        for index in range(MARKDOWN_LIST_ITEMS + 5)
    )

    text = render_markdown(FleetDiff("a" * 64, "b" * 64, added, (), changes))

    assert text.splitlines()[0] == f"**Widens access in {MARKDOWN_LIST_ITEMS + 5} ways.**"
    # Tenants that hold a scope through the same roles share a row; the agent itself has one.
    assert "| agent-0000 | crm | crm:read | sales, support | acme, globex |" in text
    assert "| agent-0000 | crm | crm:read | sales, support | _the agent itself_ |" in text
    rows = [line for line in text.splitlines() if line.startswith("| agent-")]
    assert len(rows) == MARKDOWN_TABLE_ROWS
    assert f"_… and {2 * (MARKDOWN_TABLE_ROWS + 30) - MARKDOWN_TABLE_ROWS} more rows_" in text
    assert "- _… and 5 more_" in text
    assert f"Access added: {len(added):,} grants" in text


def test_markdown_makes_names_inert() -> None:
    added = (AccessTuple("a", "r", "x|y*<b>", "role", "t"),)
    change = Change("tenant.group", "/t", "widens", 'IdP group "<img src=x>" added')

    text = render_markdown(FleetDiff("a" * 64, "b" * 64, added, (), (change,)))

    assert "x\\|y\\*\\<b\\>" in text
    assert "\\<img src=x\\>" in text
    assert not re.search(r"(?<!\\)<img", text)


def test_text_lists_every_change_and_access_row(mixed: FleetDiff) -> None:
    text = render_text(mixed)

    assert text.splitlines()[1] == "Widens access in 2 ways, narrows it in 2 ways."
    assert "  + the access token lifetime goes from 15m to 1h" in text
    assert (
        "    + sales-assistant -> crm crm:write, for users of tenant globex, "
        "by role sales-manager" in text
    )
    assert "  - agent finance-reporter no longer serves users of tenant acme" in text
    assert "  * role auditor added" in text
    assert text.index("Widens access:") < text.index("Narrows access:") < text.index("Other")


def test_json_shape_and_order(mixed: FleetDiff) -> None:
    document = json.loads(json.dumps(diff_json(mixed)))

    assert set(document) == {"revision", "access", "changes"}
    assert set(document["revision"]) == {"base", "head"}
    assert re.fullmatch(r"[0-9a-f]{64}", document["revision"]["base"])
    assert set(document["access"]) == {"added", "removed"}
    for entry in document["access"]["added"] + document["access"]["removed"]:
        assert list(entry) == ["agent", "resource", "scope", "role", "tenant"]
    assert document["access"]["added"] == [
        {
            "agent": "sales-assistant",
            "resource": "crm",
            "scope": "crm:write",
            "role": "sales-manager",
            "tenant": "globex",
        }
    ]
    removed = document["access"]["removed"]
    assert removed == sorted(
        removed,
        key=lambda e: (
            e["agent"],
            e["resource"],
            e["scope"],
            e["role"],
            e["tenant"] is not None,
            e["tenant"] or "",
        ),
    )

    changes = document["changes"]
    assert all(set(change) == {"kind", "id", "effect", "summary"} for change in changes)
    rank = {"widens": 0, "narrows": 1, "neutral": 2}
    keys = [(rank[c["effect"]], c["kind"], c["id"], c["summary"]) for c in changes]
    assert keys == sorted(keys)
    assert {
        "kind": "lifetime",
        "id": "/identity/tokens/access_token",
        "effect": "widens",
        "summary": "the access token lifetime goes from 15m to 1h",
    } in changes
    assert {
        "kind": "policy.rule",
        "id": "globex-no-crm-writes",
        "effect": "widens",
        "summary": "policy rule globex-no-crm-writes (deny) removed: No agent writes to "
        "the CRM on behalf of Globex users",
    } in changes


def test_machine_access_has_a_null_tenant_and_sorts_first(tmp_path: Path) -> None:
    base, head = edited(
        tmp_path, _agent("crm-reconciler", roles=["crm-sync", "sales-manager"], tenants=["acme"])
    )

    added = diff_json(diff_revisions(base, head))["access"]["added"]

    write = [e for e in added if e["scope"] == "crm:write"]
    assert write == [
        {
            "agent": "crm-reconciler",
            "resource": "crm",
            "scope": "crm:write",
            "role": "sales-manager",
            "tenant": None,
        },
        {
            "agent": "crm-reconciler",
            "resource": "crm",
            "scope": "crm:write",
            "role": "sales-manager",
            "tenant": "acme",
        },
    ]


# -- The command line ------------------------------------------------------------------


def two_fleets(tmp_path: Path, *edits: Edit) -> tuple[Path, Path]:
    fleet, policies = example()
    base = write_fleet(tmp_path / "base", fleet, policies)
    for edit in edits:
        edit(fleet, policies)
    return base, write_fleet(tmp_path / "head", fleet, policies)


def test_cli_diffs_two_files(tmp_path: Path, run: Callable[..., Run]) -> None:
    base, head = two_fleets(tmp_path, _drop_rule("globex-no-crm-writes"))

    text = run("diff", base, head)
    markdown = run("diff", base, head, "--format", "markdown")
    document = run("diff", base, head, "--format", "json")

    assert (text.code, markdown.code, document.code) == (0, 0, 0)
    assert text.out.splitlines()[1] == "Widens access in 1 way."
    assert markdown.out.startswith("**Widens access in 1 way.**\n")
    assert json.loads(document.out)["access"]["added"][0]["tenant"] == "globex"


def test_cli_fail_on_widens(tmp_path: Path, run: Callable[..., Run]) -> None:
    base, head = two_fleets(tmp_path, _drop_rule("globex-no-crm-writes"))

    widening = run("diff", base, head, "--fail-on", "widens")
    narrowing = run("diff", head, base, "--fail-on", "widens")
    same = run("diff", base, base, "--fail-on", "widens")

    assert widening.code == 3
    assert "widens access" in widening.err
    assert "Widens access in 1 way." in widening.out
    assert narrowing.code == 0
    assert "Narrows access in 1 way." in narrowing.out
    assert same.code == 0
    assert "No change to access." in same.out


def test_cli_reports_an_invalid_side_with_positions(
    tmp_path: Path, run: Callable[..., Run]
) -> None:
    base, head = two_fleets(tmp_path, _agent("support-triage", tenants=["acme", "nowhere"]))

    result = run("diff", base, head)

    assert result.code == 2
    assert result.out == ""
    assert re.search(
        rf"^{re.escape(str(head))}:\d+:\d+: error: unknown tenant 'nowhere'", result.err, re.M
    )


def test_cli_reports_both_invalid_sides(tmp_path: Path, run: Callable[..., Run]) -> None:
    base = tmp_path / "a" / "fleet.yaml"
    head = tmp_path / "b" / "fleet.yaml"
    for path in (base, head):
        path.parent.mkdir()
        path.write_text("version: 1\nidentity: {name: x}\nagents: {a: {runtime: nope}}\n")

    result = run("diff", base, head, "--format", "json")

    assert result.code == 2
    files = {problem["file"] for problem in json.loads(result.err)}
    assert files == {str(base), str(head)}


@pytest.mark.parametrize(
    "args",
    [("diff",), ("diff", "only-one"), ("diff", "--base", "main", "a", "b")],
    ids=["nothing", "one side", "both forms"],
)
def test_cli_usage_errors(args: tuple[str, ...], run: Callable[..., Run]) -> None:
    assert run(*args).code == 2


# -- Git revisions ---------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=environment, capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A git repository holding the example fleet in one commit; the current directory."""
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(REPO / "fleet.yaml", folder / "fleet.yaml")
    shutil.copytree(REPO / "policies", folder / "policies")
    git(folder, "init", "-q")
    git(folder, "add", ".")
    git(folder, "commit", "-q", "-m", "the example fleet")
    monkeypatch.chdir(folder)
    yield folder


def edit_file(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_cli_base_compares_a_revision_with_the_working_tree(
    repo: Path, run: Callable[..., Run]
) -> None:
    (repo / "policies" / "tenants.yaml").unlink()
    edit_file(repo / "fleet.yaml", "access_token: 15m", "access_token: 1h")

    result = run("diff", "--base", "HEAD", "--format", "json")

    assert result.code == 0, result.err
    document = json.loads(result.out)
    summaries = {change["summary"] for change in document["changes"]}
    assert "the access token lifetime goes from 15m to 1h" in summaries
    assert any("globex-no-crm-writes (deny) removed" in summary for summary in summaries)
    assert document["access"]["added"]


def test_cli_diffs_two_revisions(repo: Path, run: Callable[..., Run]) -> None:
    edit_file(
        repo / "fleet.yaml",
        "    tenants: [acme]\n  crm-reconciler",
        "    tenants: [acme, globex]\n  crm-reconciler",
    )
    git(repo, "commit", "-q", "-am", "finance serves globex")

    result = run("diff", "HEAD~1", "HEAD", "--fail-on", "widens")

    assert result.code == 3
    assert "+ agent finance-reporter now serves users of tenant globex" in result.out


def test_cli_reads_a_fleet_in_a_subfolder_at_a_revision(
    repo: Path, run: Callable[..., Run]
) -> None:
    folder = repo / "fleets" / "prod"
    folder.mkdir(parents=True)
    git(repo, "mv", "fleet.yaml", "policies", "fleets/prod/")
    git(repo, "commit", "-q", "-m", "move")
    edit_file(
        folder / "fleet.yaml",
        "dynamic_client_registration: false",
        "dynamic_client_registration: true",
    )

    result = run("diff", "--base", "HEAD", "--fleet", "fleets/prod/fleet.yaml")

    assert result.code == 0, result.err
    assert "dynamic client registration (RFC 7591) now accepted" in result.out


def test_cli_reports_an_unknown_revision(repo: Path, run: Callable[..., Run]) -> None:
    result = run("diff", "--base", "no-such-branch")

    assert result.code == 2
    assert "no-such-branch:fleet.yaml:1:1: error: git:" in result.err


def test_cli_reports_an_invalid_revision(repo: Path, run: Callable[..., Run]) -> None:
    edit_file(repo / "fleet.yaml", "runtime: vertex", "runtime: nowhere")
    git(repo, "commit", "-q", "-am", "broken")
    edit_file(repo / "fleet.yaml", "runtime: nowhere", "runtime: vertex")

    result = run("diff", "--base", "HEAD")

    assert result.code == 2
    assert re.search(r"^HEAD:fleet\.yaml:\d+:\d+: error: must be ", result.err, re.M)
