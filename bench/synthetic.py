"""Synthetic fleets for the benchmarks: large, deterministic and valid.

`generate(spec)` builds a fleet shaped like a real one, from one seed: departments own
resources, each resource defines the same family of scopes (read, write, export, admin...)
held by the roles a department would give them, tenants map their IdP groups to those roles
in the naming style of their IdP (Entra display names, Okta e-mail names, Google group ids),
and agents list a few scopes on a few resources, serve a few tenants, sometimes hold roles
of their own, redirect users back to themselves and, when they run on AgentCore, say which
artifact to run. Policy rules use every effect and every selector, glob patterns included.

`mutate(fleet, fraction)` returns a second fleet that differs from the first the way a busy
pull request would: about `fraction` of the agents added, removed or given other scopes, a
few group maps changed, one scope's lifetime capped, one rule widened and one added.

`SyntheticFleet.write(folder)` writes `fleet.yaml` and `policies/*.yaml` as real files, so
that what the benchmark times includes reading and parsing them.

`python -m bench.synthetic --agents 200 --out DIR` writes one and validates it.
"""

from __future__ import annotations

import argparse
import base64
import copy
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from fleetid.fleet.model import Agent

__all__ = ["FleetSpec", "SyntheticFleet", "generate", "mutate"]

DEPARTMENTS = (
    "sales",
    "support",
    "finance",
    "hr",
    "legal",
    "eng",
    "ops",
    "marketing",
    "security",
    "data",
)
FUNCTIONS = (
    "viewer",
    "editor",
    "admin",
    "approver",
    "analyst",
    "manager",
    "lead",
    "auditor",
    "operator",
    "agent",
)
DOMAINS = (
    "crm",
    "billing",
    "tickets",
    "docs",
    "search",
    "calendar",
    "payroll",
    "ledger",
    "inventory",
    "analytics",
    "wiki",
    "code",
    "deploy",
    "metrics",
    "mail",
)
VERBS = ("read", "write", "list", "search", "create", "update", "delete", "export", "admin")
VERBS += ("approve",)
AGENT_KINDS = (
    "assistant",
    "triage",
    "reporter",
    "reconciler",
    "summarizer",
    "planner",
    "reviewer",
    "router",
    "scheduler",
    "watcher",
)
RUNTIMES = ("agentcore", "vertex", "foundry", "langgraph", "external")
RUNTIME_WEIGHTS = (35, 15, 15, 25, 10)
TAGS = ("prod", "staging", "beta", "internal", "customer-facing", "batch", "eu", "us", "pii")
COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka")
READ_VERBS = ("read", "list", "search")
WRITE_VERBS = ("write", "create", "update")

# Which functions a department gives each kind of scope to.
VERB_FUNCTIONS = {
    "read": ("viewer", "editor", "analyst", "agent", "manager"),
    "list": ("viewer", "editor", "analyst", "agent"),
    "search": ("viewer", "editor", "analyst", "agent", "lead"),
    "write": ("editor", "manager", "operator", "lead"),
    "create": ("editor", "manager", "operator"),
    "update": ("editor", "manager", "operator", "lead"),
    "delete": ("admin", "manager"),
    "export": ("analyst", "auditor"),
    "admin": ("admin",),
    "approve": ("approver", "manager"),
}

# (name, kind, whether only the agents listing it may use it)
CONNECTIONS = (
    ("google-calendar", "oauth", True),
    ("github", "oauth", False),
    ("salesforce", "oauth", True),
    ("slack", "oauth", False),
    ("microsoft-graph", "oauth", False),
    ("reporting", "api_key", True),
    ("weather", "api_key", False),
    ("maps", "api_key", False),
)

SCHEMA_COMMENT = "# yaml-language-server: $schema=fleetid/fleet/schema/fleet.schema.json\n"
POLICY_COMMENT = "# yaml-language-server: $schema=../fleetid/fleet/schema/policy.schema.json\n"


