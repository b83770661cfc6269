"""Compiling a validated fleet into an immutable, content-hashed directory revision.

The revision is what every other part reads: the decision function, `explain`, `diff`,
the server and the Pulumi program. It holds the validated model, the policy rules with
their patterns already resolved against the fleet's agents and scopes, and the indexes a
decision needs, so that deciding never scans the fleet.

The hash covers meaning only. It is the SHA-256 of a canonical JSON form in which
mappings are sorted, defaults are filled in, lists that are sets are sorted and rules are
ordered by id; so key order, comments, whitespace, the order of set-like lists and the
names of policy files do not change it, while any change of meaning does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from fleetid.fleet.load import FleetSources, LoadedFleet, load, paused_gc
from fleetid.fleet.model import (
    CANONICAL,
    ApprovalRule,
    DenyRule,
    Fleet,
    LifetimeRule,
    PolicyFile,
)
from fleetid.fleet.semantics import connection_urn

__all__ = [
    "AgentEntry",
    "CompiledRule",
    "Revision",
    "ScopeEntry",
    "canonical_json",
    "compile_fleet",
    "compile_sources",
]

Effect = Literal["deny", "require_approval", "cap_lifetime"]
SubjectKind = Literal["any", "user", "machine"]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A policy rule with every pattern resolved: `None` means "any"."""

    id: str
    file: str
    effect: Effect
    description: str
    max_lifetime: int | None
    resources: frozenset[str] | None
    scopes: frozenset[str] | None
    scope_patterns: tuple[str, ...] | None
    agents: frozenset[str] | None
    tenants: frozenset[str] | None
    roles: frozenset[str] | None
    subject: SubjectKind

    def applies(
        self, agent: str, tenant: str | None, roles: frozenset[str], is_user: bool
    ) -> bool:
        """Whether the rule covers a request whose resource and scope it already covers."""
        if self.subject == "user" and not is_user:
            return False
        if self.subject == "machine" and is_user:
            return False
        if self.agents is not None and agent not in self.agents:
            return False
        if self.tenants is not None and tenant not in self.tenants:
            return False
        return self.roles is None or not self.roles.isdisjoint(roles)

    def covers(self, resource: str, scope: str) -> bool:
        if self.resources is not None and resource not in self.resources:
            return False
        return self.scopes is None or scope in self.scopes


class ScopeEntry(NamedTuple):
    """What a decision needs to know of one scope, in one lookup."""

    roles: frozenset[str]
    requires_approval: bool
    max_lifetime: int | None
    user_rules: tuple[CompiledRule, ...]
    machine_rules: tuple[CompiledRule, ...]


class AgentEntry(NamedTuple):
    """What a decision needs to know of one agent, in one lookup."""

    scopes: Mapping[str, frozenset[str]]
    tenants: frozenset[str]
    roles: frozenset[str]


