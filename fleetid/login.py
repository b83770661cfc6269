"""`fleetid login`: the real authorization code + PKCE flow against a running server, as a
browserless client that drives the local sign-in and consent pages.

It is what a developer uses to get a user's token for an agent without a browser: it reads
the agent's client secret from the server's state folder and prints the token response.
The consent page says which scopes the person's consent covers and why the others are
refused; they are read from it, since a sign-in token addressed to the agent carries only
the OpenID Connect scopes, and the resource scopes arrive later through token exchange.

When a step fails, `LoginFailed` says which step and what the server said: the error and
description of a JSON answer, or the heading and first paragraph of an HTML page, shortened
to one line.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

__all__ = [
    "REASON_LIMIT",
    "LoginFailed",
    "SignedIn",
    "login",
    "server_reason",
    "transport_problem",
]

# Long enough for any sentence fleetid's pages say; a stranger's page is cut short.
REASON_LIMIT = 200
_OIDC_SCOPES = ("openid", "profile", "email")


class LoginFailed(Exception):
    """The flow stopped; the message says at which step and why."""


@dataclass(frozen=True)
class SignedIn:
    """The token response, and what the person's consent covers."""

    token: dict[str, Any]
    consented: frozenset[str] = frozenset()
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def granted(self) -> frozenset[str]:
        """Every scope the token carries or the consent covers."""
        scope = self.token.get("scope")
        carried = scope.split() if isinstance(scope, str) else ()
        return frozenset(carried) | self.consented

    def not_granted(self, requested: Sequence[str]) -> dict[str, str]:
        """Each requested scope left out, with the server's reason when it gave one."""
        return {
            scope: self.refused.get(scope, "no resource of this sign-in defines it")
            for scope in dict.fromkeys(requested)
            if scope not in self.granted
        }


@dataclass
class _Form:
    action: str
    fields: dict[str, str]


