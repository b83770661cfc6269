"""The authorization endpoint (RFC 6749 §4.1, OAuth 2.1): code flow, PKCE S256 only.

A request becomes an *interaction* in the store, bound to the browser by a cookie; the
pluggable sign-in step (`signin.py`) says who the person is; the consent page shows, per
resource, what the agent will be able to do — already decided by the policy, so a person
is never asked to consent to something they could not delegate; approving creates the
sign-in grant and a single-use code.

The request arrives as a query (GET) or as a form (POST). Until the client and its redirect
URI are known to be genuine, errors are shown as a page; after that they go back to the
client, with `state` and the RFC 9207 `iss`. A resource named in the request on which
nothing can be granted is refused (`invalid_target`): before sign-in when the agent may
request nothing there, after it when the policy grants the person nothing there. Every page
forbids being framed (RFC 9700 §4.16: the server "MUST prevent clickjacking attacks").
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
from fleetid.policy.decide import AccessRequest, Decision, Refusal, Subject, decide
from fleetid.server.audit import audit_event
from fleetid.server.context import ServerContext
from fleetid.server.errors import InvalidRequest
from fleetid.server.grants.authorization_code import CODE_NAMESPACE
from fleetid.server.issuance import GRANT_NAMESPACE, Grant
from fleetid.server.metadata import OIDC_SCOPES
from fleetid.server.signin import SignedInUser, SignInFailed, page_response, render_page
from fleetid.server.tokens import digest, new_secret

__all__ = ["INTERACTION_COOKIE", "authorize", "consent", "sign_in"]

INTERACTION_NAMESPACE = "interaction"
INTERACTION_COOKIE = "fleetid_interaction"
INTERACTION_LIFETIME = 600
_MAX_PARAMETER = 2000
_INTERACTION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# RFC 7636 §4.2: code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier))), the
# 32 bytes of a SHA-256 digest in unpadded base64url.
_S256_LENGTH = 43
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# OIDC Core §3.1.2.1 defines these; sign-in and consent are always shown, so `login`,
# `consent` and `select_account` are honoured as they stand.
_PROMPTS = frozenset({"none", "login", "consent", "select_account"})
# The answer of a consent page that offers no Allow: back to the agent, told why.
_RETURN = "return"


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


def _page(content: str, status: int = 200) -> HTMLResponse:
    return page_response(content, status)


def _error_page(status: int, message: str) -> HTMLResponse:
    return _page(
        render_page("This sign-in cannot continue", f"<p>{html.escape(message)}</p>"), status
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


async def _parameters(context: ServerContext, request: Request) -> list[tuple[str, str]]:
    """The request's parameters: OIDC Core §3.1.2.1, "Authorization Servers MUST support the
    use of the HTTP GET and POST methods"; with POST they are the form body."""
    if request.method != "POST":
        return request.query_params.multi_items()
    # app.py imports this module, so its form reader is imported when first needed.
    from fleetid.server.app import read_pairs

    # Read as the query is: a parameter given twice is judged by the same rules either way.
    return await read_pairs(request, context.max_body)


async def authorize(context: ServerContext, request: Request) -> Response:
    try:
        query = await _parameters(context, request)
    except InvalidRequest as unreadable:
        # Nothing in an unreadable body can be trusted, the redirect URI least of all.
        return _error_page(400, f"The request cannot be read: {unreadable.description}.")

    revision = context.live.get()
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
    response = _page(page.html)
    _bind(response, interaction.id)
    return response


def _validate(
    revision: Revision,
    client_id: str,
    redirect_uri: str,
    state: str | None,
    query: Sequence[tuple[str, str]],
) -> _Interaction:
    names = {key for key, _ in query}
    # OIDC Core §6: "Should an OP not support this parameter and an RP uses it, the OP MUST
    # return the request_not_supported error" (request_uri_not_supported for request_uri).
    if "request" in names:
        raise _Redirected("request_not_supported", "request objects are not supported")
    if "request_uri" in names:
        raise _Redirected("request_uri_not_supported", "request_uri is not supported")
    if _single(query, "response_type") != "code":
        raise _Redirected("unsupported_response_type", "response_type must be code")
    challenge = _single(query, "code_challenge")
    method = _single(query, "code_challenge_method")
    if not challenge:
        raise _Redirected("invalid_request", "code_challenge is required (PKCE)")
    if method != "S256":
        raise _Redirected("invalid_request", "code_challenge_method must be S256")
    _check_challenge(challenge)
    prompts = set((_single(query, "prompt") or "").split())
    if not prompts <= _PROMPTS:
        raise _Redirected(
            "invalid_request", "prompt may hold only none, login, consent and select_account"
        )
    if "none" in prompts and len(prompts) > 1:
        raise _Redirected("invalid_request", "prompt=none cannot be combined with other values")

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
        _check_requestable(revision, client_id, name, scopes)
        resources.append(name)

    # OIDC Core §3.1.2.1: with `none`, the server "MUST NOT display any authentication or
    # consent user interface pages"; with no sessions kept, a person must always sign in.
    if "none" in prompts:
        raise _Redirected(
            "login_required", "prompt=none was given, and this server keeps no sign-in sessions"
        )
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


