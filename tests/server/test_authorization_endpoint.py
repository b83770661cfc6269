"""The authorization endpoint (RFC 6749 §4.1.1-4.1.2, OAuth 2.1, RFC 9207), its sign-in and
consent steps.

Until the client and its redirect URI are known to be genuine, an error is a page and never
a redirect (RFC 6749 §4.1.2.1); after that it goes back to the client with `state` and
`iss`. The interaction is bound to the browser that started it by a cookie and is
answered once.
"""

from __future__ import annotations

import httpx
import pytest
from serverkit import (
    CRM,
    FINANCE,
    ISSUER,
    REDIRECT,
    SALES,
    SUPPORT,
    Server,
    interaction_of,
    new_verifier,
    redirect_parameters,
    s256,
)

from fleetid.server.authorize import INTERACTION_COOKIE


def _query(server: Server, agent: str = SALES, **changes: str | None) -> list[tuple[str, str]]:
    """An authorization request for `agent`, with parameters replaced or (None) removed."""
    base = dict(server.authorize_query(agent, scope="openid crm:read", verifier=new_verifier()))
    for name, value in changes.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return list(base.items())


def _assert_error_page(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")


def _assert_redirected_error(response: httpx.Response, agent: str, error: str) -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT[agent] + "?")
    parameters = redirect_parameters(location)
    assert parameters["error"] == error
    assert parameters["iss"] == ISSUER
    assert "code" not in parameters
    return parameters


# -- errors shown as a page ---------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["nobody", "", "SALES-ASSISTANT", None])
def test_an_unknown_client_gets_an_error_page(server: Server, client_id: str | None) -> None:
    response = server.client.get("/authorize", params=_query(server, client_id=client_id))

    _assert_error_page(response)


def test_a_client_id_given_twice_gets_an_error_page(server: Server) -> None:
    query = [*_query(server), ("client_id", SALES)]

    response = server.client.get("/authorize", params=query)

    _assert_error_page(response)


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example.com/callback",
        REDIRECT[SUPPORT],
        REDIRECT[SALES] + "/",
        REDIRECT[SALES] + "?next=x",
        REDIRECT[SALES].upper(),
        None,
    ],
)
def test_an_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(
    server: Server, redirect_uri: str | None
) -> None:
    response = server.client.get("/authorize", params=_query(server, redirect_uri=redirect_uri))

    _assert_error_page(response)


def test_an_unregistered_redirect_uri_wins_over_every_other_error(server: Server) -> None:
    query = _query(
        server,
        redirect_uri="https://evil.example.com/callback",
        response_type="token",
        code_challenge=None,
    )

    response = server.client.get("/authorize", params=query)

    _assert_error_page(response)


# -- errors sent back to the client -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": "s256"}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"response_type": None}, "unsupported_response_type"),
        ({"resource": "https://evil.example.com"}, "invalid_target"),
    ],
    ids=[
        "no-challenge",
        "no-pkce",
        "no-method",
        "plain",
        "lowercase-s256",
        "short-challenge",
        "token",
        "hybrid",
        "no-response-type",
        "unknown-resource",
    ],
)
def test_an_invalid_request_is_redirected_with_error_state_and_iss(
    server: Server, changes: dict[str, str | None], error: str
) -> None:
    response = server.client.get("/authorize", params=_query(server, **changes))

    parameters = _assert_redirected_error(response, SALES, error)
    assert parameters["state"] == "state-1"


def test_a_plain_challenge_is_refused_even_when_it_would_be_long_enough(server: Server) -> None:
    verifier = new_verifier()
    query = _query(server, code_challenge=verifier, code_challenge_method="plain")

    response = server.client.get("/authorize", params=query)

    _assert_redirected_error(response, SALES, "invalid_request")


def test_a_duplicated_parameter_is_redirected_as_invalid_request(server: Server) -> None:
    query = [*_query(server), ("code_challenge", s256(new_verifier()))]

    response = server.client.get("/authorize", params=query)

    _assert_redirected_error(response, SALES, "invalid_request")


