"""Connections: people link their third-party accounts; agents fetch credentials by policy.

Fetching is a token exchange (RFC 8693) whose `resource` is `urn:fleetid:connection:NAME`:
the decision (`decide_connection`) checks the agent, the person's tenant and roles exactly
as for any resource, and only then does the vault open the record, refreshing the third
party's access token first when it is about to expire. The response is the credential
itself, with `expires_in` where known; a person who never linked gets an error that says
how to.

Linking and unlinking are pages: `/connections/NAME/link` (and `/unlink`) signs the person
in to fleetid through the same pluggable sign-in step as the authorization endpoint, then
sends the browser to the provider, whose answer comes back to `/connections/callback`. The
link is bound to that browser by a cookie and to that person by the vault's state.

Every fetch, link and unlink, granted or refused, is audited with its reasons; never the
credential. What calls the provider runs on a worker thread, so that a slow provider
holds up only the person or agent waiting for it.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetid.policy.decide import decide_connection
from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.errors import (
    InvalidGrant,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
)
from fleetid.server.issuance import TokenRequest, refusal_description
from fleetid.server.revocation import LiveToken
from fleetid.server.signin import SignInFailed, page_response, render_page
from fleetid.vault import (
    ApiKeyMissing,
    LinkBroken,
    LinkDenied,
    LinkRejected,
    NotLinked,
    ProviderError,
    RefreshContended,
    UnknownConnection,
    VaultError,
)

__all__ = ["callback", "fetch_connection", "sign_in", "start"]

SESSION_NAMESPACE = "connection_session"
SESSION_COOKIE = "fleetid_connection"
SESSION_LIFETIME = 600
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def fetch_connection(
    context: ServerContext,
    request: TokenRequest,
    presented: LiveToken,
    connection: str,
    act: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if context.vault is None:
        raise InvalidTarget("this server keeps no connections")
    person = presented.grant.subject if presented.grant is not None else None
    decision = decide_connection(request.revision, request.client.client_id, connection, person)
    if not decision.granted:
        raise _audited(
            InvalidTarget(refusal_description(decision.refused)),
            context,
            "connection_refused",
            decision=decision,
            act=act,
        )

    tenant = person.tenant if person else ""
    user = person.user if person else ""
    try:
        credential = context.vault.fetch(connection, tenant, user)
    except VaultError as failed:
        refused, event = _refusal_for(failed)
        raise _audited(
            refused, context, event, decision=decision, act=act, reason=failed.code
        ) from failed

    _audit(
        context,
        "connection_fetched",
        decision=decision,
        act=act,
        outcome="refreshed at the provider" if credential.refreshed else "served",
    )
    return credential.token_response()


def _audit(context: ServerContext, event: str, **fields: Any) -> None:
    context.audit.record(audit_event(time=context.clock(), event=event, **fields))


def _refusal_for(failed: VaultError) -> tuple[OAuthError, str]:
    """What the agent is told of a fetch the vault could not serve, and the audit event."""
    if isinstance(failed, (NotLinked, LinkBroken)):
        return InvalidGrant(str(failed)), "connection_refused"
    if isinstance(failed, (ApiKeyMissing, UnknownConnection)):
        return InvalidTarget(str(failed)), "connection_refused"
    if isinstance(failed, (ProviderError, RefreshContended)):
        return TemporarilyUnavailable(str(failed)), "connection_failed"
    return ServerError("the vault could not open this connection"), "connection_failed"


_Refusal = TypeVar("_Refusal", bound=OAuthError)


def _audited(refused: _Refusal, context: ServerContext, event: str, **fields: Any) -> _Refusal:
    """`refused`, once its audit line is written: the token endpoint writes no other."""
    _audit(context, event, **fields)
    refused.audited = True
    return refused


def _page(title: str, message: str, status: int = 200) -> HTMLResponse:
    return page_response(render_page(title, f"<p>{html.escape(message)}</p>"), status)


async def start(context: ServerContext, request: Request, action: str) -> Response:
    """GET /connections/NAME/link or /unlink: sign the person in first."""
    name = request.path_params["name"]
    revision = context.live.get()
    definition = revision.fleet.connections.get(name)
    if context.vault is None or definition is None or definition.kind != "oauth":
        return _page("No such connection", "There is no account to link under this name.", 404)

    session = secrets.token_urlsafe(24)
    context.store.create(
        SESSION_NAMESPACE,
        session,
        {"connection": name, "action": action},
        expires_at=int(context.clock()) + SESSION_LIFETIME,
    )
    page = context.signin.begin(revision, None, session, action="/connections/sign-in")
    response = page_response(page.html)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=SESSION_LIFETIME,
        httponly=True,
        samesite="lax",
        path="/connections",
    )
    return response


def _session(context: ServerContext, request: Request, session: str) -> dict[str, Any] | None:
    # The cookie binds the session to the browser that started it.
    if not _SESSION_ID.match(session) or request.cookies.get(SESSION_COOKIE) != session:
        return None
    record = context.store.get(SESSION_NAMESPACE, session)
    return dict(record.value) if record is not None else None


async def sign_in(context: ServerContext, request: Request, form: Mapping[str, str]) -> Response:
    """POST /connections/sign-in: who the person is; then link (off to the provider) or
    unlink (here and now)."""
    session = form.get("interaction", "")
    value = _session(context, request, session)
    if value is None or context.vault is None:
        return _page("This sign-in has expired", "Start again from the link you were given.", 400)
    revision = context.live.get()
    try:
        person = context.signin.complete(revision, None, form)
    except SignInFailed as failed:
        return _page("Sign-in failed", str(failed), 400)
    name = str(value["connection"])

    if value["action"] == "unlink":
        context.store.redeem(SESSION_NAMESPACE, session)
        try:
            unlinked = await run_in_threadpool(
                context.vault.unlink, name, person.tenant, person.user
            )
        except VaultError as failed:
            return _page("Unlinking failed", str(failed), 400)
        _audit(
            context,
            "connection_unlinked",
            subject=person.user,
            tenant=person.tenant,
            resource=name,
            outcome=f"revocation at the provider: {unlinked.revocation}"
            if unlinked.was_linked
            else "nothing was linked",
        )
        return _page("Unlinked", f"{name} is no longer linked to your account.")

    try:
        link = await run_in_threadpool(
            context.vault.begin_link, name, person.tenant, person.user, session=session
        )
    except VaultError as failed:
        return _page("Linking failed", str(failed), 502)
    context.store.delete(SESSION_NAMESPACE, session)
    context.store.create(
        SESSION_NAMESPACE,
        session,
        {**value, "tenant": person.tenant, "user": person.user},
        expires_at=int(context.clock()) + SESSION_LIFETIME,
    )
    return RedirectResponse(link.authorization_url, status_code=303)


async def callback(context: ServerContext, request: Request) -> Response:
    """GET /connections/callback: the provider's answer, completed for the person whose
    browser started the link."""
    session = request.cookies.get(SESSION_COOKIE, "")
    value = _session(context, request, session)
    if value is None or "user" not in value or context.vault is None:
        return _page("This link has expired", "Start again from the link you were given.", 400)
    context.store.redeem(SESSION_NAMESPACE, session)
    name, tenant, user = str(value["connection"]), str(value["tenant"]), str(value["user"])
    try:
        linked = await run_in_threadpool(
            context.vault.complete_link, request.url.query, tenant, user, session=session
        )
    except LinkDenied as denied:
        _audit(
            context,
            "connection_link_refused",
            subject=user,
            tenant=tenant,
            resource=name,
            reason=denied.code,
        )
        return _page("Not linked", "The provider did not grant access.", 400)
    except (LinkRejected, ProviderError) as failed:
        _audit(
            context,
            "connection_link_refused",
            subject=user,
            tenant=tenant,
            resource=name,
            reason=failed.code,
        )
        return _page("Not linked", str(failed), 400)
    _audit(
        context,
        "connection_linked",
        subject=user,
        tenant=tenant,
        resource=name,
        outcome="relinked" if linked.relinked else "linked",
    )
    response = _page("Linked", f"{name} is linked; agents you use can now reach it for you.")
    response.delete_cookie(SESSION_COOKIE, path="/connections")
    return response
