"""RFC 7662 token introspection, for authenticated fleet clients and resource servers.

A caller learns about a token only when it has business with it. An agent: it is the
client the token was issued to, the agent the token is addressed to, or an actor in its
chain. A resource server that introspects: the token is addressed to it (its `aud` is the
resource's identifier), and it learns of no refresh token. Anything else, like an invalid,
expired or revoked token, is `{"active": false}` (RFC 7662 §4: the server "MAY respond with
an inactive response" to a caller not allowed to see).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetid.server.clients import AuthenticatedClient, AuthenticatedResource
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidRequest
from fleetid.server.grants.delegated import REFRESH_NAMESPACE
from fleetid.server.issuance import load_grant
from fleetid.server.revocation import NotLive, still_live
from fleetid.server.tokens import VerifiedToken, agent_audience, digest

__all__ = ["introspect"]

_INACTIVE: dict[str, Any] = {"active": False}
_CLAIMS = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "tenant", "act")


def _concerns(
    verified: VerifiedToken, caller: AuthenticatedClient | AuthenticatedResource
) -> bool:
    if isinstance(caller, AuthenticatedResource):
        return verified.audience == caller.resource.identifier
    agent = caller.client_id
    if verified.client_id == agent or verified.audience == agent_audience(agent):
        return True
    act = verified.claims.get("act")
    while isinstance(act, Mapping):
        if act.get("sub") == agent:
            return True
        act = act.get("act")
    return False


def introspect(
    context: ServerContext,
    client: AuthenticatedClient | AuthenticatedResource,
    form: Mapping[str, str],
) -> dict[str, Any]:
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    now = context.clock()

    verified = context.tokens.verify(token, now=now)
    if verified is not None:
        if not _concerns(verified, client):
            return dict(_INACTIVE)
        try:
            still_live(context, verified)
        except NotLive:
            return dict(_INACTIVE)
        response: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        response.update(
            {name: verified.claims[name] for name in _CLAIMS if name in verified.claims}
        )
        return response

    if isinstance(client, AuthenticatedResource):
        return dict(_INACTIVE)
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
