"""The OpenID Connect UserInfo endpoint (OIDC Core §5.3), for sign-in tokens.

A bearer token that is not valid gets the RFC 6750 §3 challenge; one without the `openid`
scope is `insufficient_scope`.
"""

from __future__ import annotations

from typing import Any

from fleetid.server.context import ServerContext
from fleetid.server.errors import InsufficientScope, InvalidToken
from fleetid.server.issuance import load_grant, subject_claim
from fleetid.server.revocation import is_revoked

__all__ = ["userinfo"]


def _challenge(error: str, description: str) -> dict[str, str]:
    return {
        "WWW-Authenticate": f'Bearer realm="fleetid", error="{error}", '
        f'error_description="{description}"'
    }


def userinfo(context: ServerContext, token: str | None) -> dict[str, Any]:
    if not token:
        raise InvalidToken(
            "a bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="fleetid"'},
        )
    verified = context.tokens.verify(token, now=context.clock())
    if verified is None or is_revoked(context, verified.jti):
        description = "the access token is invalid, expired or revoked"
        raise InvalidToken(description, headers=_challenge("invalid_token", description))
    if "openid" not in verified.scopes:
        description = "the token lacks the openid scope"
        raise InsufficientScope(description, headers=_challenge("insufficient_scope", description))
    grant_id = verified.claims.get("sid")
    grant = load_grant(context, grant_id) if isinstance(grant_id, str) else None
    if grant is None:
        description = "the sign-in this token belongs to has ended"
        raise InvalidToken(description, headers=_challenge("invalid_token", description))

    claims: dict[str, Any] = {
        "sub": subject_claim(grant.tenant, grant.user),
        "tenant": grant.tenant,
    }
    if "profile" in grant.oidc_scopes and grant.name:
        claims["name"] = grant.name
    if "email" in grant.oidc_scopes and grant.email:
        claims["email"] = grant.email
    return claims
