"""RFC 8693 token exchange, with RFC 8707 resource indicators and issuance policy.

An agent trades a token it holds for a narrower one: a person's sign-in token for a token
on one resource, or any token of its own for a token addressed to another agent it hands
work to. The new token's scopes are what the decision function grants the *requesting*
agent for the subject, narrowed by what the person consented to; the requesting agent is
recorded as the actor, nesting whatever chain the subject token carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool

from fleetid.server.audit import audit_event
from fleetid.server.connections import fetch_connection
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget
from fleetid.server.issuance import (
    Target,
    TokenRequest,
    issue_for_resource,
    requested_scopes,
    resolve_target,
)
from fleetid.server.revocation import NotLive, live_token
from fleetid.server.tokens import (
    ACCESS_TOKEN_TYPE,
    AGENT_AUDIENCE_PREFIX,
    VerifiedToken,
    agent_audience,
)

__all__ = ["GRANT_TYPE", "token_exchange"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
# The two names a token of this server goes by, as a subject token and as one asked for.
_OUR_TOKEN_TYPES = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE})


async def token_exchange(context: ServerContext, request: TokenRequest) -> dict[str, Any]:
    revision, client, form, targets, now = (
        request.revision,
        request.client,
        request.form,
        request.targets,
        request.now,
    )
    subject_token = form.get("subject_token")
    if not subject_token:
        raise InvalidRequest("subject_token is required")
    if form.get("subject_token_type") not in _OUR_TOKEN_TYPES:
        raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE}")
    if "actor_token" in form:
        raise InvalidRequest("actor_token is not supported: the authenticated client is the actor")
    if "actor_token_type" in form:
        # RFC 8693 §2.1: actor_token_type "MUST be present if the actor_token parameter is
        # present in the request but MUST NOT be included otherwise".
        raise InvalidRequest("actor_token_type is given only with an actor_token")
    requested_type = form.get("requested_token_type")
    if requested_type is not None and requested_type not in _OUR_TOKEN_TYPES:
        raise InvalidRequest(
            f"requested_token_type must be {ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE}"
        )
    # This server's access tokens are JWTs: asked for as either, the same token is issued,
    # and named as it was asked for (RFC 8693 §3).
    issued_type = requested_type or ACCESS_TOKEN_TYPE

    try:
        presented = live_token(context, subject_token, now=now)
    except NotLive as refused:
        raise InvalidGrant(f"subject_token: {refused}") from None
    subject = presented.token
    _check_addressed_to(subject, client.client_id)

    target = resolve_target(revision, targets)
    if target is None:
        raise InvalidTarget("name the resource with `resource` or `audience`")
    act = _actor_chain(subject, client.client_id)

    if target.agent is not None:
        return await _for_agent(context, request, subject, target, act, issued_type=issued_type)
    if target.connection is not None:
        if requested_type == JWT_TOKEN_TYPE:
            # A connection's token is its provider's, in whatever form the provider issues.
            raise InvalidRequest(
                f"a connection's credential cannot be asked for as {JWT_TOKEN_TYPE}: "
                "its provider decides its form"
            )
        # A connection's credential may have to be refreshed at its provider, which can
        # take seconds: that waits on a worker thread, not on the event loop.
        return await run_in_threadpool(
            fetch_connection, context, request, presented, target.connection, act
        )

    assert target.resource is not None
    grant = presented.grant
    requested = requested_scopes(revision, form)
    if grant is not None:
        consent = grant.consent.get(target.resource, ())
        issued = await issue_for_resource(
            context,
            revision,
            grant_type=GRANT_TYPE,
            client_id=client.client_id,
            resource=target.resource,
            scopes=requested or consent,
            subject=grant.subject,
            consent=consent,
            grant=grant.id,
            act=act,
            now=now,
        )
    else:
        issued = await issue_for_resource(
            context,
            revision,
            grant_type=GRANT_TYPE,
            client_id=client.client_id,
            resource=target.resource,
            scopes=requested
            or tuple(sorted(revision.agent_scopes.get((client.client_id, target.resource), ()))),
            subject=None,
            act=act,
            subject_id=str(subject.claims["sub"]),
            now=now,
        )
    return {
        "access_token": issued.token,
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": issued.decision.lifetime,
        "scope": " ".join(issued.decision.granted),
    }


def _check_addressed_to(subject: VerifiedToken, agent: str) -> None:
    """The subject token must be addressed to the requesting agent: a token for an agent
    (its sign-in token, or one another agent delegated to it) names it in `aud`; any other
    token of this server must have been issued to it."""
    if subject.audience.startswith(AGENT_AUDIENCE_PREFIX):
        if subject.audience == agent_audience(agent):
            return
        addressee = subject.audience.removeprefix(AGENT_AUDIENCE_PREFIX)
        raise InvalidGrant(
            f"the subject_token was issued to another agent: it is addressed to {addressee}"
        )
    if subject.client_id != agent:
        raise InvalidGrant("the subject_token was issued to another agent")


def _actor_chain(subject: VerifiedToken, agent: str) -> dict[str, Any] | None:
    """RFC 8693 §4.1: the current actor outermost, earlier actors nested inside."""
    previous = subject.claims.get("act")
    if previous is None and subject.claims.get("sub") == agent:
        # An agent exchanging its own machine token acts for nobody but itself.
        return None
    if isinstance(previous, Mapping) and previous.get("sub") == agent:
        # The same agent acting again (exchanging a token it already acts in) is not a new
        # step of delegation: the chain stays as it is instead of growing with each call.
        return dict(previous)
    act: dict[str, Any] = {"sub": agent}
    if isinstance(previous, Mapping):
        act["act"] = dict(previous)
    return act


async def _for_agent(
    context: ServerContext,
    request: TokenRequest,
    subject: VerifiedToken,
    target: Target,
    act: Mapping[str, Any] | None,
    *,
    issued_type: str,
) -> dict[str, Any]:
    """A token addressed to another agent: it carries who the subject is and the chain of
    actors, and no resource scope; that agent exchanges it in turn, under its own list and
    the person's consent."""
    assert target.agent is not None
    revision, client, now = request.revision, request.client, request.now
    if request.form.get("scope"):
        # RFC 8693 §2.2.1 lets the server issue other scopes than requested, but only by
        # saying so; a token for an agent has none to say, so asking for some is refused.
        raise InvalidScope(
            f"a token for agent {target.agent} carries no scopes: that agent exchanges it "
            "for the scopes it may hold"
        )
    tenant = subject.claims.get("tenant")
    if isinstance(tenant, str) and tenant not in revision.agent_tenants.get(target.agent, ()):
        raise InvalidTarget(f"agent {target.agent} does not serve tenant {tenant}")
    lifetime = min(revision.fleet.identity.tokens.access_token, max(subject.expires_at - now, 1))
    grant = subject.claims.get("sid")
    claims = context.tokens.access_claims(
        subject=str(subject.claims["sub"]),
        audience=target.audience,
        client_id=client.client_id,
        scopes=(),
        issued_at=now,
        lifetime=lifetime,
        revision=revision.hash,
        tenant=tenant if isinstance(tenant, str) else None,
        grant=grant if isinstance(grant, str) else None,
        act=act,
    )
    token = await context.tokens.sign(claims)
    context.audit.record(
        audit_event(
            time=context.clock(),
            event="delegation_issued",
            agent=client.client_id,
            revision=revision.hash,
            # As decision events name people: the user, with the tenant beside it.
            subject=str(subject.claims["sub"]).removeprefix(f"{tenant}:")
            if isinstance(tenant, str)
            else None,
            tenant=tenant if isinstance(tenant, str) else None,
            jti=claims["jti"],
            act=act,
            outcome=f"token for agent {target.agent}",
        )
    )
    return {
        "access_token": token,
        "issued_token_type": issued_type,
        "token_type": "Bearer",
        "expires_in": lifetime,
    }
