"""No input makes the server answer 500 (app.py's promise): random forms, bodies and headers
posted to every POST endpoint, random query strings to /authorize.

The strategies mix noise with the parameters, agents, resources and genuine tokens of the
fleet, so that requests get past parsing and authentication into the grants.

Header values range over Latin-1, which HTTP/1.1 servers hand an application as they came;
interaction ids over any length, past the store's key limit.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serverkit import (
    ACCESS_TOKEN_TYPE,
    CRM,
    KEYED,
    RECONCILER,
    REDIRECT,
    SALES,
    TOOLS,
    Server,
    agent_urn,
    new_verifier,
    s256,
)

from fleetid.server.authorize import INTERACTION_COOKIE
from fleetid.server.clients import ASSERTION_TYPE

POST_ENDPOINTS = (
    "/token",
    "/introspect",
    "/revoke",
    "/userinfo",
    "/authorize/sign-in",
    "/authorize/consent",
)
PARAMETERS = (
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "resource",
    "audience",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "requested_token_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "token",
    "token_type_hint",
    "access_token",
    "interaction",
    "user",
    "decision",
)
KNOWN_VALUES = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    ACCESS_TOKEN_TYPE,
    "urn:ietf:params:oauth:token-type:jwt",
    ASSERTION_TYPE,
    "access_token",
    SALES,
    RECONCILER,
    KEYED,
    CRM,
    TOOLS,
    "crm",
    agent_urn(SALES),
    agent_urn("support-triage"),
    "crm:read crm:write",
    "openid profile",
    REDIRECT[SALES],
    "alice",
    "carol",
    "allow",
    "deny",
    "a.b.c",
    "e30.e30.",
    "",
)
EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=200)
_noise = st.text(max_size=60)
_interaction = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';,"\\'),
    min_size=1,
    max_size=1500,
)


@pytest.fixture(scope="module")
def genuine(shared_server: Server) -> dict[str, str]:
    """Real tokens of the shared server, for the strategies to post."""
    tokens = shared_server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    authorization = shared_server.authorize(SALES, "alice", scope="openid crm:read")
    return {
        "sign_in": tokens["access_token"],
        "refresh": tokens["refresh_token"],
        "id_token": tokens["id_token"],
        "machine": shared_server.machine_token(RECONCILER),
        "code": authorization.code,
        "assertion": shared_server.assertion(),
    }


def _value(data: st.DataObject, genuine: dict[str, str]) -> str:
    return data.draw(
        st.one_of(st.sampled_from(KNOWN_VALUES), st.sampled_from(sorted(genuine.values())), _noise)
    )


def _form(data: st.DataObject, genuine: dict[str, str]) -> list[tuple[str, str]]:
    names = st.one_of(st.sampled_from(PARAMETERS), _noise)
    count = data.draw(st.integers(0, 8))
    return [(data.draw(names), _value(data, genuine)) for _ in range(count)]


def _authorization(data: st.DataObject, server: Server) -> str | None:
    kind = data.draw(st.sampled_from(["none", "basic", "basic-noise", "bearer", "noise"]))
    if kind == "none":
        return None
    if kind == "basic":
        agent = data.draw(st.sampled_from([SALES, RECONCILER, KEYED, "nobody"]))
        secret = server.secrets.secret(agent) or "x"
        credentials = f"{agent}:{secret}".encode()
        return "Basic " + base64.b64encode(credentials).decode()
    if kind == "basic-noise":
        return "Basic " + data.draw(_header_value)
    if kind == "bearer":
        return "Bearer " + data.draw(_header_value)
    return data.draw(_header_value)


def _latin1(headers: dict[str, str]) -> dict[str, bytes]:
    """As bytes: httpx refuses non-ASCII header text, but sends bytes as they are."""
    return {name: value.encode("latin-1") for name, value in headers.items()}


def _headers(data: st.DataObject, server: Server, body: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    content_type = data.draw(
        st.one_of(
            st.just("application/x-www-form-urlencoded"),
            st.just("application/x-www-form-urlencoded; charset=utf-8"),
            st.sampled_from(["application/json", "text/plain", ""]),
            _header_value,
        )
    )
    if content_type:
        headers["Content-Type"] = content_type
    authorization = _authorization(data, server)
    if authorization is not None:
        headers["Authorization"] = authorization
    if data.draw(st.booleans()):
        headers["Content-Length"] = data.draw(
            st.one_of(st.integers(0, 2 * len(body) + 10).map(str), _header_value)
        )
    if data.draw(st.booleans()):
        headers["Cookie"] = f"{INTERACTION_COOKIE}={data.draw(_interaction)}"
    return headers


def _assert_no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)


@pytest.mark.parametrize("path", POST_ENDPOINTS)
@EXAMPLES
@given(data=st.data())
def test_no_form_makes_an_endpoint_fail(
    shared_server: Server, genuine: dict[str, str], path: str, data: st.DataObject
) -> None:
    form = _form(data, genuine)
    body = urlencode(form).encode()
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=300))
    headers = _headers(data, shared_server, body)
    if path.startswith("/authorize/") and data.draw(st.booleans()):
        # The interaction id and its cookie agree: the request reaches the store.
        interaction = data.draw(_interaction)
        form.append(("interaction", interaction))
        body = urlencode(form).encode()
        headers["Cookie"] = f"{INTERACTION_COOKIE}={interaction}"
        headers.pop("Content-Length", None)

    response = shared_server.client.post(path, content=body, headers=_latin1(headers))

    _assert_no_server_error(response)


@EXAMPLES
@given(data=st.data())
def test_no_query_makes_the_authorization_endpoint_fail(
    shared_server: Server, genuine: dict[str, str], data: st.DataObject
) -> None:
    verifier = new_verifier()
    base = (
        data.draw(st.lists(st.sampled_from(["client_id", "redirect_uri"]), max_size=2))
        if data.draw(st.booleans())
        else []
    )
    query: list[tuple[str, Any]] = [("client_id", SALES), ("redirect_uri", REDIRECT[SALES])]
    query = [pair for pair in query if pair[0] not in base]
    names = st.one_of(
        st.sampled_from(
            [
                "response_type",
                "scope",
                "state",
                "nonce",
                "resource",
                "code_challenge",
                "code_challenge_method",
                "client_id",
                "redirect_uri",
                "prompt",
            ]
        ),
        _noise,
    )
    values = st.one_of(
        st.sampled_from(["code", "S256", "plain", s256(verifier), "openid crm:read", CRM]),
        st.sampled_from(KNOWN_VALUES),
        st.text(max_size=2100),
    )
    query += data.draw(st.lists(st.tuples(names, values), max_size=10))

    response = shared_server.client.get("/authorize", params=query)

    _assert_no_server_error(response)


@EXAMPLES
@given(
    raw=st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
        max_size=400,
    )
)
def test_no_raw_query_string_makes_the_authorization_endpoint_fail(
    shared_server: Server, raw: str
) -> None:
    prefix = f"client_id={SALES}&redirect_uri={REDIRECT[SALES]}&"
    for query in (raw, prefix + raw):
        response = shared_server.client.get(httpx.URL("/authorize", query=query.encode()))

        _assert_no_server_error(response)


# -- the inputs left out above, each a bug -------------------------------------------------


def test_basic_credentials_that_are_not_ascii_are_invalid_client(server: Server) -> None:
    response = server.client.post(
        "/token",
        content=b"grant_type=client_credentials",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": b"Basic \xe9t\xe9",
        },
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


@pytest.mark.parametrize("path", ["/authorize/sign-in", "/authorize/consent"])
def test_an_oversized_interaction_id_is_an_error_page(server: Server, path: str) -> None:
    interaction = "i" * 1025

    response = server.client.post(
        path,
        content=f"interaction={interaction}&user=alice&decision=allow".encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"{INTERACTION_COOKIE}={interaction}",
        },
    )

    assert response.status_code == 400


@pytest.mark.parametrize("path", POST_ENDPOINTS)
def test_a_client_that_leaves_mid_body_is_not_a_server_failure(
    server: Server, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages: list[dict[str, Any]] = []
    arrivals = iter(
        [
            {"type": "http.request", "body": b"token=abc", "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(arrivals)

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", b"100"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8787),
    }

    asyncio.run(server.app(scope, receive, send))

    statuses = [m["status"] for m in messages if m["type"] == "http.response.start"]
    assert 500 not in statuses
    assert "unexpected failure" not in caplog.text