@dataclass(frozen=True)
class FleetSpec:
    """How big a synthetic fleet is, and the seed that makes it the same every time."""

    agents: int = 10_000
    resources: int = 500
    scopes_per_resource: int = 10
    tenants: int = 50
    groups_per_tenant: int = 10
    roles: int = 100
    rules: int = 50
    gateways: int = 5
    seed: int = 20_250_101

    @property
    def scopes(self) -> int:
        return self.resources * self.scopes_per_resource


@dataclass
class _Catalog:
    """What the generator knows about the fleet it is building, to add agents later."""

    roles: list[str] = field(default_factory=list)
    role_parts: dict[str, tuple[str, str]] = field(default_factory=dict)
    role_by_parts: dict[tuple[str, str], str] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)
    resources_of: dict[str, list[str]] = field(default_factory=dict)
    scopes_of: dict[str, list[str]] = field(default_factory=dict)
    scope_roles: dict[str, list[str]] = field(default_factory=dict)
    verbs: tuple[str, ...] = ()
    tenants: list[str] = field(default_factory=list)
    tenants_with_role: dict[str, list[str]] = field(default_factory=dict)
    connections: list[str] = field(default_factory=list)
    next_agent: int = 0


@dataclass
class SyntheticFleet:
    """A fleet as plain data (what `fleet.yaml` and each policy file hold) and its spec."""

    spec: FleetSpec
    fleet: dict[str, Any]
    policies: dict[str, dict[str, Any]]
    catalog: _Catalog = field(repr=False)

    def fleet_yaml(self) -> str:
        header = SCHEMA_COMMENT + (
            f"# A synthetic fleet from bench.synthetic (seed {self.spec.seed}): "
            f"{len(self.fleet['agents'])} agents, {len(self.fleet['resources'])} resources.\n"
        )
        return header + _dump(self.fleet)

    def policy_yaml(self, name: str) -> str:
        return POLICY_COMMENT + _dump(self.policies[name])

    def write(self, folder: str | Path) -> Path:
        """Write fleet.yaml and policies/ into `folder`; return the fleet file's path."""
        root = Path(folder)
        policies = root / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        for stale in policies.glob("*.yaml"):
            stale.unlink()
        fleet_path = root / "fleet.yaml"
        fleet_path.write_text(self.fleet_yaml(), encoding="utf-8")
        for name in self.policies:
            (policies / name).write_text(self.policy_yaml(name), encoding="utf-8")
        return fleet_path

    @property
    def rule_count(self) -> int:
        return sum(len(policy["rules"]) for policy in self.policies.values())


def _dump(document: dict[str, Any]) -> str:
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    # Flow style for lists and mappings of plain values only, as people write them
    # (`tags: [sales, prod]`), block style for everything else.
    text: str = yaml.dump(
        document,
        Dumper=dumper,
        sort_keys=False,
        default_flow_style=None,
        allow_unicode=True,
        width=100,
    )
    return text