class _FormReader(HTMLParser):
    """The first form of a page, with its hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.form: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and self.form is None:
            self.form = _Form(attributes.get("action", ""), {})
        elif tag == "input" and self.form is not None and attributes.get("type") == "hidden":
            self.form.fields[attributes.get("name", "")] = attributes.get("value", "")


class _ConsentReader(HTMLParser):
    """The decisions on fleetid's consent page: under each resource's heading, the first
    list holds the scopes granted, the second `scope: reason` for each one refused."""

    def __init__(self) -> None:
        super().__init__()
        self.granted: set[str] = set()
        self.refused: dict[str, str] = {}
        self._lists = -1
        self._item: list[str] | None = None
        self._placeholder = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._lists = 0
        elif tag == "ul" and self._lists >= 0:
            self._lists += 1
        elif tag == "li" and self._lists > 0:
            self._item = []
            self._placeholder = False
        elif tag == "i" and self._item is not None:
            # "nothing", in italics, stands in for an empty list.
            self._placeholder = True

    def handle_data(self, data: str) -> None:
        if self._item is not None:
            self._item.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag != "li" or self._item is None:
            return
        text = "".join(self._item).strip()
        if self._lists == 1 and not self._placeholder:
            self.granted.add(text)
        elif self._lists == 2:
            scope, _, reason = text.partition(": ")
            self.refused[scope] = reason
        self._item = None


class _PageText(HTMLParser):
    """The headings and paragraphs of a page's body, leaving out forms, styles and scripts."""

    _SKIPPED = frozenset({"head", "title", "style", "script", "form", "button", "select"})
    _BLOCKS = frozenset(
        {"h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "div", "td", "th", "pre", "center"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.paragraphs: list[str] = []
        self._skipping = 0
        self._heading = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self._flush()
            self._heading = tag.startswith("h") and tag[1:].isdigit()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self._flush()
            self._heading = False

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        text = " ".join("".join(self._text).split())
        self._text = []
        if text:
            (self.headings if self._heading else self.paragraphs).append(text)


def _one_line(text: str) -> str:
    printable = "".join(character if character.isprintable() else " " for character in text)
    line = " ".join(printable.split())
    return line if len(line) <= REASON_LIMIT else line[: REASON_LIMIT - 1].rstrip() + "…"


def server_reason(response: httpx.Response) -> str:
    """What the server said about a failure, as one short line; empty when it said nothing."""
    kind = response.headers.get("content-type", "")
    if "json" in kind:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            description = body.get("error_description")
            said = body["error"]
            return _one_line(f"{said}: {description}" if isinstance(description, str) else said)
    if "html" in kind:
        page = _PageText()
        page.feed(response.text)
        page.close()
        return _one_line(": ".join([*page.headings[:1], *page.paragraphs[:1]]))
    return _one_line(response.text)


def _answered(step: str, response: httpx.Response) -> LoginFailed:
    reason = server_reason(response)
    said = f": {reason}" if reason else ""
    return LoginFailed(f"{step}: the server answered {response.status_code}{said}")


def transport_problem(exc: httpx.HTTPError) -> str:
    """Where a request went and why no answer came back, without the URL's query."""
    said = re.sub(r"^\[Errno -?\d+\] ", "", str(exc))
    reason = said[:1].lower() + said[1:] if said else type(exc).__name__
    try:
        url = exc.request.url
    except RuntimeError:
        return f"the server: {reason}"
    return f"{url.copy_with(query=None, fragment=None)}: {_one_line(reason)}"


def _form(response: httpx.Response, step: str) -> _Form:
    if response.status_code != 200:
        raise _answered(step, response)
    reader = _FormReader()
    reader.feed(response.text)
    if reader.form is None:
        raise LoginFailed(f"{step}: the page has no form")
    return reader.form


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def login(
    server: str,
    *,
    client_id: str,
    client_secret: str,
    user: str,
    redirect_uri: str,
    resources: Sequence[str] = (),
    scopes: Sequence[str] = (),
    http: httpx.Client | None = None,
) -> SignedIn:
    client = http or httpx.Client(timeout=30, follow_redirects=False)
    try:
        return _flow(
            client,
            server.rstrip("/"),
            client_id,
            client_secret,
            user,
            redirect_uri,
            resources,
            scopes,
        )
    except httpx.HTTPError as exc:
        raise LoginFailed(f"cannot reach {transport_problem(exc)}") from exc
    finally:
        if http is None:
            client.close()


def _discovery(client: httpx.Client, server: str) -> dict[str, Any]:
    url = f"{server}/.well-known/openid-configuration"
    response = client.get(url)
    if response.status_code != 200:
        raise LoginFailed(
            f"{url} answered {response.status_code}, not with a discovery document; "
            f"is {server} a fleetid server?"
        )
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise LoginFailed(f"{url} is not a JSON discovery document; is {server} a fleetid server?")
    missing = [
        name
        for name in ("issuer", "authorization_endpoint", "token_endpoint")
        if not isinstance(document.get(name), str)
    ]
    if missing:
        raise LoginFailed(f"the discovery document at {url} has no {', '.join(missing)}")
    discovery: dict[str, Any] = document
    return discovery


def _location(response: httpx.Response, step: str) -> str:
    location: str | None = response.headers.get("location")
    if location is None:
        raise LoginFailed(f"{step}: the server redirected without a Location")
    return location


def _flow(
    client: httpx.Client,
    server: str,
    client_id: str,
    client_secret: str,
    user: str,
    redirect_uri: str,
    resources: Sequence[str],
    scopes: Sequence[str],
) -> SignedIn:
    discovery = _discovery(client, server)
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(16)
    query: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", " ".join([*_OIDC_SCOPES, *scopes])),
        ("state", state),
        ("nonce", secrets.token_urlsafe(16)),
        ("code_challenge", _challenge(verifier)),
        ("code_challenge_method", "S256"),
        *(("resource", resource) for resource in resources),
    ]
    page = client.get(f"{discovery['authorization_endpoint']}?{urlencode(query)}")
    if page.status_code in (302, 303):
        _raise_from_redirect(_location(page, "authorization"))
    sign_in = _form(page, "authorization")
    consent_page = client.post(
        urljoin(str(page.url), sign_in.action), data={**sign_in.fields, "user": user}
    )
    consent = _form(consent_page, "sign-in")
    decisions = _ConsentReader()
    decisions.feed(consent_page.text)
    answer = client.post(
        urljoin(str(consent_page.url), consent.action),
        data={**consent.fields, "decision": "allow"},
    )
    if answer.status_code not in (302, 303):
        raise _answered("consent", answer)

    location = _location(answer, "consent")
    callback = parse_qs(urlsplit(location).query)
    if callback.get("state") != [state]:
        raise LoginFailed("the authorization response's state does not match")
    if callback.get("iss") != [discovery["issuer"]]:
        raise LoginFailed("the authorization response's iss is not the server's issuer")
    if "code" not in callback:
        _raise_from_redirect(location)
    token = client.post(
        discovery["token_endpoint"],
        auth=(client_id, client_secret),
        data={
            "grant_type": "authorization_code",
            "code": callback["code"][0],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            **({"resource": resources[0]} if len(resources) == 1 else {}),
        },
    )
    if token.status_code != 200:
        raise _answered("token", token)
    try:
        body = token.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise LoginFailed("token: the response is not a token response")
    return SignedIn(body, frozenset(decisions.granted), decisions.refused)


def _raise_from_redirect(location: str) -> None:
    answer = parse_qs(urlsplit(location).query)
    error = answer.get("error", ["no code"])[0]
    description = answer.get("error_description", [""])[0]
    raise LoginFailed(_one_line(f"authorization: {error}: {description}"))
