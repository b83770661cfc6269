"""The token response of a sign-in grant, shared by the authorization code and refresh
token grants: an access token for one consented resource (or, with none named, a sign-in
token addressed to the agent itself), a rotated refresh token, and an ID token."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetid.fleet.compile import Revision
from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidScope, InvalidTarget
from fleetid.server.issuance import (
    Grant,
    Target,
    issue_for_resource,
    requested_scopes,
    resolve_target,
    subject_claim,
)
from fleetid.server.tokens import agent_audience, digest, new_secret

__all__ = ["REFRESH_NAMESPACE", "respond_for_grant"]

REFRESH_NAMESPACE = "refresh"


def _target(
    revision: Revision, grant: Grant, targets: Sequence[str], remembered: str | None
) -> Target:
    target = resolve_target(revision, targets)
    if target is None and remembered is not None:
        target = resolve_target(revision, [remembered])
    if target is None:
        consented = [resource for resource, scopes in grant.consent.items() if scopes]
        if len(consented) == 1:
            return resolve_target(revision, consented) or Target(None, "")
        return Target(None, agent_audience(grant.client_id), grant.client_id)
    if target.resource is None:
        if target.connection is not None:
            raise InvalidTarget("connections are fetched by token exchange")
        if target.agent != grant.client_id:
            raise InvalidTarget("a sign-in token can be addressed only to the agent signed in to")
        return target
    if target.resource not in grant.consent:
        raise InvalidTarget("the user did not consent to this resource for this agent")
    return target


async def respond_for_grant(
    context: ServerContext,
    revision: Revision,
    *,
    grant: Grant,
    grant_type: str,
    form: Mapping[str, str],
    targets: Sequence[str],
    remembered_resource: str | None,
    now: int,
    nonce: str | None = None,
) -> dict[str, Any]:
    target = _target(revision, grant, targets, remembered_resource)
    requested = requested_scopes(revision, form)

    if target.resource is not None:
        consent = grant.consent[target.resource]
        scopes = tuple(scope for scope in requested if scope not in grant.oidc_scopes)
        issued = await issue_for_resource(
            context,
            revision,
            grant_type=grant_type,
            client_id=grant.client_id,
            resource=target.resource,
            scopes=scopes or consent,
            subject=grant.subject,
            consent=consent,
            grant=grant.id,
            now=now,
        )
        token, lifetime, scope = issued.token, issued.decision.lifetime, issued.decision.granted
    else:
        token, lifetime, scope = await _sign_in_token(context, revision, grant, requested, now)

    response: dict[str, Any] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": " ".join(scope),
        "refresh_token": _new_refresh_token(context, grant, target.resource),
    }
    if "openid" in grant.oidc_scopes:
        response["id_token"] = await _id_token(context, revision, grant, now, nonce)
    return response


async def _sign_in_token(
    context: ServerContext, revision: Revision, grant: Grant, requested: tuple[str, ...], now: int
) -> tuple[str, int, tuple[str, ...]]:
    """A token addressed to the agent itself: who signed in, and nothing to spend on a
    resource; the agent exchanges it (RFC 8693) for resource tokens."""
    scopes = tuple(scope for scope in requested if scope in grant.oidc_scopes) or grant.oidc_scopes
    unknown = [scope for scope in requested if scope not in grant.oidc_scopes]
    if unknown:
        raise InvalidScope(
            f"{' '.join(unknown)}: name the resource with `resource` to get resource scopes"
        )
    lifetime = revision.fleet.identity.tokens.access_token
    claims = context.tokens.access_claims(
        subject=subject_claim(grant.tenant, grant.user),
        audience=agent_audience(grant.client_id),
        client_id=grant.client_id,
        scopes=scopes,
        issued_at=now,
        lifetime=lifetime,
        revision=revision.hash,
        tenant=grant.tenant,
        grant=grant.id,
    )
    token = await context.tokens.sign(claims)
    context.audit.record(
        audit_event(
            time=context.clock(),
            event="sign_in_token_issued",
            agent=grant.client_id,
            revision=revision.hash,
            subject=grant.user,
            tenant=grant.tenant,
            jti=claims["jti"],
            outcome=f"subject {claims['sub']}, scopes {' '.join(scopes) or '(none)'}",
        )
    )
    return token, lifetime, scopes


def _new_refresh_token(context: ServerContext, grant: Grant, resource: str | None) -> str:
    token = new_secret("firt")
    context.store.create(
        REFRESH_NAMESPACE,
        digest(token),
        {"grant": grant.id, "client_id": grant.client_id, "resource": resource, "used": False},
        expires_at=grant.expires_at,
    )
    return token


async def _id_token(
    context: ServerContext, revision: Revision, grant: Grant, now: int, nonce: str | None
) -> str:
    claims: dict[str, Any] = {
        "iss": context.issuer,
        "sub": subject_claim(grant.tenant, grant.user),
        "aud": grant.client_id,
        "azp": grant.client_id,
        "iat": now,
        "exp": now + revision.fleet.identity.tokens.id_token,
        "auth_time": grant.auth_time,
        "tenant": grant.tenant,
    }
    if nonce:
        claims["nonce"] = nonce
    if "profile" in grant.oidc_scopes and grant.name:
        claims["name"] = grant.name
    if "email" in grant.oidc_scopes and grant.email:
        claims["email"] = grant.email
    return await context.tokens.sign(claims, typ="JWT")
