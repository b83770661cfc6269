"""RFC 7009 token revocation.

A refresh token revokes its whole sign-in (RFC 7009 §2.1: the server "SHOULD also
invalidate all access tokens based on the same authorization grant"); an access token is
remembered as revoked until it expires. Resource servers that check JWTs on their own see
a revocation only through introspection; the short lifetimes bound the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleetid.server.audit import audit_event
from fleetid.server.clients import AuthenticatedClient
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidRequest, UnsupportedTokenType
from fleetid.server.grants.delegated import REFRESH_NAMESPACE
from fleetid.server.issuance import GRANT_NAMESPACE, Grant, grant_from_record, revoke_grant
from fleetid.server.tokens import VerifiedToken, digest

__all__ = ["REVOKED_NAMESPACE", "LiveToken", "NotLive", "live_token", "revoke", "still_live"]

REVOKED_NAMESPACE = "revoked"
_HINTS = frozenset({"access_token", "refresh_token"})


@dataclass(frozen=True, slots=True)
class LiveToken:
    """An access token presented to this server that still holds, and its sign-in."""

    token: VerifiedToken
    grant: Grant | None
    """The sign-in a delegated token belongs to (its `sid`); None for a machine token."""


class NotLive(Exception):
    """Why a presented token is refused, in words for the client; never the token."""


def live_token(context: ServerContext, token: str, *, now: float) -> LiveToken:
    """The token when this server issued it, it has not expired, it was not revoked, and
    the sign-in it belongs to (if any) was neither revoked nor has ended; else `NotLive`.

    Both records, the token's revocation and its sign-in, are read in one store request.
    """
    verified = context.tokens.verify(token, now=now)
    if verified is None:
        raise NotLive("the token is not a valid, unexpired token of this server")
    return still_live(context, verified)


def still_live(context: ServerContext, verified: VerifiedToken) -> LiveToken:
    """`live_token` for a token already verified: neither it nor its sign-in revoked."""
    revoked = (REVOKED_NAMESPACE, verified.jti)
    grant_id = verified.claims.get("sid")
    addresses = [revoked]
    if isinstance(grant_id, str):
        addresses.append((GRANT_NAMESPACE, grant_id))
    records = context.store.get_many(addresses)
    if revoked in records:
        raise NotLive("the token was revoked")
    if not isinstance(grant_id, str):
        return LiveToken(verified, None)
    grant = grant_from_record(grant_id, records.get((GRANT_NAMESPACE, grant_id)))
    if grant is None:
        raise NotLive("the sign-in this token belongs to has expired or was revoked")
    return LiveToken(verified, grant)


def revoke(context: ServerContext, client: AuthenticatedClient, form: Mapping[str, str]) -> None:
    token = form.get("token")
    if not token:
        raise InvalidRequest("token is required")
    hint = form.get("token_type_hint")
    if hint is not None and hint not in _HINTS:
        raise UnsupportedTokenType("token_type_hint must be access_token or refresh_token")
    now = context.clock()

    refresh = context.store.get(REFRESH_NAMESPACE, digest(token))
    if refresh is not None:
        if refresh.value["client_id"] != client.client_id:
            # RFC 7009 §2.1: the server verifies "whether the token was issued to the client
            # making the revocation request"; answering as for an unknown token reveals
            # nothing about other clients' tokens.
            return
        revoke_grant(context, str(refresh.value["grant"]))
        _audit(context, client.client_id, "refresh token: its sign-in is revoked")
        return

    verified = context.tokens.verify(token, now=now)
    if verified is None or verified.client_id != client.client_id:
        # RFC 7009 §2.2: "invalid tokens do not cause an error response".
        return
    context.store.create(REVOKED_NAMESPACE, verified.jti, {}, expires_at=verified.expires_at + 60)
    _audit(context, client.client_id, "access token revoked", verified.jti)


def _audit(context: ServerContext, agent: str, outcome: str, jti: str | None = None) -> None:
    context.audit.record(
        audit_event(time=context.clock(), event="revoked", agent=agent, jti=jti, outcome=outcome)
    )
