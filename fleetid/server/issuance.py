"""What every grant does once it knows who asks for what: decide, then issue or refuse.

Every access token passes through `issue_for_resource`: the decision function runs on the
revision the request started with, the token's `scope` is exactly the granted set, the
lifetime is the decided one, and the decision is audited with the token's `jti`. An empty
grant is `invalid_scope` whose description gives each refused scope's reason, including a
scope that needs a person's approval.

Sign-in grants (`grant/<id>` in the store) hold what a delegated token was issued for: the
person (user, tenant, IdP groups) and what they consented to, per resource. Tokens carry
the grant's id as `sid`; revoking the grant (refresh-token reuse, revocation) stops every
exchange and refresh made from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetid.fleet.compile import Revision
from fleetid.policy.decide import AccessRequest, Decision, Refusal, Subject, decide
from fleetid.server.audit import audit_event
from fleetid.server.clients import AuthenticatedClient
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidGrant, InvalidScope, InvalidTarget
from fleetid.server.tokens import AGENT_AUDIENCE_PREFIX
from fleetid.store import Record

__all__ = [
    "GRANT_NAMESPACE",
    "NOT_CONSENTED",
    "Grant",
    "Issued",
    "Target",
    "TokenRequest",
    "grant_from_record",
    "issue_for_resource",
    "load_grant",
    "refusal_description",
    "requested_scopes",
    "resolve_target",
    "revoke_grant",
    "subject_claim",
]

GRANT_NAMESPACE = "grant"
MAX_REQUESTED_SCOPES = 64
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# fleetid's own secrets are 47 characters and more; scope names are rarely a third of that.
_ECHOED_SCOPE_LENGTH = 40
NOT_CONSENTED = "not_consented"


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One token request, read once: the revision it started with, the authenticated
    client, its single-valued parameters, its `resource`/`audience` values and the time."""

    revision: Revision
    client: AuthenticatedClient
    form: Mapping[str, str]
    targets: Sequence[str]
    now: int


@dataclass(frozen=True, slots=True)
class Grant:
    """A person's sign-in to an agent, and what they consented to."""

    id: str
    client_id: str
    user: str
    tenant: str
    groups: tuple[str, ...]
    consent: Mapping[str, tuple[str, ...]]
    oidc_scopes: tuple[str, ...]
    name: str | None
    email: str | None
    auth_time: int
    expires_at: int

    @property
    def subject(self) -> Subject:
        return Subject(self.user, self.tenant, self.groups)

    def as_record(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "user": self.user,
            "tenant": self.tenant,
            "groups": list(self.groups),
            "consent": {resource: list(scopes) for resource, scopes in self.consent.items()},
            "oidc_scopes": list(self.oidc_scopes),
            "name": self.name,
            "email": self.email,
            "auth_time": self.auth_time,
            "revoked": False,
        }


def load_grant(context: ServerContext, grant_id: str) -> Grant | None:
    """The grant, or None when it is unknown, expired or revoked."""
    return grant_from_record(grant_id, context.store.get(GRANT_NAMESPACE, grant_id))


def grant_from_record(grant_id: str, record: Record | None) -> Grant | None:
    """The grant a stored record holds, or None when there is none or it is revoked."""
    if record is None or record.value.get("revoked"):
        return None
    value = record.value
    return Grant(
        id=grant_id,
        client_id=str(value["client_id"]),
        user=str(value["user"]),
        tenant=str(value["tenant"]),
        groups=tuple(value.get("groups", ())),
        consent={
            str(resource): tuple(scopes)
            for resource, scopes in dict(value.get("consent", {})).items()
        },
        oidc_scopes=tuple(value.get("oidc_scopes", ())),
        name=value.get("name"),
        email=value.get("email"),
        auth_time=int(value.get("auth_time", 0)),
        expires_at=int(record.expires_at or 0),
    )


def revoke_grant(context: ServerContext, grant_id: str) -> None:
    """Mark the grant revoked, whoever else is writing it (compare-and-set until it holds)."""
    for _ in range(10):
        record = context.store.get(GRANT_NAMESPACE, grant_id)
        if record is None or record.value.get("revoked"):
            return
        revoked = {**record.value, "revoked": True}
        if context.store.replace(
            GRANT_NAMESPACE,
            grant_id,
            revoked,
            version=record.version,
            expires_at=record.expires_at,
        ):
            return
    # Ten lost races in a row means the grant is being rewritten constantly; deleting it
    # has the same effect as revoking it.
    context.store.delete(GRANT_NAMESPACE, grant_id)


def subject_claim(tenant: str, user: str) -> str:
    """`sub` of a person: unique across tenants, whose IdPs may reuse identifiers."""
    return f"{tenant}:{user}"


@dataclass(frozen=True, slots=True)
class Target:
    """What a token is for: a fleet resource, or an agent itself."""

    resource: str | None
    audience: str
    agent: str | None = None
    connection: str | None = None


def resolve_target(revision: Revision, values: Sequence[str]) -> Target | None:
    """The one target named by `resource` / `audience` values, None when none is named.

    A value may be a resource's identifier URL (RFC 8707), a resource's name, an agent's
    audience (`urn:fleetid:agent:NAME`) or a connection (`urn:fleetid:connection:NAME`).
    """
    targets = {_target(revision, value) for value in values}
    if not targets:
        return None
    if len(targets) > 1:
        raise InvalidTarget("name one resource per token request")
    return targets.pop()


