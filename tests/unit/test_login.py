"""`fleetid.login` against servers that answer as no fleetid server would: what it says
about each failure, and how it reads a failure page, without a real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fleetid.login import REASON_LIMIT, LoginFailed, SignedIn, login, server_reason

SERVER = "http://id.example.test"
DISCOVERY = f"{SERVER}/.well-known/openid-configuration"

Answer = Callable[[httpx.Request], httpx.Response]


def _login(answer: Answer) -> SignedIn:
    with httpx.Client(transport=httpx.MockTransport(answer)) as http:
        return login(
            SERVER,
            client_id="sales-assistant",
            client_secret="fis_secret",
            user="alice",
            redirect_uri="http://127.0.0.1:8765/callback",
            http=http,
        )


def _failure(answer: Answer) -> str:
    with pytest.raises(LoginFailed) as failed:
        _login(answer)
    return str(failed.value)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            httpx.Response(404, text="not here"),
            f"{DISCOVERY} answered 404, not with a discovery document; "
            f"is {SERVER} a fleetid server?",
        ),
        (
            httpx.Response(200, html="<html><body>Welcome</body></html>"),
            f"{DISCOVERY} is not a JSON discovery document; is {SERVER} a fleetid server?",
        ),
        (
            httpx.Response(200, json=["a", "list"]),
            f"{DISCOVERY} is not a JSON discovery document; is {SERVER} a fleetid server?",
        ),
        (
            httpx.Response(200, json={"issuer": SERVER}),
            f"the discovery document at {DISCOVERY} has no authorization_endpoint, token_endpoint",
        ),
    ],
    ids=["404", "html", "list", "incomplete"],
)
def test_a_server_that_is_no_fleetid_server_is_named(
    response: httpx.Response, message: str
) -> None:
    assert _failure(lambda request: response) == message


def test_an_unreachable_server_is_named_without_the_query() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    assert _failure(refuse) == f"cannot reach {DISCOVERY}: connection refused"


def _discovered(then: Answer) -> Answer:
    def answer(request: httpx.Request) -> httpx.Response:
        if str(request.url) == DISCOVERY:
            return httpx.Response(
                200,
                json={
                    "issuer": SERVER,
                    "authorization_endpoint": f"{SERVER}/authorize",
                    "token_endpoint": f"{SERVER}/token",
                },
            )
        return then(request)

    return answer


def test_an_error_page_is_given_as_its_heading_and_first_paragraph() -> None:
    page = (
        "<!doctype html><html><head><title>Oops · fleetid</title><style>p{x:y}</style></head>"
        "<body><h1>This sign-in cannot continue</h1>"
        "<p>The redirect URI is not registered for this client.</p>"
        "<p>Ask the fleet's owners.</p><form><button>Back</button></form></body></html>"
    )

    message = _failure(_discovered(lambda request: httpx.Response(400, html=page)))

    assert message == (
        "authorization: the server answered 400: This sign-in cannot continue: "
        "The redirect URI is not registered for this client."
    )


def test_a_json_error_is_given_as_error_and_description() -> None:
    body = {"error": "invalid_request", "error_description": "redirect_uri is missing"}

    message = _failure(_discovered(lambda request: httpx.Response(400, json=body)))

    assert message == "authorization: the server answered 400: invalid_request: " + (
        "redirect_uri is missing"
    )


def test_a_redirect_without_a_location_is_a_failure() -> None:
    message = _failure(_discovered(lambda request: httpx.Response(303)))

    assert message == "authorization: the server redirected without a Location"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"content-type": "text/plain"}, "  bad\n\trequest \x1b[31m ", "bad request [31m"),
        ({"content-type": "text/html"}, "<h1>Gone</h1>", "Gone"),
        ({"content-type": "text/html"}, "<form><p>only a form</p></form>", ""),
        ({"content-type": "application/json"}, '{"error": "denied"}', "denied"),
        ({"content-type": "application/json"}, "not json", "not json"),
        ({}, "", ""),
    ],
)
def test_server_reason_is_one_printable_line(
    headers: dict[str, str], body: str, reason: str
) -> None:
    assert server_reason(httpx.Response(400, headers=headers, text=body)) == reason


def test_server_reason_is_bounded() -> None:
    reason = server_reason(httpx.Response(500, text="word " * 500))

    assert len(reason) == REASON_LIMIT
    assert reason.endswith("…")


def _signed_in(**token: Any) -> SignedIn:
    return SignedIn(
        {"access_token": "x", **token},
        consented=frozenset({"crm:read"}),
        refused={"crm:write": "needs a person's approval"},
    )


def test_not_granted_names_each_scope_left_out_with_its_reason() -> None:
    signed_in = _signed_in(scope="openid profile email")

    assert signed_in.not_granted(["crm:read", "crm:write", "bogus:scope"]) == {
        "crm:write": "needs a person's approval",
        "bogus:scope": "no resource of this sign-in defines it",
    }


def test_a_scope_the_token_carries_is_granted() -> None:
    assert _signed_in(scope="tools:search").not_granted(["tools:search", "crm:read"]) == {}
