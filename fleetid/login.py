"""`fleetid login`: the real authorization code + PKCE flow against a running server, as a
browserless client that drives the local sign-in and consent pages.

It is what a developer uses to get a user's token for an agent without a browser: it reads
the agent's client secret from the server's state folder and prints the token response.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

__all__ = ["LoginFailed", "login"]


class LoginFailed(Exception):
    """The flow stopped; the message says at which step and why."""


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


def _form(response: httpx.Response, step: str) -> _Form:
    if response.status_code != 200:
        raise LoginFailed(f"{step}: the server answered {response.status_code}")
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
) -> dict[str, Any]:
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
        raise LoginFailed(f"cannot reach {server}: {type(exc).__name__}") from exc
    finally:
        if http is None:
            client.close()


def _flow(
    client: httpx.Client,
    server: str,
    client_id: str,
    client_secret: str,
    user: str,
    redirect_uri: str,
    resources: Sequence[str],
    scopes: Sequence[str],
) -> dict[str, Any]:
    discovery = client.get(f"{server}/.well-known/openid-configuration").json()
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(16)
    query: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", " ".join(["openid", "profile", "email", *scopes])),
        ("state", state),
        ("nonce", secrets.token_urlsafe(16)),
        ("code_challenge", _challenge(verifier)),
        ("code_challenge_method", "S256"),
        *(("resource", resource) for resource in resources),
    ]
    page = client.get(f"{discovery['authorization_endpoint']}?{urlencode(query)}")
    if page.status_code in (302, 303):
        _raise_from_redirect(page.headers["location"])
    sign_in = _form(page, "authorization")
    consent_page = client.post(f"{server}{sign_in.action}", data={**sign_in.fields, "user": user})
    consent = _form(consent_page, "sign-in")
    answer = client.post(f"{server}{consent.action}", data={**consent.fields, "decision": "allow"})
    if answer.status_code not in (302, 303):
        raise LoginFailed(f"consent: the server answered {answer.status_code}")

    callback = parse_qs(urlsplit(answer.headers["location"]).query)
    if callback.get("state") != [state]:
        raise LoginFailed("the authorization response's state does not match")
    if callback.get("iss") != [discovery["issuer"]]:
        raise LoginFailed("the authorization response's iss is not the server's issuer")
    if "code" not in callback:
        _raise_from_redirect(answer.headers["location"])
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
    body = token.json()
    if token.status_code != 200:
        raise LoginFailed(f"token: {body.get('error')}: {body.get('error_description', '')}")
    if not isinstance(body, dict):
        raise LoginFailed("token: the response is not a JSON object")
    return body


def _raise_from_redirect(location: str) -> None:
    answer = parse_qs(urlsplit(location).query)
    error = answer.get("error", ["no code"])[0]
    description = answer.get("error_description", [""])[0]
    raise LoginFailed(f"authorization: {error}: {description}")
