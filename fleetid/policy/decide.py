"""The issuance decision: which of the requested scopes a token may carry, and for how long.

`decide` is a pure function of a revision and a request; it does no I/O and reads no
clock, so the server, `explain` and the property tests all get the same answer for the
same input. Its structure is what makes escalation impossible:

- fleet.yaml only allows: a scope is granted only if the resource defines it, the agent
  lists it, and a role the subject holds is among the scope's roles;
- a user's roles come only from their tenant's group map, and a user is served only by
  agents that serve their tenant; an agent acting as itself has only its own roles;
- policies only restrict: a matching `deny` refuses, a `require_approval` (or a scope's
  own `requires_approval`) refuses until a person approved that scope, a `cap_lifetime`
  shortens. Nothing in a policy can add a scope.

A refused scope is never in `granted`, whatever the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from fleetid.fleet.compile import CompiledRule, Revision

__all__ = [
    "APPROVAL_REQUIRED",
    "CONNECTION_NOT_ALLOWED",
    "CONNECTION_NOT_LISTED",
    "DENIED",
    "NOT_IN_AGENT_LIST",
    "NO_ROLE",
    "NO_SCOPE_REQUESTED",
    "TENANT_NOT_SERVED",
    "UNKNOWN_AGENT",
    "UNKNOWN_CONNECTION",
    "UNKNOWN_RESOURCE",
    "UNKNOWN_SCOPE",
    "UNKNOWN_TENANT",
    "AccessRequest",
    "Decision",
    "LifetimeCap",
    "Refusal",
    "Subject",
    "decide",
    "decide_connection",
]

UNKNOWN_AGENT: Final = "unknown_agent"
UNKNOWN_RESOURCE: Final = "unknown_resource"
UNKNOWN_TENANT: Final = "unknown_tenant"
TENANT_NOT_SERVED: Final = "tenant_not_served"
UNKNOWN_SCOPE: Final = "unknown_scope"
NOT_IN_AGENT_LIST: Final = "not_in_agent_list"
NO_ROLE: Final = "no_role"
DENIED: Final = "denied"
APPROVAL_REQUIRED: Final = "approval_required"
NO_SCOPE_REQUESTED: Final = "no_scope_requested"


@dataclass(frozen=True, slots=True)
class Subject:
    """The person a delegated token is for: who, in which tenant, in which IdP groups."""

    user: str
    tenant: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """An agent asking for scopes on a resource, for a user or (no subject) for itself.

    `approved` names scopes a person has approved for this request; only those pass an
    approval requirement.
    """

    agent: str
    resource: str
    scopes: tuple[str, ...]
    subject: Subject | None = None
    approved: frozenset[str] = field(default_factory=frozenset)


class Refusal(NamedTuple):
    scope: str
    code: str
    reason: str
    rules: tuple[str, ...] = ()


class LifetimeCap(NamedTuple):
    """Something that shortened the token: a scope's own cap or a policy rule."""

    seconds: int
    source: str
    scope: str


class Decision(NamedTuple):
    revision: str
    request: AccessRequest
    granted: tuple[str, ...]
    refused: tuple[Refusal, ...]
    lifetime: int
    roles: frozenset[str]
    caps: tuple[LifetimeCap, ...] = ()

    @property
    def needs_approval(self) -> tuple[str, ...]:
        """Scopes that a person's approval would turn into grants."""
        return tuple(
            refusal.scope for refusal in self.refused if refusal.code == APPROVAL_REQUIRED
        )

    @property
    def allowed(self) -> bool:
        return bool(self.granted)


def _refuse_all(
    revision: Revision, request: AccessRequest, code: str, reason: str, lifetime: int
) -> Decision:
    # An empty request gets one refusal, naming no scope, that says why.
    scopes = tuple(dict.fromkeys(request.scopes)) or ("",)
    refused = tuple(Refusal(scope, code, reason) for scope in scopes)
    return Decision(revision.hash, request, (), refused, lifetime, frozenset())