@dataclass(frozen=True, eq=False)
class Revision:
    """One immutable compiled fleet. Build it with `compile_fleet`."""

    hash: str
    fleet: Fleet
    policies: Mapping[str, PolicyFile]
    rules: tuple[CompiledRule, ...]
    resource_by_audience: Mapping[str, str]
    connection_by_urn: Mapping[str, str]
    agent_scopes: Mapping[tuple[str, str], frozenset[str]]
    scope_roles: Mapping[tuple[str, str], frozenset[str]]
    group_roles: Mapping[str, Mapping[str, frozenset[str]]]
    rules_for: Mapping[tuple[str, str], tuple[CompiledRule, ...]]
    agent_tenants: Mapping[str, frozenset[str]]
    agent_roles: Mapping[str, frozenset[str]]
    # The decision's own indexes: per agent, and per resource then scope. Plain dicts,
    # held only here and never handed out for writing.
    agents: dict[str, AgentEntry] = field(default_factory=dict, repr=False)
    scopes: dict[str, dict[str, ScopeEntry]] = field(default_factory=dict, repr=False)
    _no_rules: tuple[CompiledRule, ...] = field(default=(), repr=False)

    @property
    def short(self) -> str:
        return self.hash[:12]

    def roles_of(self, tenant: str, groups: tuple[str, ...] | list[str]) -> frozenset[str]:
        """The roles a user holds in a tenant: only through the tenant's group map."""
        mapping = self.group_roles.get(tenant)
        if not mapping:
            return frozenset()
        roles: set[str] = set()
        for group in groups:
            granted = mapping.get(group)
            if granted:
                roles.update(granted)
        return frozenset(roles)

    def rules_covering(self, resource: str, scope: str) -> tuple[CompiledRule, ...]:
        return self.rules_for.get((resource, scope), self._no_rules)

    def summary(self) -> dict[str, Any]:
        fleet = self.fleet
        return {
            "revision": self.hash,
            "name": fleet.identity.name,
            "tenants": len(fleet.tenants),
            "roles": len(fleet.roles),
            "resources": len(fleet.resources),
            "scopes": sum(len(resource.scopes) for resource in fleet.resources.values()),
            "agents": len(fleet.agents),
            "gateways": len(fleet.gateways),
            "connections": len(fleet.connections),
            "policy_rules": len(self.rules),
            "dev_users": len(fleet.dev_users),
        }


def canonical_json(fleet: Fleet, policies: Mapping[str, PolicyFile]) -> str:
    """The form the revision hash is taken of: the model serialised with every default
    filled in, fields in the model's order, mappings sorted by key, set-like lists sorted
    (see `model.SetOf`) and policy rules sorted by id, wherever each was written."""
    context = {CANONICAL: True}
    rules = sorted(
        (rule for policy in policies.values() for rule in policy.rules), key=lambda rule: rule.id
    )
    rendered = ",".join(rule.model_dump_json(context=context) for rule in rules)
    return f'{{"fleet":{fleet.model_dump_json(context=context)},"rules":[{rendered}]}}'


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """One compiled expression for a rule's shell-style patterns."""
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns)).match


def _compile_rule(
    rule: DenyRule | ApprovalRule | LifetimeRule, file: str, fleet: Fleet
) -> CompiledRule:
    match = rule.match
    resources = frozenset(match.resources) if match.resources is not None else None
    scopes: frozenset[str] | None = None
    if match.scopes is not None:
        covered = resources if resources is not None else fleet.resources.keys()
        matches = _matcher(match.scopes)
        scopes = frozenset(
            scope for name in covered for scope in fleet.resources[name].scopes if matches(scope)
        )
    agents: frozenset[str] | None = None
    if match.agents is not None:
        matches = _matcher(match.agents)
        agents = frozenset(name for name in fleet.agents if matches(name))
    return CompiledRule(
        id=rule.id,
        file=file,
        effect=rule.effect,
        description=rule.description,
        max_lifetime=rule.max_lifetime if isinstance(rule, LifetimeRule) else None,
        resources=resources,
        scopes=scopes,
        scope_patterns=tuple(match.scopes) if match.scopes is not None else None,
        agents=agents,
        tenants=frozenset(match.tenants) if match.tenants is not None else None,
        roles=frozenset(match.roles) if match.roles is not None else None,
        subject=match.subject,
    )


def _covered_by(
    rules: tuple[CompiledRule, ...], fleet: Fleet
) -> dict[tuple[str, str], list[CompiledRule]]:
    """The rules covering each (resource, scope), in the order of `rules`: what
    `CompiledRule.covers` says, found from each rule's own resources and scopes rather
    than by asking every rule about every scope."""
    resources_with: dict[str, list[str]] = {}
    for resource_name, resource in fleet.resources.items():
        for scope_name in resource.scopes:
            resources_with.setdefault(scope_name, []).append(resource_name)

    covered: dict[tuple[str, str], list[CompiledRule]] = {}
    for rule in rules:
        if rule.scopes is not None:
            keys = [
                (resource_name, scope_name)
                for scope_name in rule.scopes
                for resource_name in resources_with.get(scope_name, ())
                if rule.resources is None or resource_name in rule.resources
            ]
        else:
            named = fleet.resources.keys() if rule.resources is None else rule.resources
            keys = [
                (resource_name, scope_name)
                for resource_name in named
                if resource_name in fleet.resources
                for scope_name in fleet.resources[resource_name].scopes
            ]
        for key in keys:
            covered.setdefault(key, []).append(rule)
    return covered