class _Generator:
    def __init__(self, spec: FleetSpec, rng: random.Random, catalog: _Catalog) -> None:
        self.spec = spec
        self.rng = rng
        self.catalog = catalog
        self._global_rules = 0

    # Roles, resources and tenants come first; agents refer to them.

    def roles(self) -> dict[str, Any]:
        catalog = self.catalog
        roles: dict[str, Any] = {}
        for index in range(self.spec.roles):
            department = DEPARTMENTS[index % len(DEPARTMENTS)]
            function = FUNCTIONS[(index // len(DEPARTMENTS)) % len(FUNCTIONS)]
            cycle = index // (len(DEPARTMENTS) * len(FUNCTIONS))
            name = f"{department}-{function}" + (f"-{cycle}" if cycle else "")
            catalog.roles.append(name)
            catalog.role_parts[name] = (department, function)
            catalog.role_by_parts.setdefault((department, function), name)
            roles[name] = {"description": f"{function.capitalize()} in {department}"}
        return roles

    def resources(self) -> dict[str, Any]:
        rng, catalog = self.rng, self.catalog
        count = self.spec.scopes_per_resource
        verbs = VERBS[:count] + tuple(f"custom{n}" for n in range(count - len(VERBS)))
        catalog.verbs = verbs
        resources: dict[str, Any] = {}
        for index in range(self.spec.resources):
            domain = DOMAINS[index % len(DOMAINS)]
            name = f"{domain}-{index // len(DOMAINS) + 1}"
            owners = rng.sample(DEPARTMENTS, rng.choice((1, 1, 2)))
            kind = "mcp" if rng.random() < 0.4 else "api"
            identifier = (
                f"https://{name}.tools.example.com/mcp"
                if kind == "mcp"
                else f"https://{name}.api.example.com"
            )
            scopes = {f"{name}:{verb}": self._scope(name, verb, owners) for verb in verbs}
            resource: dict[str, Any] = {
                "kind": kind,
                "identifier": identifier,
                "description": f"{domain.capitalize()} service number {index // len(DOMAINS) + 1}",
            }
            if rng.random() < 0.05:
                resource["signing_algorithm"] = "ES256"
            resource["scopes"] = scopes
            resources[name] = resource
            catalog.resources.append(name)
            catalog.scopes_of[name] = list(scopes)
            for scope_name, scope in scopes.items():
                catalog.scope_roles[scope_name] = scope["roles"]
            for owner in owners:
                catalog.resources_of.setdefault(owner, []).append(name)
        return resources

    def _scope(self, resource: str, verb: str, owners: list[str]) -> dict[str, Any]:
        rng, catalog = self.rng, self.catalog
        functions = VERB_FUNCTIONS.get(verb, ("editor", "admin"))
        roles: list[str] = []
        for owner in owners:
            for function in rng.sample(functions, min(len(functions), rng.randint(1, 3))):
                role = catalog.role_by_parts.get((owner, function))
                if role is not None and role not in roles:
                    roles.append(role)
        if rng.random() < 0.1:
            extra = rng.choice(catalog.roles)
            if extra not in roles:
                roles.append(extra)
        if not roles:
            roles.append(rng.choice(catalog.roles))
        scope: dict[str, Any] = {
            "description": f"{verb.capitalize()} on {resource}",
            "roles": roles,
        }
        if verb in ("delete", "admin") and rng.random() < 0.3:
            scope["requires_approval"] = True
        if verb in WRITE_VERBS and rng.random() < 0.1:
            scope["max_lifetime"] = rng.choice(("5m", "10m", 300))
        return scope

    def tenants(self) -> dict[str, Any]:
        rng, catalog = self.rng, self.catalog
        tenants: dict[str, Any] = {}
        for index in range(self.spec.tenants):
            company = COMPANIES[index % len(COMPANIES)]
            name = f"{company}-{index:02d}"
            catalog.tenants.append(name)
            style = index % 3
            groups: dict[str, list[str]] = {}
            count = min(
                len(catalog.roles), max(1, self.spec.groups_per_tenant + rng.randint(-2, 2))
            )
            for role in rng.sample(catalog.roles, count):
                mapped = self._group_roles(role)
                groups[_group_name(name, role, catalog.role_parts[role], style)] = mapped
                for granted in mapped:
                    catalog.tenants_with_role.setdefault(granted, []).append(name)
            tenant: dict[str, Any] = {"display_name": f"{company.capitalize()} {index}"}
            if rng.random() < 0.8:
                tenant["sso"] = _sso(name, style)
            tenant["groups"] = groups
            tenants[name] = tenant
        return tenants

    def _group_roles(self, role: str) -> list[str]:
        catalog = self.catalog
        roles = [role]
        if self.rng.random() < 0.3:
            department, _ = catalog.role_parts[role]
            other = catalog.role_by_parts.get((department, self.rng.choice(FUNCTIONS)))
            if other is not None and other != role:
                roles.append(other)
        return roles

    def connections(self) -> dict[str, Any]:
        rng, catalog = self.rng, self.catalog
        connections: dict[str, Any] = {}
        for name, kind, restricted in CONNECTIONS:
            catalog.connections.append(name)
            variable = name.upper().replace("-", "_")
            allowed: dict[str, Any] = {}
            if restricted:
                allowed["agents"] = []
            if rng.random() < 0.5:
                allowed["roles"] = rng.sample(catalog.roles, 3)
            if rng.random() < 0.3:
                allowed["tenants"] = rng.sample(catalog.tenants, min(3, len(catalog.tenants)))
            if kind == "oauth":
                connection: dict[str, Any] = {
                    "kind": "oauth",
                    "description": f"A user's own {name} account",
                    "provider": (
                        {
                            "discovery_url": f"https://{name}.example.com/.well-known/openid-configuration"
                        }
                        if rng.random() < 0.5
                        else {
                            "authorization_endpoint": f"https://{name}.example.com/oauth/authorize",
                            "token_endpoint": f"https://{name}.example.com/oauth/token",
                        }
                    ),
                    "client_id": f"fleetid-{name}",
                    "client_secret": {"config": f"{name}-client-secret", "env": f"{variable}_CS"},
                    "scopes": ["openid", f"https://{name}.example.com/auth/read"],
                }
            else:
                connection = {
                    "kind": "api_key",
                    "description": f"The {name} API, which only knows static keys",
                    "header": f"X-{name.capitalize()}-Key",
                    "key": {"config": f"{name}-api-key", "env": f"{variable}_KEY"},
                }
            if allowed:
                connection["allowed"] = allowed
            connections[name] = connection
        return connections

    # Agents.

    def agent(self) -> tuple[str, dict[str, Any]]:
        rng, catalog = self.rng, self.catalog
        index = catalog.next_agent
        catalog.next_agent += 1
        department = rng.choice(DEPARTMENTS)
        kind = rng.choice(AGENT_KINDS)
        name = f"{department}-{kind}-{index:05d}"
        runtime = rng.choices(RUNTIMES, RUNTIME_WEIGHTS)[0]

        own = catalog.resources_of.get(department) or catalog.resources
        picked: list[str] = []
        for _ in range(rng.randint(2, 4)):
            pool = own if rng.random() < 0.7 else catalog.resources
            resource = rng.choice(pool)
            if resource not in picked:
                picked.append(resource)
        scopes = {resource: self._agent_scopes(resource) for resource in picked}

        domains = sorted({resource.rsplit("-", 1)[0] for resource in picked})
        agent: dict[str, Any] = {
            "runtime": runtime,
            "description": f"{kind.capitalize()} for {department}, over {', '.join(domains)}",
            "tags": [department, *rng.sample(TAGS, rng.randint(0, 2))],
            "scopes": scopes,
        }
        if rng.random() < 0.15:
            agent["connections"] = rng.sample(catalog.connections, rng.randint(1, 2))
        if rng.random() < 0.7:
            uris = [f"https://{name}.agents.example.com/oauth/callback"]
            if rng.random() < 0.3:
                uris.append(f"http://127.0.0.1:8765/{name}/callback")
            agent["redirect_uris"] = uris
        agent["tenants"] = self._agent_tenants(scopes)
        if rng.random() < 0.25:
            agent["roles"] = self._agent_roles(department, scopes)
        if rng.random() < 0.1:
            agent["token_endpoint_auth_method"] = "private_key_jwt"
            agent.update(self._public_keys(name))
        if runtime == "agentcore":
            agent["agentcore"] = self._agentcore(name)
        return name, agent

    def _agent_tenants(self, scopes: dict[str, list[str]]) -> list[str]:
        # An agent mostly serves tenants with people whose groups grant what it asks for.
        rng, catalog = self.rng, self.catalog
        count = rng.randint(1, min(5, len(catalog.tenants)))
        fitting = sorted(
            {
                tenant
                for listed in scopes.values()
                for scope in listed
                for role in catalog.scope_roles[scope]
                for tenant in catalog.tenants_with_role.get(role, ())
            }
        )
        tenants = rng.sample(fitting, min(len(fitting), count - (rng.random() < 0.2)))
        while len(tenants) < count:
            tenant = rng.choice(catalog.tenants)
            if tenant not in tenants:
                tenants.append(tenant)
        return tenants

    def _agent_scopes(self, resource: str) -> list[str]:
        available = self.catalog.scopes_of[resource]
        count = min(len(available), self.rng.randint(2, 4))
        return self.rng.sample(available, count)

    def _agent_roles(self, department: str, scopes: dict[str, list[str]]) -> list[str]:
        # An agent that acts as itself mostly holds roles that some of its scopes name,
        # like a sync job given the role its writes need; now and then one they do not.
        catalog = self.catalog
        roles: list[str] = []
        for listed in scopes.values():
            if self.rng.random() < 0.6:
                role = self.rng.choice(catalog.scope_roles[self.rng.choice(listed)])
                if role not in roles:
                    roles.append(role)
        if self.rng.random() < 0.2 or not roles:
            role = catalog.role_by_parts.get((department, "operator")) or self.rng.choice(
                catalog.roles
            )
            if role not in roles:
                roles.append(role)
        return roles

    def _public_keys(self, name: str) -> dict[str, Any]:
        # Older models name a JWKS URL, newer ones hold the JWK Set itself.
        if "jwks" not in Agent.model_fields:
            return {"jwks_uri": f"https://{name}.agents.example.com/.well-known/jwks.json"}
        # A real P-256 key derived from the seed, so the set is the same on every run.
        secret = self.rng.getrandbits(255) | 1
        numbers = ec.derive_private_key(secret, ec.SECP256R1()).public_key().public_numbers()
        key = {
            "kty": "EC",
            "crv": "P-256",
            "kid": f"{name}-1",
            "use": "sig",
            "alg": "ES256",
            "x": _b64(numbers.x),
            "y": _b64(numbers.y),
        }
        return {"jwks": {"keys": [key]}}

    def _agentcore(self, name: str) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.7:
            version = f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
            artifact: dict[str, Any] = {
                "container_uri": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{name}:{version}"
            }
        else:
            artifact = {
                "code": {
                    "bucket": "acme-agent-artifacts",
                    "prefix": f"{name}/v{rng.randint(1, 40)}/",
                    "entry_point": ["opentelemetry-instrument", "main.py"],
                    "runtime": rng.choice(("PYTHON_3_12", "PYTHON_3_13")),
                }
            }
        settings: dict[str, Any] = {"artifact": artifact}
        if rng.random() < 0.2:
            settings["network"] = {
                "mode": "VPC",
                "subnets": [f"subnet-0{rng.getrandbits(64):016x}"],
                "security_groups": [f"sg-0{rng.getrandbits(64):016x}"],
            }
        else:
            settings["network"] = {"mode": "PUBLIC"}
        settings["protocol"] = rng.choices(("HTTP", "MCP", "A2A"), (6, 3, 1))[0]
        settings["environment"] = {
            "LOG_LEVEL": rng.choice(("info", "debug", "warning")),
            "MODEL_ID": rng.choice(
                ("anthropic.claude-sonnet-4", "anthropic.claude-haiku-4", "amazon.nova-pro")
            ),
        }
        return settings

    # What refers to agents comes last.

    def gateways(self, agents: dict[str, Any], resources: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        on_agentcore = [name for name, agent in agents.items() if agent["runtime"] == "agentcore"]
        mcp = [name for name, resource in resources.items() if resource["kind"] == "mcp"]
        if not on_agentcore or not mcp:
            return {}
        gateways: dict[str, Any] = {}
        for index in range(self.spec.gateways):
            targets = rng.sample(mcp, min(len(mcp), rng.randint(1, 3)))
            gateways[f"gateway-{index + 1}"] = {
                "description": f"MCP gateway {index + 1} for AgentCore agents",
                "agents": rng.sample(on_agentcore, min(len(on_agentcore), rng.randint(5, 20))),
                "targets": {
                    target: {
                        "description": f"The {target} MCP server",
                        "endpoint": resources[target]["identifier"],
                        "resource": target,
                    }
                    for target in targets
                },
            }
        return gateways

    def registration(self, resources: dict[str, Any]) -> dict[str, Any]:
        mcp = [name for name, resource in resources.items() if resource["kind"] == "mcp"][:3]
        return {
            "client_id_metadata_documents": True,
            "dynamic_client_registration": False,
            "resources": {name: self.catalog.scopes_of[name][:1] for name in mcp},
            "tenants": self.catalog.tenants[:5],
            "max_lifetime": "10m",
        }

    def dev_users(self, tenants: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        users: dict[str, Any] = {}
        for index in range(10):
            tenant = rng.choice(self.catalog.tenants)
            groups = list(tenants[tenant]["groups"])
            users[f"user-{index}"] = {
                "name": f"Test User {index}",
                "email": f"user{index}@{tenant}.example",
                "tenant": tenant,
                "groups": rng.sample(groups, min(len(groups), rng.randint(1, 2))),
            }
        return users

    # Policies.

    def policies(self, agents: dict[str, Any]) -> dict[str, dict[str, Any]]:
        files: dict[str, list[dict[str, Any]]] = {
            "deny.yaml": [],
            "approvals.yaml": [],
            "lifetimes.yaml": [],
            "tenants.yaml": [],
            "agents.yaml": [],
        }
        names = list(agents)
        effects = ("deny", "require_approval", "cap_lifetime")
        for index in range(self.spec.rules):
            rule = self.rule(effects[index % 3], index, names)
            match = rule.get("match", {})
            if "tenants" in match:
                files["tenants.yaml"].append(rule)
            elif "agents" in match:
                files["agents.yaml"].append(rule)
            else:
                target = {"deny": "deny.yaml", "require_approval": "approvals.yaml"}
                files[target.get(rule["effect"], "lifetimes.yaml")].append(rule)
        return {name: {"version": 1, "rules": rules} for name, rules in files.items() if rules}

    def rule(self, effect: str, index: int, agent_names: list[str]) -> dict[str, Any]:
        rng, catalog = self.rng, self.catalog
        template = rng.randrange(4)
        resources = rng.sample(catalog.resources, min(len(catalog.resources), rng.randint(1, 3)))
        department = rng.choice(DEPARTMENTS)
        match: dict[str, Any]
        if effect == "deny":
            what, match = [
                (
                    "tenant-writes",
                    {"tenants": self._tenants(), "scopes": [f"*:{self._verb(WRITE_VERBS)}"]},
                ),
                ("team-resources", {"agents": [f"{department}-*"], "resources": resources}),
                (
                    "machine-admin",
                    {"subject": "machine", "scopes": [f"*:{self._verb(('admin',))}"]},
                ),
                (
                    "role-domain",
                    {
                        "roles": rng.sample(catalog.roles, 2),
                        "scopes": [
                            f"{_domain(rng.choice(catalog.resources))}-*:{self._verb(WRITE_VERBS)}"
                        ],
                    },
                ),
            ][template]
        elif effect == "require_approval":
            what, match = [
                ("exports", {"resources": resources, "scopes": [f"*:{self._verb(('export',))}"]}),
                (
                    "user-approvals",
                    {"scopes": [f"*:{self._verb(('approve',))}"], "subject": "user"},
                ),
                (
                    "named-agent",
                    {
                        "agents": [rng.choice(agent_names)],
                        "scopes": [f"*:{self._verb(WRITE_VERBS)}"],
                    },
                ),
                (
                    "tenant-roles",
                    {
                        "tenants": self._tenants(),
                        "roles": rng.sample(catalog.roles, 3),
                        "resources": resources,
                    },
                ),
            ][template]
        else:
            what, match = [
                ("machines", {"subject": "machine", **self._narrowed(resources)}),
                ("resources", {"resources": resources}),
                ("tenants", {"tenants": self._tenants(), **self._narrowed(resources)}),
                (
                    "agent-kind",
                    {
                        "agents": [f"{department}-{rng.choice(AGENT_KINDS)}-*"],
                        "scopes": [f"*:{self._verb(WRITE_VERBS)}", f"{resources[0]}:*"],
                    },
                ),
            ][template]
        rule: dict[str, Any] = {
            "id": f"{effect.replace('_', '-')}-{what}-{index:02d}",
            "description": f"Synthetic {effect.replace('_', ' ')} rule {index} ({what})",
            "effect": effect,
        }
        if effect == "cap_lifetime":
            rule["max_lifetime"] = rng.choice(("2m", "5m", "10m", 120))
        rule["match"] = match
        return rule

    def _narrowed(self, resources: list[str]) -> dict[str, Any]:
        # A rule for every scope of the fleet is rare; most name the resources they are for.
        if self._global_rules < 2:
            self._global_rules += 1
            return {}
        return {"resources": resources}

    def _verb(self, preferred: tuple[str, ...]) -> str:
        present = [verb for verb in preferred if verb in self.catalog.verbs]
        return self.rng.choice(present or list(self.catalog.verbs))

    def _tenants(self) -> list[str]:
        return self.rng.sample(self.catalog.tenants, min(len(self.catalog.tenants), 2))


def _b64(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()


def _domain(resource: str) -> str:
    return resource.rsplit("-", 1)[0]


def _group_name(tenant: str, role: str, parts: tuple[str, str], style: int) -> str:
    department, function = parts
    suffix = role.removeprefix(f"{department}-{function}")
    if style == 0:
        return f"{department.capitalize()} {function.capitalize()}s{suffix}"
    if style == 1:
        return f"{department}-{function}{suffix}@{tenant}.example"
    return f"grp-{role}"


def _sso(tenant: str, style: int) -> dict[str, Any]:
    variable = tenant.upper().replace("-", "_")
    issuer = (
        f"https://login.microsoftonline.com/{tenant}-directory/v2.0",
        f"https://{tenant}.okta.example.com/oauth2/default",
        "https://accounts.google.com",
    )[style]
    return {
        "issuer": issuer,
        "client_id": f"fleetid-{tenant}",
        "client_secret": {"config": f"{tenant}-sso-client-secret", "env": f"{variable}_SSO_CS"},
        "groups_claim": "okta_groups" if style == 1 else "groups",
    }


def _finish(fleet: dict[str, Any]) -> None:
    """Make each restricted connection allow exactly the agents that list it."""
    listed_by: dict[str, list[str]] = {}
    for name, agent in fleet["agents"].items():
        for connection in agent.get("connections", ()):
            listed_by.setdefault(connection, []).append(name)
    for name, connection in fleet["connections"].items():
        allowed = connection.get("allowed", {})
        if "agents" in allowed:
            allowed["agents"] = sorted(listed_by.get(name, []))


def generate(spec: FleetSpec | None = None, **sizes: int) -> SyntheticFleet:
    """A synthetic fleet; `generate(agents=50)` is `generate(FleetSpec(agents=50))`."""
    spec = replace(spec or FleetSpec(), **sizes)
    rng = random.Random(spec.seed)
    catalog = _Catalog()
    generator = _Generator(spec, rng, catalog)

    roles = generator.roles()
    resources = generator.resources()
    tenants = generator.tenants()
    connections = generator.connections()
    agents = dict(generator.agent() for _ in range(spec.agents))
    fleet: dict[str, Any] = {
        "version": 1,
        "identity": {
            "name": "synthetic-fleet",
            "display_name": "Synthetic benchmark fleet",
            "tokens": {"access_token": "15m", "refresh_token": "30d", "authorization_code": "60s"},
            "signing": {"algorithm": "RS256", "custody": "kms-wrapped"},
        },
        "tenants": tenants,
        "roles": roles,
        "resources": resources,
        "agents": agents,
        "gateways": generator.gateways(agents, resources),
        "connections": connections,
        "registration": generator.registration(resources),
        "dev_users": generator.dev_users(tenants),
    }
    _finish(fleet)
    return SyntheticFleet(spec, fleet, generator.policies(agents), catalog)


def mutate(
    base: SyntheticFleet, fraction: float = 0.01, *, seed: int | None = None
) -> SyntheticFleet:
    """A second fleet that differs from `base` in about `fraction` of its agents.

    About a third of the changed agents are new, a fifth are removed (only agents nothing
    else names), the rest have scopes added or removed or a resource added or dropped. A
    few tenants' group maps change, one scope gets a shorter lifetime, one rule gains a
    tenant and one new rule is added. `base` is left as it was.
    """
    rng = random.Random(base.spec.seed + 1 if seed is None else seed)
    catalog = copy.deepcopy(base.catalog)
    fleet = copy.deepcopy(base.fleet)
    policies = copy.deepcopy(base.policies)
    generator = _Generator(base.spec, rng, catalog)
    agents: dict[str, Any] = fleet["agents"]

    changed = max(3, round(fraction * len(agents)))
    added, removed = changed // 3, changed // 5
    edited = changed - added - removed

    named = {name for gateway in fleet["gateways"].values() for name in gateway["agents"]}
    for policy in policies.values():
        for rule in policy["rules"]:
            named.update(rule.get("match", {}).get("agents", ()))
    removable = sorted(name for name in agents if name not in named)
    for name in rng.sample(removable, min(removed, len(removable))):
        del agents[name]
    for name in rng.sample(sorted(agents), min(edited, len(agents))):
        _edit_scopes(agents[name], rng, catalog)
    for _ in range(added):
        name, agent = generator.agent()
        agents[name] = agent

    tenants = fleet["tenants"]
    for tenant in rng.sample(
        sorted(tenants), min(len(tenants), max(2, round(len(tenants) * 0.1)))
    ):
        groups = tenants[tenant]["groups"]
        group = rng.choice(sorted(groups))
        role = rng.choice(catalog.roles)
        if rng.random() < 0.5 and role not in groups[group]:
            groups[group].append(role)
        else:
            groups[f"grp-new-{role}"] = [role]

    resource = rng.choice(catalog.resources)
    scope = rng.choice(catalog.scopes_of[resource])
    fleet["resources"][resource]["scopes"][scope]["max_lifetime"] = "2m"

    rules = [rule for policy in policies.values() for rule in policy["rules"]]
    widened = rng.choice(rules)
    match = widened.setdefault("match", {})
    extra = [tenant for tenant in catalog.tenants if tenant not in match.get("tenants", ())]
    if "tenants" in match and extra:
        match["tenants"].append(rng.choice(extra))
    else:
        match["subject"] = "user"
    new_rule = generator.rule("deny", len(rules), sorted(agents))
    new_rule["id"] = f"deny-added-{len(rules)}"
    policies.setdefault("deny.yaml", {"version": 1, "rules": []})["rules"].append(new_rule)

    _finish(fleet)
    return SyntheticFleet(base.spec, fleet, policies, catalog)


def _edit_scopes(agent: dict[str, Any], rng: random.Random, catalog: _Catalog) -> None:
    scopes: dict[str, list[str]] = agent["scopes"]
    resource = rng.choice(sorted(scopes))
    listed = scopes[resource]
    unlisted = [scope for scope in catalog.scopes_of[resource] if scope not in listed]
    choice = rng.random()
    if choice < 0.4 and unlisted:
        listed.append(rng.choice(unlisted))
    elif choice < 0.7 and len(listed) > 1:
        listed.remove(rng.choice(listed))
    elif choice < 0.85 or len(scopes) == 1:
        fresh = [name for name in catalog.resources if name not in scopes]
        if fresh:
            added = rng.choice(fresh)
            scopes[added] = rng.sample(catalog.scopes_of[added], 2)
    else:
        del scopes[resource]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic fleet and validate it.")
    parser.add_argument("--agents", type=int, default=FleetSpec.agents)
    parser.add_argument("--resources", type=int, default=FleetSpec.resources)
    parser.add_argument("--tenants", type=int, default=FleetSpec.tenants)
    parser.add_argument("--seed", type=int, default=FleetSpec.seed)
    parser.add_argument("--mutate", type=float, default=None, help="write the mutation too")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from fleetid.fleet.compile import compile_sources
    from fleetid.fleet.load import FleetInvalid, read_sources

    fleet = generate(
        agents=args.agents, resources=args.resources, tenants=args.tenants, seed=args.seed
    )
    written = [fleet.write(args.out / "base")]
    if args.mutate is not None:
        written.append(mutate(fleet, args.mutate).write(args.out / "head"))
    for path in written:
        try:
            revision = compile_sources(read_sources(path))
        except FleetInvalid as invalid:
            for problem in invalid.problems[:20]:
                print(problem.format(), file=sys.stderr)
            print(f"{path}: {len(invalid.problems)} problems", file=sys.stderr)
            return 2
        print(f"{path}: valid, revision {revision.short}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