def decide(revision: Revision, request: AccessRequest) -> Decision:
    agent_name = request.agent
    agent = revision.agents.get(agent_name)
    if agent is None:
        return _refuse_all(
            revision, request, UNKNOWN_AGENT, f"no agent {agent_name!r} in this fleet", 0
        )
    scopes = revision.scopes.get(request.resource)
    if scopes is None:
        return _refuse_all(
            revision,
            request,
            UNKNOWN_RESOURCE,
            f"no resource {request.resource!r} in this fleet",
            0,
        )
    if not request.scopes:
        return _refuse_all(revision, request, NO_SCOPE_REQUESTED, "no scope was requested", 0)

    subject = request.subject
    tenant: str | None = None
    if subject is None:
        roles = agent.roles
    else:
        tenant = subject.tenant
        if tenant not in revision.group_roles:
            return _refuse_all(
                revision, request, UNKNOWN_TENANT, f"no tenant {tenant!r} in this fleet", 0
            )
        if tenant not in agent.tenants:
            return _refuse_all(
                revision,
                request,
                TENANT_NOT_SERVED,
                f"agent {agent_name!r} does not serve tenant {tenant!r}",
                0,
            )
        roles = revision.roles_of(tenant, subject.groups)

    is_user = subject is not None
    listed = agent.scopes.get(request.resource, _NOTHING)
    granted: list[str] = []
    refused: list[Refusal] = []
    caps: list[LifetimeCap] = []
    lifetime = revision.fleet.identity.tokens.access_token
    requested = request.scopes if len(request.scopes) == 1 else dict.fromkeys(request.scopes)

    for scope in requested:
        entry = scopes.get(scope)
        if entry is None:
            refused.append(
                Refusal(
                    scope, UNKNOWN_SCOPE, f"resource {request.resource!r} defines no such scope"
                )
            )
            continue
        if scope not in listed:
            refused.append(Refusal(scope, NOT_IN_AGENT_LIST, _not_listed_reason(agent_name)))
            continue
        if entry.roles.isdisjoint(roles):
            refused.append(Refusal(scope, NO_ROLE, _no_role_reason(entry.roles, is_user)))
            continue

        rules = entry.user_rules if is_user else entry.machine_rules
        denials, approvals, rule_caps = (
            _applying(rules, agent_name, tenant, roles, is_user) if rules else _NO_RULES
        )
        if denials:
            refused.append(
                Refusal(scope, DENIED, f"denied by policy {', '.join(denials)}", denials)
            )
            continue
        if (entry.requires_approval or approvals) and scope not in request.approved:
            refused.append(
                Refusal(scope, APPROVAL_REQUIRED, _approval_reason(approvals), approvals)
            )
            continue

        granted.append(scope)
        if entry.max_lifetime is not None:
            caps.append(LifetimeCap(entry.max_lifetime, f"scope {scope}", scope))
            lifetime = min(lifetime, entry.max_lifetime)
        for rule in rule_caps:
            assert rule.max_lifetime is not None
            caps.append(LifetimeCap(rule.max_lifetime, f"policy {rule.id}", scope))
            lifetime = min(lifetime, rule.max_lifetime)

    return Decision(
        revision.hash,
        request,
        tuple(granted),
        tuple(refused),
        lifetime if granted else 0,
        roles,
        tuple(caps),
    )


_NOTHING: frozenset[str] = frozenset()
_NO_RULES: tuple[tuple[str, ...], tuple[str, ...], tuple[CompiledRule, ...]] = ((), (), ())


def _applying(
    rules: tuple[CompiledRule, ...],
    agent: str,
    tenant: str | None,
    roles: frozenset[str],
    is_user: bool,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[CompiledRule, ...]]:
    """One pass over the rules that cover a scope for this kind of subject: the ids of the
    denials and approvals that apply, and the lifetime caps that do."""
    denials: list[str] = []
    approvals: list[str] = []
    caps: list[CompiledRule] = []
    for rule in rules:
        if not rule.applies(agent, tenant, roles, is_user):
            continue
        if rule.effect == "deny":
            denials.append(rule.id)
        elif rule.effect == "require_approval":
            approvals.append(rule.id)
        else:
            caps.append(rule)
    return tuple(denials), tuple(approvals), tuple(caps)


