"""The authorization endpoint (RFC 6749 §4.1, OAuth 2.1): code flow, PKCE S256 only.

A request becomes an *interaction* in the store, bound to the browser by a cookie; the
pluggable sign-in step (`signin.py`) says who the person is; the consent page shows, per
resource, what the agent will be able to do — already decided by the policy, so a person
is never asked to consent to something they could not delegate; approving creates the
sign-in grant and a single-use code.

Until the client and its redirect URI are known to be genuine, errors are shown as a page;
after that they go back to the client, with `state` and the RFC 9207 `iss`.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from fleetid.fleet.compile import Revision
from fleetid.policy.decide import AccessRequest, Decision, Subject, decide
from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.grants.authorization_code import CODE_NAMESPACE
from fleetid.server.issuance import GRANT_NAMESPACE, Grant
from fleetid.server.metadata import OIDC_SCOPES
from fleetid.server.signin import SignedInUser, SignInFailed, render_page
from fleetid.server.tokens import digest, new_secret

__all__ = ["INTERACTION_COOKIE", "authorize", "consent", "sign_in"]

INTERACTION_NAMESPACE = "interaction"
INTERACTION_COOKIE = "fleetid_interaction"
INTERACTION_LIFETIME = 600
_MAX_PARAMETER = 2000
_INTERACTION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class _Redirected(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class _Interaction:
    id: str
    client_id: str
    redirect_uri: str
    state: str | None
    nonce: str | None
    code_challenge: str
    oidc_scopes: tuple[str, ...]
    scopes: tuple[str, ...]
    resources: tuple[str, ...]

    @classmethod
    def from_record(cls, interaction_id: str, value: Mapping[str, Any]) -> _Interaction:
        return cls(
            id=interaction_id,
            client_id=str(value["client_id"]),
            redirect_uri=str(value["redirect_uri"]),
            state=value.get("state"),
            nonce=value.get("nonce"),
            code_challenge=str(value["code_challenge"]),
            oidc_scopes=tuple(value["oidc_scopes"]),
            scopes=tuple(value["scopes"]),
            resources=tuple(value["resources"]),
        )

    def as_record(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.code_challenge,
            "oidc_scopes": list(self.oidc_scopes),
            "scopes": list(self.scopes),
            "resources": list(self.resources),
        }


def _error_page(status: int, message: str) -> HTMLResponse:
    return HTMLResponse(
        render_page("This sign-in cannot continue", f"<p>{html.escape(message)}</p>"),
        status_code=status,
    )


def _redirect(context: ServerContext, redirect_uri: str, parameters: dict[str, str]) -> Response:
    # RFC 9207 §2: the server "MUST" add `iss` to every authorization response, errors too.
    query = urlencode({**parameters, "iss": context.issuer})
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return RedirectResponse(f"{redirect_uri}{separator}{query}", status_code=303)


def _single(query: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [value for key, value in query if key == name]
    if len(values) > 1:
        raise _Redirected("invalid_request", f"{name} is given more than once")
    if values and len(values[0]) > _MAX_PARAMETER:
        raise _Redirected("invalid_request", f"{name} is too long")
    return values[0] if values else None


async def authorize(context: ServerContext, request: Request) -> Response:
    revision = context.live.get()
    query = request.query_params.multi_items()
    client_ids = [value for key, value in query if key == "client_id"]
    redirect_uris = [value for key, value in query if key == "redirect_uri"]
    if len(client_ids) != 1 or client_ids[0] not in revision.fleet.agents:
        return _error_page(400, "The request names no client this server knows.")
    client_id = client_ids[0]
    agent = revision.fleet.agents[client_id]
    # RFC 6749 §3.1.2.4 and OAuth 2.1 §4.1.1: never redirect to an unregistered URI;
    # comparison is exact string matching.
    if len(redirect_uris) != 1 or redirect_uris[0] not in agent.redirect_uris:
        return _error_page(400, "The redirect URI is not registered for this client.")
    redirect_uri = redirect_uris[0]

    state: str | None = None
    try:
        state = _single(query, "state")
        interaction = _validate(revision, client_id, redirect_uri, state, query)
    except _Redirected as refused:
        parameters = {"error": refused.error, "error_description": refused.description}
        if state is not None:
            parameters["state"] = state
        return _redirect(context, redirect_uri, parameters)

    context.store.create(
        INTERACTION_NAMESPACE,
        interaction.id,
        interaction.as_record(),
        expires_at=int(context.clock()) + INTERACTION_LIFETIME,
    )
    page = context.signin.begin(revision, client_id, interaction.id)
    response = HTMLResponse(page.html)
    _bind(response, interaction.id)
    return response


def _validate(
    revision: Revision,
    client_id: str,
    redirect_uri: str,
    state: str | None,
    query: Sequence[tuple[str, str]],
) -> _Interaction:
    if _single(query, "response_type") != "code":
        raise _Redirected("unsupported_response_type", "response_type must be code")
    challenge = _single(query, "code_challenge")
    method = _single(query, "code_challenge_method")
    if not challenge:
        raise _Redirected("invalid_request", "code_challenge is required (PKCE)")
    if method != "S256":
        raise _Redirected("invalid_request", "code_challenge_method must be S256")
    if not 43 <= len(challenge) <= 128:
        raise _Redirected("invalid_request", "code_challenge is not an S256 challenge")

    requested = tuple(dict.fromkeys((_single(query, "scope") or "").split()))
    oidc = tuple(scope for scope in requested if scope in OIDC_SCOPES)
    scopes = tuple(scope for scope in requested if scope not in OIDC_SCOPES)
    resources: list[str] = []
    for key, value in query:
        if key != "resource":
            continue
        name = revision.resource_by_audience.get(value)
        if name is None:
            # RFC 8707 §2: an unknown or unacceptable resource is "invalid_target".
            raise _Redirected("invalid_target", "the resource is not one this server knows")
        resources.append(name)
    return _Interaction(
        id=secrets.token_urlsafe(24),
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        nonce=_single(query, "nonce"),
        code_challenge=challenge,
        oidc_scopes=oidc,
        scopes=scopes,
        resources=tuple(dict.fromkeys(resources)),
    )


def _bind(response: Response, interaction_id: str) -> None:
    response.set_cookie(
        INTERACTION_COOKIE,
        interaction_id,
        max_age=INTERACTION_LIFETIME,
        httponly=True,
        samesite="lax",
        path="/authorize",
    )


async def _interaction(
    context: ServerContext, request: Request, form: Mapping[str, str]
) -> tuple[_Interaction, dict[str, Any], int, int | None] | None:
    interaction_id = form.get("interaction", "")
    if not _INTERACTION_ID.match(interaction_id):
        return None
    # The cookie binds the interaction to the browser that started it: a form posted from
    # another browser (or a forged page) does not carry it.
    if not interaction_id or request.cookies.get(INTERACTION_COOKIE) != interaction_id:
        return None
    record = context.store.get(INTERACTION_NAMESPACE, interaction_id)
    if record is None:
        return None
    value = dict(record.value)
    return (
        _Interaction.from_record(interaction_id, value),
        value,
        record.version,
        record.expires_at,
    )


async def sign_in(context: ServerContext, request: Request, form: Mapping[str, str]) -> Response:
    found = await _interaction(context, request, form)
    if found is None:
        return _error_page(400, "This sign-in has expired or belongs to another browser.")
    interaction, value, version, expires_at = found
    revision = context.live.get()
    if interaction.client_id not in revision.fleet.agents:
        return _error_page(400, "This agent is no longer part of the fleet.")
    try:
        user = context.signin.complete(revision, interaction.client_id, form)
    except SignInFailed as failed:
        page = context.signin.begin(revision, interaction.client_id, interaction.id)
        notice = f"<p><b>{html.escape(str(failed))}</b></p>"
        return HTMLResponse(page.html.replace("</h1>", f"</h1>{notice}", 1), status_code=400)

    value["user"] = {
        "user": user.user,
        "tenant": user.tenant,
        "groups": list(user.groups),
        "name": user.name,
        "email": user.email,
    }
    if not context.store.replace(
        INTERACTION_NAMESPACE, interaction.id, value, version=version, expires_at=expires_at
    ):
        return _error_page(409, "This sign-in was completed in another window.")
    decisions = _decide(revision, interaction, user)
    return HTMLResponse(_consent_page(interaction, user, decisions))


def _resources_for(revision: Revision, interaction: _Interaction) -> dict[str, tuple[str, ...]]:
    """Requested scopes per resource: the resources named, or those of the agent's that
    define a requested scope."""
    fleet = revision.fleet
    agent = fleet.agents.get(interaction.client_id)
    if agent is None:
        # The agent left the fleet while its user was signing in.
        return {}
    names = interaction.resources or tuple(
        name
        for name in agent.scopes
        if any(scope in fleet.resources[name].scopes for scope in interaction.scopes)
    )
    wanted: dict[str, tuple[str, ...]] = {}
    for name in names:
        defined = fleet.resources[name].scopes
        scopes = tuple(scope for scope in interaction.scopes if scope in defined)
        if interaction.resources and not interaction.scopes:
            scopes = tuple(sorted(revision.agent_scopes.get((interaction.client_id, name), ())))
        if scopes:
            wanted[name] = scopes
    return wanted


def _decide(revision: Revision, interaction: _Interaction, user: SignedInUser) -> list[Decision]:
    subject = Subject(user.user, user.tenant, user.groups)
    return [
        decide(revision, AccessRequest(interaction.client_id, resource, scopes, subject))
        for resource, scopes in _resources_for(revision, interaction).items()
    ]


def _consent_page(interaction: _Interaction, user: SignedInUser, decisions: list[Decision]) -> str:
    sections = []
    for decision in decisions:
        resource = html.escape(decision.request.resource)
        rows = (
            "".join(f"<li>{html.escape(scope)}</li>" for scope in decision.granted)
            or "<li><i>nothing</i></li>"
        )
        refused = "".join(
            f"<li>{html.escape(refusal.scope)}: {html.escape(refusal.reason)}</li>"
            for refusal in decision.refused
        )
        section = f"<h2>{resource}</h2><p>It will be able to:</p><ul>{rows}</ul>"
        if refused:
            section += f"<p>It will not get:</p><ul>{refused}</ul>"
        sections.append(section)
    if not sections:
        sections.append("<p>It asks to know who you are, and for no resource.</p>")
    agent = html.escape(interaction.client_id)
    return render_page(
        "Allow access?",
        f"<p>Signed in as <b>{html.escape(user.name or user.user)}</b> "
        f"(tenant {html.escape(user.tenant)}).</p>"
        f"<p><b>{agent}</b> asks to act for you.</p>"
        + "".join(sections)
        + '<form method="post" action="/authorize/consent">'
        f'<input type="hidden" name="interaction" value="{html.escape(interaction.id)}">'
        '<button type="submit" name="decision" value="allow">Allow</button> '
        '<button type="submit" name="decision" value="deny">Deny</button></form>',
    )


async def consent(context: ServerContext, request: Request, form: Mapping[str, str]) -> Response:
    found = await _interaction(context, request, form)
    if found is None:
        return _error_page(400, "This sign-in has expired or belongs to another browser.")
    interaction, value, _, _ = found
    signed_in = value.get("user")
    # Single use: whichever answer comes first ends the interaction.
    if context.store.redeem(INTERACTION_NAMESPACE, interaction.id) is None or not signed_in:
        return _error_page(400, "This sign-in has expired or was already answered.")

    parameters: dict[str, str] = {}
    if interaction.state is not None:
        parameters["state"] = interaction.state
    if form.get("decision") != "allow":
        parameters["error"] = "access_denied"
        parameters["error_description"] = "the user denied the request"
        return _redirect(context, interaction.redirect_uri, parameters)

    revision = context.live.get()
    if interaction.client_id not in revision.fleet.agents:
        return _error_page(400, "This agent is no longer part of the fleet.")
    user = SignedInUser(
        signed_in["user"],
        signed_in["tenant"],
        tuple(signed_in["groups"]),
        signed_in.get("name"),
        signed_in.get("email"),
    )
    decisions = _decide(revision, interaction, user)
    now = int(context.clock())
    grant = Grant(
        id=secrets.token_urlsafe(24),
        client_id=interaction.client_id,
        user=user.user,
        tenant=user.tenant,
        groups=user.groups,
        consent={d.request.resource: d.granted for d in decisions if d.granted},
        oidc_scopes=interaction.oidc_scopes,
        name=user.name,
        email=user.email,
        auth_time=now,
        expires_at=now + revision.fleet.identity.tokens.refresh_token,
    )
    context.store.create(GRANT_NAMESPACE, grant.id, grant.as_record(), expires_at=grant.expires_at)
    for decision in decisions:
        context.audit.record(audit_event(time=context.clock(), event="consent", decision=decision))

    code = new_secret("fic")
    context.store.create(
        CODE_NAMESPACE,
        digest(code),
        {
            "client_id": interaction.client_id,
            "redirect_uri": interaction.redirect_uri,
            "code_challenge": interaction.code_challenge,
            "grant": grant.id,
            "nonce": interaction.nonce,
            "resources": [
                revision.fleet.resources[name].identifier for name in interaction.resources
            ],
        },
        expires_at=now + revision.fleet.identity.tokens.authorization_code,
    )
    parameters["code"] = code
    response = _redirect(context, interaction.redirect_uri, parameters)
    response.delete_cookie(INTERACTION_COOKIE, path="/authorize")
    return response