def _target(revision: Revision, value: str) -> Target:
    fleet = revision.fleet
    name = revision.resource_by_audience.get(value)
    if name is None and value in fleet.resources:
        name = value
    if name is not None:
        return Target(name, fleet.resources[name].identifier)
    connection = revision.connection_by_urn.get(value)
    if connection is not None:
        return Target(None, value, connection=connection)
    if value.startswith(AGENT_AUDIENCE_PREFIX):
        agent = value[len(AGENT_AUDIENCE_PREFIX) :]
        if agent in fleet.agents:
            return Target(None, value, agent)
    raise InvalidTarget("the requested resource is not one this server issues tokens for")


def refusal_description(refused: Sequence[Refusal]) -> str:
    return "; ".join(
        f"{refusal.scope}: {refusal.reason}" if refusal.scope else refusal.reason
        for refusal in refused
    )


def requested_scopes(revision: Revision, form: Mapping[str, str]) -> tuple[str, ...]:
    """The `scope` parameter's scope names, or InvalidScope when it breaks RFC 6749 §3.3:
    `scope = scope-token *( SP scope-token )`, `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.

    A long name no resource defines is refused without being repeated: it is what a
    credential pasted into the wrong field looks like, and the refusal would otherwise carry
    it into the error description and the audit line.
    """
    text = form.get("scope")
    if text is None:
        return ()
    scopes = tuple(text.split(" "))
    if len(scopes) > MAX_REQUESTED_SCOPES:
        raise InvalidScope(f"at most {MAX_REQUESTED_SCOPES} scopes can be requested at once")
    if not all(_SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise InvalidScope(
            "scope must be scope names separated by single spaces, each of printable ASCII "
            "other than the space, the double quote and the backslash (RFC 6749 §3.3)"
        )
    long = [scope for scope in scopes if len(scope) > _ECHOED_SCOPE_LENGTH]
    if long:
        defined = {
            name for resource in revision.fleet.resources.values() for name in resource.scopes
        }
        if any(scope not in defined for scope in long):
            raise InvalidScope(
                f"a requested scope is longer than {_ECHOED_SCOPE_LENGTH} characters and no "
                "resource defines it; it is not repeated here"
            )
    return scopes


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    claims: Mapping[str, Any]
    decision: Decision


async def issue_for_resource(
    context: ServerContext,
    revision: Revision,
    *,
    grant_type: str,
    client_id: str,
    resource: str,
    scopes: tuple[str, ...],
    subject: Subject | None,
    now: int,
    consent: tuple[str, ...] | None = None,
    grant: str | None = None,
    act: Mapping[str, Any] | None = None,
    subject_id: str | None = None,
) -> Issued:
    """Decide, and issue an access token for the granted scopes or raise InvalidScope.

    `consent` narrows a delegated request to what the person agreed to: a scope the policy
    would allow but they never consented to is refused too.
    """
    decision = decide(revision, AccessRequest(client_id, resource, scopes, subject))
    if consent is not None:
        decision = _within_consent(decision, consent)

    if not decision.granted:
        context.audit.record(
            audit_event(
                time=context.clock(),
                event="token_refused",
                decision=decision,
                grant_type=grant_type,
                act=act,
            )
        )
        refused = InvalidScope(refusal_description(decision.refused) or "no scope was granted")
        refused.audited = True
        raise refused

    if subject_id is None:
        subject_id = subject_claim(subject.tenant, subject.user) if subject else client_id
    claims = context.tokens.access_claims(
        subject=subject_id,
        audience=revision.fleet.resources[resource].identifier,
        client_id=client_id,
        scopes=decision.granted,
        issued_at=now,
        lifetime=decision.lifetime,
        revision=revision.hash,
        tenant=subject.tenant if subject else None,
        grant=grant,
        act=act,
    )
    algorithm = revision.fleet.resources[resource].signing_algorithm
    token = await context.tokens.sign(claims, algorithm=algorithm)
    context.audit.record(
        audit_event(
            time=context.clock(),
            event="token_issued",
            decision=decision,
            grant_type=grant_type,
            jti=claims["jti"],
            act=act,
        )
    )
    return Issued(token, claims, decision)


def _within_consent(decision: Decision, consent: tuple[str, ...]) -> Decision:
    allowed = frozenset(consent)
    outside = [scope for scope in decision.granted if scope not in allowed]
    if not outside:
        return decision
    refused = decision.refused + tuple(
        Refusal(scope, NOT_CONSENTED, "the user did not consent to it for this agent")
        for scope in outside
    )
    granted = tuple(scope for scope in decision.granted if scope in allowed)
    return Decision(
        decision.revision,
        decision.request,
        granted,
        refused,
        decision.lifetime if granted else 0,
        decision.roles,
        decision.caps,
    )


def require_grant(context: ServerContext, grant_id: str) -> Grant:
    grant = load_grant(context, grant_id)
    if grant is None:
        raise InvalidGrant("the sign-in this token belongs to has expired or was revoked")
    return grant