def _not_listed_reason(agent: str) -> str:
    return f"agent {agent!r} may never request it: it is not in the agent's scopes in fleet.yaml"


# Most refusals are for want of a role, and a fleet has few distinct sets of roles a scope
# allows: the sentence for each is written once.
@functools.lru_cache(maxsize=1024)
def _no_role_reason(allowed_roles: frozenset[str], is_user: bool) -> str:
    holders = ", ".join(sorted(allowed_roles))
    if is_user:
        return f"the user holds none of the roles that may hold it ({holders})"
    return f"the agent, acting as itself, holds none of the roles that may hold it ({holders})"


def _approval_reason(rules: tuple[str, ...]) -> str:
    if rules:
        return f"needs a person's approval (policy {', '.join(rules)})"
    return "needs a person's approval (the scope requires it)"


CONNECTION_NOT_LISTED: Final = "connection_not_listed"
CONNECTION_NOT_ALLOWED: Final = "connection_not_allowed"
UNKNOWN_CONNECTION: Final = "unknown_connection"


def decide_connection(
    revision: Revision, agent_name: str, connection: str, subject: Subject | None
) -> Decision:
    """Whether an agent may fetch a connection's credential, for a user or for itself.

    The same structure as `decide`: the agent must list the connection, and the
    connection's `allowed` agents, tenants and roles (each absent selector allowing any)
    must all admit the request; a user's roles come from their tenant's group map only.
    The request's resource is the connection's URN and its one "scope" the connection.
    """
    urn = f"urn:fleetid:connection:{connection}"
    request = AccessRequest(agent_name, urn, (connection,), subject)
    agent = revision.fleet.agents.get(agent_name)
    if agent is None:
        return _refuse_all(revision, request, UNKNOWN_AGENT, f"no agent {agent_name!r}", 0)
    definition = revision.fleet.connections.get(connection)
    if definition is None:
        return _refuse_all(
            revision, request, UNKNOWN_CONNECTION, f"no connection {connection!r}", 0
        )

    if subject is None:
        roles = revision.agents[agent_name].roles
        tenant = None
    else:
        tenant = subject.tenant
        if tenant not in agent.tenants:
            return _refuse_all(
                revision,
                request,
                TENANT_NOT_SERVED,
                f"agent {agent_name!r} does not serve tenant {tenant!r}",
                0,
            )
        roles = revision.roles_of(tenant, subject.groups)

    allowed = definition.allowed
    reason: tuple[str, str] | None = None
    if connection not in agent.connections:
        reason = (
            CONNECTION_NOT_LISTED,
            f"agent {agent_name!r} does not list connection {connection!r} in fleet.yaml",
        )
    elif allowed.agents is not None and agent_name not in allowed.agents:
        reason = (CONNECTION_NOT_ALLOWED, f"the connection does not allow agent {agent_name!r}")
    elif allowed.tenants is not None and tenant not in allowed.tenants:
        who = f"tenant {tenant!r}" if tenant else "an agent acting as itself"
        reason = (CONNECTION_NOT_ALLOWED, f"the connection does not allow {who}")
    elif allowed.roles is not None and roles.isdisjoint(allowed.roles):
        holders = ", ".join(sorted(allowed.roles))
        reason = (
            CONNECTION_NOT_ALLOWED,
            f"{'the user' if subject else 'the agent'} holds none of the roles that may use "
            f"it ({holders})",
        )
    elif definition.kind == "oauth" and subject is None:
        reason = (
            CONNECTION_NOT_ALLOWED,
            "an OAuth connection holds a person's account: it is fetched for a user, "
            "not by an agent acting as itself",
        )
    if reason is not None:
        return Decision(revision.hash, request, (), (Refusal(connection, *reason),), 0, roles)
    return Decision(revision.hash, request, (connection,), (), 0, roles)
