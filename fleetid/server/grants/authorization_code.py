"""RFC 6749 §4.1.3 with PKCE (RFC 7636): redeeming an authorization code, once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidGrant, InvalidRequest
from fleetid.server.grants.delegated import respond_for_grant
from fleetid.server.issuance import TokenRequest, require_grant, revoke_grant
from fleetid.server.tokens import digest

__all__ = ["CODE_NAMESPACE", "GRANT_TYPE", "USED_CODE_NAMESPACE", "authorization_code"]

GRANT_TYPE = "authorization_code"
CODE_NAMESPACE = "code"
USED_CODE_NAMESPACE = "code_used"
# RFC 7636 §4.1: code-verifier = 43*128unreserved
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_USED_CODE_MEMORY = 86400


def s256(verifier: str) -> str:
    hashed = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(hashed).rstrip(b"=").decode("ascii")


async def authorization_code(context: ServerContext, request: TokenRequest) -> dict[str, Any]:
    revision, client, form, targets, now = (
        request.revision,
        request.client,
        request.form,
        request.targets,
        request.now,
    )
    code = form.get("code")
    redirect_uri = form.get("redirect_uri")
    verifier = form.get("code_verifier")
    if not code:
        raise InvalidRequest("code is required")
    if not redirect_uri:
        raise InvalidRequest("redirect_uri is required")
    if not verifier:
        raise InvalidRequest("code_verifier is required: this server requires PKCE")
    if not _VERIFIER.match(verifier):
        raise InvalidRequest("code_verifier must be 43 to 128 unreserved characters")

    key = digest(code)
    record = context.store.redeem(CODE_NAMESPACE, key)
    if record is None:
        refused = InvalidGrant("the authorization code is invalid, expired or already used")
        refused.audited = _refuse_reuse(context, key, client.client_id)
        raise refused
    value = record.value
    # RFC 6749 §10.5: a code used twice should revoke what it was exchanged for; this
    # tombstone lets a second attempt find the grant.
    context.store.create(
        USED_CODE_NAMESPACE, key, {"grant": value["grant"]}, expires_at=now + _USED_CODE_MEMORY
    )

    if value["client_id"] != client.client_id:
        raise InvalidGrant("the authorization code was issued to another client")
    if value["redirect_uri"] != redirect_uri:
        raise InvalidGrant("redirect_uri differs from the one in the authorization request")
    # RFC 7636 §4.6: the server compares the transformed verifier with the challenge.
    # Compared as bytes: a challenge is base64url, but one stored before that was checked
    # could hold other characters, which compare_digest refuses to compare as text.
    challenge = str(value["code_challenge"]).encode("utf-8")
    if not hmac.compare_digest(s256(verifier).encode("ascii"), challenge):
        raise InvalidGrant("the code_verifier does not match the code_challenge")

    grant = require_grant(context, str(value["grant"]))
    return await respond_for_grant(
        context,
        revision,
        grant=grant,
        grant_type=GRANT_TYPE,
        form={},
        # With several resources named at authorization and none now, the token is the
        # sign-in token for the agent, which exchanges it for each resource.
        targets=targets or _only(list(value.get("resources", []))),
        remembered_resource=None,
        now=now,
        nonce=value.get("nonce"),
    )


def _only(resources: list[str]) -> list[str]:
    return resources if len(resources) == 1 else []


def _refuse_reuse(context: ServerContext, key: str, client_id: str) -> bool:
    """Revoke what a code presented again was exchanged for; whether it was such a code."""
    used = context.store.get(USED_CODE_NAMESPACE, key)
    if used is None:
        return False
    revoke_grant(context, str(used.value["grant"]))
    context.audit.record(
        audit_event(
            time=context.clock(),
            event="code_reused",
            agent=client_id,
            outcome="grant revoked",
            reason="an authorization code was presented a second time",
        )
    )
    return True
