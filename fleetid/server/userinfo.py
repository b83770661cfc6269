"""The OpenID Connect UserInfo endpoint (OIDC Core §5.3), for sign-in tokens.

A bearer token that is not valid gets the RFC 6750 §3 challenge; one without the `openid`
scope is `insufficient_scope`. The claims returned follow the token's scopes, within those
of the sign-in it belongs to.
"""

from __future__ import annotations

from typing import Any

from fleetid.server.context import ServerContext
from fleetid.server.errors import InsufficientScope, InvalidToken
from fleetid.server.issuance import subject_claim
from fleetid.server.revocation import NotLive, live_token

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
    try:
        presented = live_token(context, token, now=context.clock())
    except NotLive as refused:
        description = str(refused)
        raise InvalidToken(description, headers=_challenge("invalid_token", description)) from None
    if "openid" not in presented.token.scopes:
        description = "the token lacks the openid scope"
        raise InsufficientScope(description, headers=_challenge("insufficient_scope", description))
    grant = presented.grant
    if grant is None:
        description = "the token belongs to no person's sign-in"
        raise InvalidToken(description, headers=_challenge("invalid_token", description))

    # OIDC Core §5.4: "The scopes associated with Access Tokens determine what resources
    # will be available when they are used". A token narrowed on refresh reveals less; none
    # reveals more than its sign-in was granted.
    scopes = set(presented.token.scopes).intersection(grant.oidc_scopes)
    claims: dict[str, Any] = {
        "sub": subject_claim(grant.tenant, grant.user),
        "tenant": grant.tenant,
    }
    if "profile" in scopes and grant.name:
        claims["name"] = grant.name
    if "email" in scopes and grant.email:
        claims["email"] = grant.email
    return claims
