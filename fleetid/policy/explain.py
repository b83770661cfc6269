"""Decisions in words a reviewer understands, and as JSON.

The decision function records codes and short reasons; this module adds the context a
person needs to trust the answer: where the subject's roles came from, why each granted
scope was allowed, which policy rules touched it and what set the token's lifetime.
"""

from __future__ import annotations

from typing import Any

from fleetid.fleet.compile import Revision
from fleetid.fleet.model import format_seconds
from fleetid.policy.decide import Decision

__all__ = ["decision_json", "explain_text", "role_sources"]


def role_sources(revision: Revision, decision: Decision) -> list[tuple[str, list[str]]]:
    """For a user, each of their groups and the roles it maps to in their tenant."""
    subject = decision.request.subject
    if subject is None:
        return []
    mapping = revision.group_roles.get(subject.tenant, {})
    return [(group, sorted(mapping.get(group, frozenset()))) for group in subject.groups]


def _granted_because(revision: Revision, decision: Decision, scope: str) -> list[str]:
    request = decision.request
    holders = sorted(revision.scope_roles[(request.resource, scope)] & decision.roles)
    because = [
        f"agent {request.agent} lists it for {request.resource}",
        f"{'the user' if request.subject else 'the agent'} holds "
        f"{', '.join(holders)}, which may hold it",
    ]
    if scope in request.approved:
        because.append("a person approved it")
    touching = [
        rule.id
        for rule in revision.rules_covering(request.resource, scope)
        if rule.effect == "cap_lifetime"
        and rule.applies(
            request.agent,
            request.subject.tenant if request.subject else None,
            decision.roles,
            request.subject is not None,
        )
    ]
    if touching:
        because.append(f"policy {', '.join(touching)} caps its lifetime")
    return because


def explain_text(revision: Revision, decision: Decision) -> str:
    request = decision.request
    resource = revision.fleet.resources.get(request.resource)
    audience = f" ({resource.identifier})" if resource is not None else ""
    lines = [
        f"agent {request.agent} asks for {' '.join(request.scopes) or 'no scope'} "
        f"on {request.resource}{audience}",
    ]
    subject = request.subject
    if subject is None:
        lines.append("acting as itself (client credentials), by its own roles")
    else:
        groups = ", ".join(subject.groups) or "none"
        lines.append(f"for {subject.user} in tenant {subject.tenant} (IdP groups: {groups})")
    lines.append(f"revision {revision.short}")
    lines.append("")

    roles = ", ".join(sorted(decision.roles)) or "none"
    lines.append(f"roles held: {roles}")
    for group, mapped in role_sources(revision, decision):
        target = ", ".join(mapped) if mapped else "no role (the tenant's map does not name it)"
        lines.append(f"  group {group!r} -> {target}")
    lines.append("")

    for scope in decision.granted:
        lines.append(f"GRANTED  {scope}")
        lines.extend(f"  - {reason}" for reason in _granted_because(revision, decision, scope))
    for refusal in decision.refused:
        label = "PENDING " if refusal.code == "approval_required" else "REFUSED "
        lines.append(f"{label} {refusal.scope or '(none)'}: {refusal.reason}")
    lines.append("")

    if decision.granted:
        default = revision.fleet.identity.tokens.access_token
        binding = [cap for cap in decision.caps if cap.seconds == decision.lifetime]
        if binding and decision.lifetime < default:
            source = ", ".join(sorted({cap.source for cap in binding}))
            lines.append(
                f"token lifetime: {format_seconds(decision.lifetime)} (capped by {source}; "
                f"the default is {format_seconds(default)})"
            )
        else:
            lines.append(f"token lifetime: {format_seconds(decision.lifetime)} (the default)")
        lines.append(f"verdict: a token would carry {' '.join(decision.granted)}")
    else:
        lines.append("verdict: no token; every requested scope is refused")
    return "\n".join(lines)


def decision_json(revision: Revision, decision: Decision) -> dict[str, Any]:
    request = decision.request
    subject = request.subject
    return {
        "revision": decision.revision,
        "agent": request.agent,
        "resource": request.resource,
        "subject": None
        if subject is None
        else {"user": subject.user, "tenant": subject.tenant, "groups": list(subject.groups)},
        "requested": list(request.scopes),
        "granted": [
            {"scope": scope, "because": _granted_because(revision, decision, scope)}
            for scope in decision.granted
        ],
        "refused": [
            {
                "scope": refusal.scope,
                "code": refusal.code,
                "reason": refusal.reason,
                "rules": list(refusal.rules),
            }
            for refusal in decision.refused
        ],
        "needs_approval": list(decision.needs_approval),
        "roles": sorted(decision.roles),
        "role_sources": [
            {"group": group, "roles": roles} for group, roles in role_sources(revision, decision)
        ],
        "lifetime": decision.lifetime,
        "caps": [
            {"seconds": cap.seconds, "source": cap.source, "scope": cap.scope}
            for cap in decision.caps
        ],
    }
