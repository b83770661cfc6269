"""RFC 6749 §6 with rotation: each refresh token works once; a second use of one revokes
the whole sign-in it belongs to (OAuth 2.1 §4.3.1, refresh token reuse detection)."""

from __future__ import annotations

from typing import Any, NoReturn

from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidGrant, InvalidRequest
from fleetid.server.grants.delegated import REFRESH_NAMESPACE, respond_for_grant
from fleetid.server.issuance import TokenRequest, require_grant, revoke_grant
from fleetid.server.tokens import digest

__all__ = ["GRANT_TYPE", "refresh_token"]

GRANT_TYPE = "refresh_token"


async def refresh_token(context: ServerContext, request: TokenRequest) -> dict[str, Any]:
    revision, client, form, targets, now = (
        request.revision,
        request.client,
        request.form,
        request.targets,
        request.now,
    )
    presented = form.get("refresh_token")
    if not presented:
        raise InvalidRequest("refresh_token is required")

    key = digest(presented)
    record = context.store.get(REFRESH_NAMESPACE, key)
    if record is None:
        raise InvalidGrant("the refresh token is invalid or expired")
    value = record.value
    if value["client_id"] != client.client_id:
        raise InvalidGrant("the refresh token was issued to another client")

    grant_id = str(value["grant"])
    if value.get("used"):
        _refuse_reuse(context, client.client_id, grant_id)

    grant = require_grant(context, grant_id)
    # Decided and issued first: a refused request (a scope the person never granted, a
    # policy change) leaves the refresh token as it was.
    response = await respond_for_grant(
        context,
        revision,
        grant=grant,
        grant_type=GRANT_TYPE,
        form=form,
        targets=targets,
        remembered_resource=value.get("resource"),
        now=now,
    )
    # The conditional write is what makes rotation safe under concurrency: of two requests
    # presenting the same token, one flips `used` and wins; the other sees reuse, and the
    # tokens it was about to return die with the revoked grant.
    if not context.store.replace(
        REFRESH_NAMESPACE,
        key,
        {**value, "used": True},
        version=record.version,
        expires_at=record.expires_at,
    ):
        _refuse_reuse(context, client.client_id, grant_id)
    return response


def _refuse_reuse(context: ServerContext, client_id: str, grant_id: str) -> NoReturn:
    revoke_grant(context, grant_id)
    context.audit.record(
        audit_event(
            time=context.clock(),
            event="refresh_token_reused",
            agent=client_id,
            outcome="grant revoked",
            reason="a rotated refresh token was presented again",
        )
    )
    refused = InvalidGrant(
        "the refresh token was already used; every token of this sign-in is now revoked"
    )
    refused.audited = True
    raise refused