def _check_challenge(challenge: str) -> None:
    if len(challenge) != _S256_LENGTH:
        raise _Redirected(
            "invalid_request",
            f"code_challenge must be {_S256_LENGTH} characters, the unpadded base64url of a "
            "SHA-256 digest",
        )
    if not _BASE64URL.fullmatch(challenge):
        raise _Redirected(
            "invalid_request", "code_challenge may hold only base64url characters: A-Z a-z 0-9 - _"
        )


def _requested_on(
    revision: Revision, client_id: str, name: str, scopes: tuple[str, ...]
) -> tuple[str, ...]:
    """The scopes a request asks for on a resource it names: those of its scopes that the
    resource defines or, when it asks for none beyond OpenID's, all the agent's there."""
    if not scopes:
        return tuple(sorted(revision.agent_scopes.get((client_id, name), ())))
    defined = revision.fleet.resources[name].scopes
    return tuple(scope for scope in scopes if scope in defined)


def _check_requestable(
    revision: Revision, client_id: str, name: str, scopes: tuple[str, ...]
) -> None:
    """Refuse, before anyone signs in, a named resource on which the agent could be granted
    nothing whoever signs in: a code for it could never be redeemed."""
    identifier = revision.fleet.resources[name].identifier
    allowed = revision.agent_scopes.get((client_id, name), frozenset())
    if not allowed:
        raise _Redirected("invalid_target", f"{client_id} may request no scope on {identifier}")
    if not allowed.intersection(_requested_on(revision, client_id, name, scopes)):
        raise _Redirected(
            "invalid_target",
            f"none of the requested scopes is one {client_id} may request on {identifier}",
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
    # The consent page shown is for the person who signed in; another sign-in on the same
    # interaction would swap who the code is for behind it.
    if value.get("user"):
        return _error_page(
            409,
            "You have already signed in to this request. To sign in as someone else, "
            "start again from the agent.",
        )
    revision = context.live.get()
    if interaction.client_id not in revision.fleet.agents:
        return _error_page(400, "This agent is no longer part of the fleet.")
    try:
        user = context.signin.complete(revision, interaction.client_id, form)
    except SignInFailed as failed:
        page = context.signin.begin(revision, interaction.client_id, interaction.id)
        notice = f"<p><b>{html.escape(str(failed))}</b></p>"
        return _page(page.html.replace("</h1>", f"</h1>{notice}", 1), 400)

    value["user"] = {
        "user": user.user,
        "tenant": user.tenant,
        "groups": list(user.groups),
        "name": user.name,
        "email": user.email,
        # OIDC Core §2: auth_time is "the time when the End-User authentication occurred".
        "auth_time": int(context.clock()),
    }
    if not context.store.replace(
        INTERACTION_NAMESPACE, interaction.id, value, version=version, expires_at=expires_at
    ):
        return _error_page(409, "This sign-in was completed in another window.")
    decisions = _decide(revision, interaction, user)
    ungranted = _ungranted(revision, interaction, decisions)
    return _page(_consent_page(interaction, user, decisions, ungranted))


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
        if name not in fleet.resources:
            # The resource left the fleet while its user was signing in.
            continue
        if interaction.resources:
            scopes = _requested_on(revision, interaction.client_id, name, interaction.scopes)
        else:
            defined = fleet.resources[name].scopes
            scopes = tuple(scope for scope in interaction.scopes if scope in defined)
        if scopes:
            wanted[name] = scopes
    return wanted


def _decide(revision: Revision, interaction: _Interaction, user: SignedInUser) -> list[Decision]:
    subject = Subject(user.user, user.tenant, user.groups)
    return [
        decide(revision, AccessRequest(interaction.client_id, resource, scopes, subject))
        for resource, scopes in _resources_for(revision, interaction).items()
    ]


def _ungranted(
    revision: Revision, interaction: _Interaction, decisions: list[Decision]
) -> dict[str, tuple[Refusal, ...]]:
    """The resources the request names on which nothing would be granted, and why: RFC 8707
    §2 makes such a resource `invalid_target`, and a code for it could never be redeemed."""
    decided = {decision.request.resource: decision for decision in decisions}
    ungranted: dict[str, tuple[Refusal, ...]] = {}
    for name in interaction.resources:
        decision = decided.get(name)
        if decision is None:
            # Only a revision switched since the request was checked leaves a named
            # resource with nothing asked for on it.
            reason = "the fleet changed: nothing the agent may request there was asked for"
            ungranted[name] = (Refusal("", "", reason),)
        elif not decision.granted:
            ungranted[name] = decision.refused
    return ungranted


def _refusal_lines(refused: tuple[Refusal, ...]) -> list[str]:
    return [
        f"{refusal.scope}: {refusal.reason}" if refusal.scope else refusal.reason
        for refusal in refused
    ]


def _consent_page(
    interaction: _Interaction,
    user: SignedInUser,
    decisions: list[Decision],
    ungranted: Mapping[str, tuple[Refusal, ...]],
) -> str:
    agent = html.escape(interaction.client_id)
    signed_in = (
        f"<p>Signed in as <b>{html.escape(user.name or user.user)}</b> "
        f"(tenant {html.escape(user.tenant)}).</p>"
    )
    hidden = f'<input type="hidden" name="interaction" value="{html.escape(interaction.id)}">'
    if ungranted:
        return _refusal_page(agent, signed_in, hidden, ungranted)

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
    return render_page(
        "Allow access?",
        f"{signed_in}<p><b>{agent}</b> asks to act for you.</p>"
        + "".join(sections)
        + f'<form method="post" action="/authorize/consent">{hidden}'
        '<button type="submit" name="decision" value="allow">Allow</button> '
        '<button type="submit" name="decision" value="deny">Deny</button></form>',
    )


def _refusal_page(
    agent: str, signed_in: str, hidden: str, ungranted: Mapping[str, tuple[Refusal, ...]]
) -> str:
    """A consent page with nothing to allow: it says why, and only returns to the agent."""
    sections = "".join(
        f"<h2>{html.escape(name)}</h2><p>Nothing can be granted on it:</p><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in _refusal_lines(refused))
        + "</ul>"
        for name, refused in ungranted.items()
    )
    return render_page(
        "Access cannot be granted",
        f"{signed_in}<p><b>{agent}</b> asks to act for you on resources where you can "
        "grant it nothing, so this request cannot be allowed.</p>"
        + sections
        + f"<p>Nothing will be shared with <b>{agent}</b>; it will be told why.</p>"
        + f'<form method="post" action="/authorize/consent">{hidden}'
        f'<button type="submit" name="decision" value="{_RETURN}">Return to {agent}</button>'
        "</form>",
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
    answer = form.get("decision")
    if answer not in {"allow", _RETURN}:
        return _deny(context, interaction, parameters)

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
    ungranted = _ungranted(revision, interaction, decisions)
    if ungranted:
        # Decided again, on the live revision: whatever was answered, no code comes of a
        # request naming a resource on which nothing is granted.
        return _refuse_target(
            context,
            revision=revision,
            interaction=interaction,
            decisions=decisions,
            ungranted=ungranted,
            parameters=parameters,
        )
    if answer != "allow":
        # A page with nothing to allow, answered after the fleet changed to allow something:
        # the person did not allow it.
        return _deny(context, interaction, parameters)
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
        auth_time=int(signed_in.get("auth_time", now)),
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


def _deny(
    context: ServerContext, interaction: _Interaction, parameters: dict[str, str]
) -> Response:
    parameters["error"] = "access_denied"
    parameters["error_description"] = "the user denied the request"
    return _redirect(context, interaction.redirect_uri, parameters)


def _refuse_target(
    context: ServerContext,
    *,
    revision: Revision,
    interaction: _Interaction,
    decisions: list[Decision],
    ungranted: Mapping[str, tuple[Refusal, ...]],
    parameters: dict[str, str],
) -> Response:
    for decision in decisions:
        if decision.request.resource in ungranted:
            context.audit.record(
                audit_event(
                    time=context.clock(),
                    event="consent_refused",
                    decision=decision,
                    outcome="no code: nothing can be granted on this resource",
                )
            )
    resources = revision.fleet.resources
    parameters["error"] = "invalid_target"
    parameters["error_description"] = "; ".join(
        f"nothing can be granted on "
        f"{resources[name].identifier if name in resources else name} for this user: "
        + ", ".join(_refusal_lines(refused))
        for name, refused in ungranted.items()
    )
    response = _redirect(context, interaction.redirect_uri, parameters)
    response.delete_cookie(INTERACTION_COOKIE, path="/authorize")
    return response