def compile_fleet(loaded: LoadedFleet) -> Revision:
    with paused_gc():
        return _compile(loaded)


def _compile(loaded: LoadedFleet) -> Revision:
    fleet, policies = loaded.fleet, loaded.policies
    digest = hashlib.sha256(canonical_json(fleet, policies).encode()).hexdigest()

    rules = tuple(
        sorted(
            (
                _compile_rule(rule, file, fleet)
                for file, policy in policies.items()
                for rule in policy.rules
            ),
            key=lambda rule: rule.id,
        )
    )
    covered = _covered_by(rules, fleet)
    rules_for: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
    scope_roles: dict[tuple[str, str], frozenset[str]] = {}
    for resource_name, resource in fleet.resources.items():
        for scope_name, scope in resource.scopes.items():
            key = (resource_name, scope_name)
            scope_roles[key] = frozenset(scope.roles)
            covering = covered.get(key)
            if covering:
                rules_for[key] = tuple(covering)

    # One set per agent and resource, shared by the per-agent entries and the flat maps.
    agents = {
        name: AgentEntry(
            scopes={resource: frozenset(listed) for resource, listed in agent.scopes.items()},
            tenants=frozenset(agent.tenants),
            roles=frozenset(agent.roles),
        )
        for name, agent in fleet.agents.items()
    }
    group_roles = {
        tenant_name: MappingProxyType(
            {group: frozenset(roles) for group, roles in tenant.groups.items()}
        )
        for tenant_name, tenant in fleet.tenants.items()
    }
    scopes = {
        resource_name: {
            scope_name: ScopeEntry(
                roles=scope_roles[(resource_name, scope_name)],
                requires_approval=scope.requires_approval,
                max_lifetime=scope.max_lifetime,
                user_rules=tuple(
                    rule
                    for rule in rules_for.get((resource_name, scope_name), ())
                    if rule.subject != "machine"
                ),
                machine_rules=tuple(
                    rule
                    for rule in rules_for.get((resource_name, scope_name), ())
                    if rule.subject != "user"
                ),
            )
            for scope_name, scope in resource.scopes.items()
        }
        for resource_name, resource in fleet.resources.items()
    }
    return Revision(
        agents=agents,
        scopes=scopes,
        hash=digest,
        fleet=fleet,
        policies=MappingProxyType(dict(policies)),
        rules=rules,
        resource_by_audience=MappingProxyType(
            {resource.identifier: name for name, resource in fleet.resources.items()}
        ),
        connection_by_urn=MappingProxyType(
            {connection_urn(name): name for name in fleet.connections}
        ),
        agent_scopes=MappingProxyType(
            {
                (name, resource): listed
                for name, entry in agents.items()
                for resource, listed in entry.scopes.items()
            }
        ),
        scope_roles=MappingProxyType(scope_roles),
        group_roles=MappingProxyType(group_roles),
        rules_for=MappingProxyType(rules_for),
        agent_tenants=MappingProxyType({name: entry.tenants for name, entry in agents.items()}),
        agent_roles=MappingProxyType({name: entry.roles for name, entry in agents.items()}),
    )


def compile_sources(sources: FleetSources) -> Revision:
    """Load, validate and compile; raises `FleetInvalid` with every problem."""
    # One pause for both steps: a collection between them would walk everything loaded.
    with paused_gc():
        return compile_fleet(load(sources))
