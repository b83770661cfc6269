"""RFC 7662 token introspection, for authenticated fleet clients.

An active response describes the token; anything else, including a token of another
client's sign-in that the caller has no business with, is `{"active": false}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetid.server.clients import AuthenticatedClient
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidRequest
from fleetid.server.grants.delegated import REFRESH_NAMESPACE
from fleetid.server.issuance import load_grant
from fleetid.server.revocation import is_revoked
from fleetid.server.tokens import digest

__all__ = ["introspect"]

_INACTIVE: dict[str, Any] = {"active": False}
_CLAIMS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "tenant", "act")


def introspect(
    context: ServerContext, client: AuthenticatedClient, form: Mapping[str, str]
) -> dict[str, Any]:
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    now = context.clock()

    verified = context.tokens.verify(token, now=now)
    if verified is not None:
        if is_revoked(context, verified.jti):
            return dict(_INACTIVE)
        grant_id = verified.claims.get("sid")
        if isinstance(grant_id, str) and load_grant(context, grant_id) is None:
            return dict(_INACTIVE)
        response: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        response.update(
            {name: verified.claims[name] for name in _CLAIMS if name in verified.claims}
        )
        return response

    record = context.store.get(REFRESH_NAMESPACE, digest(token))
    if record is None or record.value.get("used") or record.value["client_id"] != client.client_id:
        return dict(_INACTIVE)
    grant = load_grant(context, str(record.value["grant"]))
    if grant is None:
        return dict(_INACTIVE)
    return {
        "active": True,
        "token_type": "refresh_token",
        "client_id": grant.client_id,
        "sub": f"{grant.tenant}:{grant.user}",
        "tenant": grant.tenant,
        "exp": grant.expires_at,
        "iss": context.issuer,
    }