def test_an_error_without_state_is_redirected_without_state(server: Server) -> None:
    response = server.client.get(
        "/authorize", params=_query(server, state=None, response_type="token")
    )

    parameters = _assert_redirected_error(response, SALES, "unsupported_response_type")
    assert "state" not in parameters


# -- the interaction ----------------------------------------------------------------------


def test_a_valid_request_shows_sign_in_and_binds_a_cookie(server: Server) -> None:
    response = server.client.get("/authorize", params=_query(server))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    interaction = interaction_of(response.text)
    assert server.client.cookies.get(INTERACTION_COOKIE) == interaction
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie


def test_the_sign_in_page_lists_only_users_of_tenants_the_agent_serves(server: Server) -> None:
    response = server.client.get("/authorize", params=_query(server, FINANCE))

    assert 'value="dan"' in response.text
    assert 'value="carol"' not in response.text


def test_a_user_of_a_tenant_the_agent_does_not_serve_cannot_sign_in(server: Server) -> None:
    interaction, _ = server.start(FINANCE, scope="tools:search")

    response = server.post_form(
        "/authorize/sign-in", {"interaction": interaction, "user": "carol"}
    )

    assert response.status_code == 400
    assert "does not serve tenant globex" in response.text


def test_the_consent_page_shows_what_the_policy_decided(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="crm:read crm:write", resources=[CRM])

    response = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "bob"})

    assert response.status_code == 200
    granted, refused = response.text.split("It will not get:")
    assert "<li>crm:read</li>" in granted
    assert "crm:write" in refused


def test_allowing_redirects_with_a_code_state_and_iss(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(interaction, "bob")

    response = server.consent(interaction)

    assert response.status_code == 303
    parameters = redirect_parameters(response.headers["location"])
    assert set(parameters) == {"code", "state", "iss"}
    assert parameters["state"] == "state-1"
    assert parameters["iss"] == ISSUER
    assert INTERACTION_COOKIE in response.headers.get("set-cookie", "")


def test_denying_redirects_with_access_denied(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(interaction, "bob")

    response = server.consent(interaction, "deny")

    parameters = _assert_redirected_error(response, SALES, "access_denied")
    assert parameters["state"] == "state-1"


def test_consent_without_the_interaction_cookie_is_refused(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(interaction, "bob")

    response = server.consent(interaction, client=server.browser())

    assert response.status_code == 400
    assert "location" not in response.headers


def test_consent_with_another_interactions_cookie_is_refused(server: Server) -> None:
    mine, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(mine, "bob")
    other_browser = server.browser()
    theirs, _ = server.start(SALES, scope="openid crm:read", resources=[CRM], client=other_browser)

    # The other browser posts my interaction id with its own cookie.
    response = server.consent(mine, client=other_browser)

    assert response.status_code == 400
    assert "location" not in response.headers
    assert theirs != mine


def test_sign_in_without_the_interaction_cookie_is_refused(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid")

    response = server.post_form(
        "/authorize/sign-in", {"interaction": interaction, "user": "bob"}, client=server.browser()
    )

    assert response.status_code == 400


def test_consent_before_sign_in_is_refused(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])

    response = server.consent(interaction)

    assert response.status_code == 400
    assert "location" not in response.headers


@pytest.mark.parametrize(("first", "second"), [("allow", "allow"), ("deny", "allow")])
def test_an_interaction_is_answered_once(server: Server, first: str, second: str) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(interaction, "bob")
    server.client.cookies.set(INTERACTION_COOKIE, interaction, path="/authorize")
    answered = server.consent(interaction, first)
    # The first answer clears the cookie; a replaying browser sends it again.
    server.client.cookies.set(INTERACTION_COOKIE, interaction, path="/authorize")

    again = server.consent(interaction, second)

    assert answered.status_code == 303
    assert again.status_code == 400
    assert "location" not in again.headers


def test_an_interaction_expires(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.clock.advance(601)

    response = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "bob"})

    assert response.status_code == 400


def test_the_authorization_endpoint_does_not_accept_post(server: Server) -> None:
    response = server.client.post("/authorize", data=dict(_query(server)))

    assert response.status_code == 405
