"""The authorization endpoint (RFC 6749 §4.1.1-4.1.2, OAuth 2.1, RFC 9207), its sign-in and
consent steps.

The request is a query (GET) or a form (POST, OIDC Core §3.1.2.1). Until the client and
its redirect URI are known to be genuine, an error is a page and never a redirect (RFC 6749
§4.1.2.1); after that it goes back to the client with `state` and `iss`. The interaction is
bound to the browser that started it by a cookie, signed in to once and answered once; a
resource on which nothing can be granted never yields a code (RFC 8707 §2). No page may be
framed (RFC 9700 §4.16).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

import httpx
import pytest
from serverkit import (
    CRM,
    FINANCE,
    ISSUER,
    REDIRECT,
    SALES,
    SUPPORT,
    TOOLS,
    Authorization,
    Server,
    claims_of,
    interaction_of,
    new_verifier,
    redirect_parameters,
    s256,
)

from fleetid.server.authorize import INTERACTION_COOKIE
from fleetid.server.context import MAX_BODY_BYTES
from fleetid.server.grants.authorization_code import CODE_NAMESPACE
from fleetid.server.issuance import GRANT_NAMESPACE

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


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


def _assert_not_framable(response: httpx.Response) -> None:
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == "frame-ancestors 'none'"


def _post(server: Server, query: Sequence[tuple[str, str]]) -> httpx.Response:
    return server.client.post("/authorize", content=urlencode(list(query)).encode(), headers=FORM)


def _codes_and_grants(server: Server) -> int:
    store = server.context.store
    return sum(1 for namespace in (CODE_NAMESPACE, GRANT_NAMESPACE) for _ in store.scan(namespace))


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


@pytest.mark.parametrize(
    ("challenge", "wrong"),
    [
        ("é" * 43, "base64url"),
        ("\uff41" * 43, "base64url"),
        ("+/" + "A" * 41, "base64url"),
        ("A" * 42 + "\n", "base64url"),
        ("A" * 42 + "=", "base64url"),
        (s256("a" * 43) + "=", "43 characters"),
        ("A" * 42, "43 characters"),
        ("A" * 44, "43 characters"),
        (new_verifier(), "43 characters"),
        ("A" * 128, "43 characters"),
    ],
    ids=[
        "non-ascii",
        "fullwidth",
        "base64-not-url",
        "newline",
        "padding-char",
        "padded",
        "42",
        "44",
        "verifier-sized",
        "128",
    ],
)
def test_a_challenge_that_is_no_s256_digest_is_invalid_request(
    server: Server, challenge: str, wrong: str
) -> None:
    # RFC 7636 §4.2: code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier))).
    response = server.client.get("/authorize", params=_query(server, code_challenge=challenge))

    parameters = _assert_redirected_error(response, SALES, "invalid_request")
    assert parameters["state"] == "state-1"
    assert "code_challenge" in parameters["error_description"]
    assert wrong in parameters["error_description"]
    assert parameters["error_description"].isascii()


@pytest.mark.parametrize(
    ("parameter", "error"),
    [("request", "request_not_supported"), ("request_uri", "request_uri_not_supported")],
)
def test_a_request_object_is_refused_as_not_supported(
    server: Server, parameter: str, error: str
) -> None:
    value = "eyJhbGciOiJub25lIn0.e30." if parameter == "request" else "https://rp.example/r"

    response = server.client.get("/authorize", params=[*_query(server), (parameter, value)])

    parameters = _assert_redirected_error(response, SALES, error)
    assert parameters["state"] == "state-1"


def test_discovery_says_request_objects_are_not_supported(server: Server) -> None:
    metadata = server.client.get("/.well-known/openid-configuration").json()

    assert metadata["request_parameter_supported"] is False
    # OIDC Discovery: request_uri_parameter_supported defaults to true when left out.
    assert metadata["request_uri_parameter_supported"] is False


def test_prompt_none_is_login_required_because_no_session_is_kept(server: Server) -> None:
    response = server.client.get("/authorize", params=_query(server, prompt="none"))

    parameters = _assert_redirected_error(response, SALES, "login_required")
    assert parameters["state"] == "state-1"
    assert INTERACTION_COOKIE not in server.client.cookies


def test_prompt_none_on_an_invalid_request_reports_what_is_invalid(server: Server) -> None:
    response = server.client.get(
        "/authorize", params=_query(server, prompt="none", code_challenge=None)
    )

    _assert_redirected_error(response, SALES, "invalid_request")


@pytest.mark.parametrize("prompt", ["none login", "consent none", "bogus", "login bogus"])
def test_an_undefined_or_contradictory_prompt_is_invalid_request(
    server: Server, prompt: str
) -> None:
    response = server.client.get("/authorize", params=_query(server, prompt=prompt))

    parameters = _assert_redirected_error(response, SALES, "invalid_request")
    assert "prompt" in parameters["error_description"]
    assert parameters["state"] == "state-1"


@pytest.mark.parametrize("prompt", ["login", "consent", "select_account", "login consent", ""])
def test_a_prompt_for_sign_in_or_consent_shows_sign_in(server: Server, prompt: str) -> None:
    response = server.client.get("/authorize", params=_query(server, prompt=prompt))

    assert response.status_code == 200, response.headers.get("location")
    assert interaction_of(response.text)


# -- resources on which nothing can be granted --------------------------------------------


@pytest.mark.parametrize(
    ("agent", "scope"),
    [
        (FINANCE, "openid"),
        (FINANCE, "openid crm:read"),
        (SALES, "openid tools:search"),
        (SUPPORT, "openid crm:write"),
    ],
    ids=["agent-has-no-scope-there", "ditto-asked-by-name", "scope-of-another", "not-listed"],
)
def test_a_resource_the_agent_may_get_nothing_on_is_invalid_target_before_sign_in(
    server: Server, agent: str, scope: str
) -> None:
    query = server.authorize_query(agent, scope=scope, resources=[CRM], verifier=new_verifier())

    response = server.client.get("/authorize", params=query)

    parameters = _assert_redirected_error(response, agent, "invalid_target")
    assert parameters["state"] == "state-1"
    assert CRM in parameters["error_description"]
    assert INTERACTION_COOKIE not in server.client.cookies


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("bob", "the user holds none of the roles"),
        ("alice", "needs a person's approval"),
    ],
)
def test_a_resource_the_policy_grants_the_user_nothing_on_offers_no_allow(
    server: Server, user: str, reason: str
) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:write", resources=[CRM])

    response = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": user})

    assert response.status_code == 200
    assert "Allow access?" not in response.text
    assert 'value="allow"' not in response.text
    assert "Nothing can be granted on it" in response.text
    assert f"crm:write: {reason}" in response.text.replace("&#x27;", "'")
    assert 'value="return"' in response.text


def test_returning_from_a_page_with_nothing_to_allow_is_invalid_target(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:write", resources=[CRM])
    server.sign_in(interaction, "bob")

    response = server.consent(interaction, "return")

    parameters = _assert_redirected_error(response, SALES, "invalid_target")
    assert parameters["state"] == "state-1"
    description = parameters["error_description"]
    assert CRM in description
    assert "crm:write: the user holds none of the roles" in description
    assert _codes_and_grants(server) == 0
    [line] = [event for event in server.audit() if event["event"] == "consent_refused"]
    assert line["resource"] == "crm"
    assert line["granted"] == []


def test_allow_posted_anyway_yields_no_code_on_a_resource_with_nothing_granted(
    server: Server,
) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:write", resources=[CRM])
    server.sign_in(interaction, "bob")

    response = server.consent(interaction, "allow")

    _assert_redirected_error(response, SALES, "invalid_target")
    assert _codes_and_grants(server) == 0


def test_nothing_granted_on_one_of_two_named_resources_yields_no_code(server: Server) -> None:
    interaction, _ = server.start(
        SALES, scope="openid crm:write tools:search", resources=[CRM, TOOLS]
    )
    page = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "bob"})

    response = server.consent(interaction, "allow")

    assert 'value="allow"' not in page.text
    assert "<h2>crm</h2>" in page.text
    assert "<h2>tools</h2>" not in page.text
    parameters = _assert_redirected_error(response, SALES, "invalid_target")
    assert CRM in parameters["error_description"]
    assert TOOLS not in parameters["error_description"]


def test_a_partly_granted_resource_still_gets_a_code(server: Server) -> None:
    authorization = server.authorize(
        SALES, "bob", scope="openid crm:read crm:write", resources=[CRM]
    )

    response = server.redeem(authorization)

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["scope"] == "crm:read"


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


def test_an_interaction_is_signed_in_to_once(server: Server) -> None:
    interaction, verifier = server.start(SALES, scope="openid crm:read", resources=[CRM])
    server.sign_in(interaction, "bob")

    again = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "alice"})

    assert again.status_code == 409
    assert "already signed in" in again.text
    location = server.consent(interaction).headers["location"]
    authorization = Authorization(
        SALES, REDIRECT[SALES], verifier, location, redirect_parameters(location)
    )
    tokens = server.redeem(authorization).json()
    assert claims_of(tokens["access_token"])["sub"] == "acme:bob"


def test_a_failed_sign_in_can_be_tried_again(server: Server) -> None:
    interaction, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    failed = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "nobody"})

    server.sign_in(interaction, "bob")

    assert failed.status_code == 400


# -- framing ------------------------------------------------------------------------------


def test_no_page_of_the_interaction_may_be_framed(server: Server) -> None:
    sign_in_page = server.client.get("/authorize", params=_query(server))
    interaction = interaction_of(sign_in_page.text)
    failed = server.post_form("/authorize/sign-in", {"interaction": interaction, "user": "nobody"})
    consent_page = server.post_form(
        "/authorize/sign-in", {"interaction": interaction, "user": "bob"}
    )
    error_page = server.client.get("/authorize", params=_query(server, client_id="nobody"))

    for page in (sign_in_page, failed, consent_page, error_page):
        assert page.headers["content-type"].startswith("text/html")
        _assert_not_framable(page)


# -- POST ---------------------------------------------------------------------------------


def test_the_authorization_endpoint_accepts_post(server: Server) -> None:
    # OIDC Core §3.1.2.1: the authorization endpoint MUST support GET and POST.
    response = _post(server, _query(server))

    assert response.status_code == 200


def test_a_posted_request_shows_sign_in_and_binds_a_cookie(server: Server) -> None:
    response = _post(server, _query(server))

    assert response.status_code == 200, response.text
    interaction = interaction_of(response.text)
    assert server.client.cookies.get(INTERACTION_COOKIE) == interaction
    _assert_not_framable(response)


def test_a_posted_request_leads_to_a_redeemable_code(server: Server) -> None:
    verifier = new_verifier()
    query = server.authorize_query(
        SALES, scope="openid crm:read", resources=[CRM], verifier=verifier
    )
    interaction = interaction_of(_post(server, query).text)
    server.sign_in(interaction, "bob")
    parameters = redirect_parameters(server.consent(interaction).headers["location"])

    response = server.token(
        {
            "grant_type": "authorization_code",
            "code": parameters["code"],
            "redirect_uri": REDIRECT[SALES],
            "code_verifier": verifier,
        },
        agent=SALES,
    )

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["aud"] == CRM


def test_a_posted_request_reads_the_body_not_the_query(server: Server) -> None:
    response = server.client.post(
        "/authorize",
        params={"response_type": "token"},
        content=urlencode(_query(server)).encode(),
        headers=FORM,
    )

    assert response.status_code == 200, response.headers.get("location")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": "é" * 43}, "invalid_request"),
        ({"prompt": "none"}, "login_required"),
        ({"request_uri": "https://rp.example/r"}, "request_uri_not_supported"),
        ({"resource": "https://evil.example.com"}, "invalid_target"),
    ],
)
def test_a_posted_invalid_request_is_redirected_with_error_state_and_iss(
    server: Server, changes: dict[str, str], error: str
) -> None:
    response = _post(server, _query(server, **changes))

    parameters = _assert_redirected_error(response, SALES, error)
    assert parameters["state"] == "state-1"


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        # A parameter given twice is an error the client is redirected with.
        ([("state", "again")], 303),
        # `audience` is no parameter of this endpoint, and is ignored as any unknown one.
        ([("audience", "https://elsewhere.example.com")], 200),
    ],
    ids=["state-twice", "audience"],
)
def test_a_posted_request_is_read_as_the_same_query_would_be(
    server: Server, extra: list[tuple[str, str]], status: int
) -> None:
    query = [*_query(server), *extra]

    posted = _post(server, query)
    got = server.client.get("/authorize", params=query)

    assert posted.status_code == got.status_code == status
    if status == 303:
        posted_error = redirect_parameters(posted.headers["location"])
        assert posted_error == redirect_parameters(got.headers["location"])
        assert posted_error["error"] == "invalid_request"


def test_a_posted_unregistered_redirect_uri_gets_an_error_page(server: Server) -> None:
    response = _post(server, _query(server, redirect_uri="https://evil.example.com/cb"))

    _assert_error_page(response)
    assert "The redirect URI is not registered for this client." in response.text


@pytest.mark.parametrize(
    ("content_type", "extra"),
    [
        ("application/json", b""),
        (FORM["Content-Type"], b"&pad=" + b"x" * MAX_BODY_BYTES),
        (FORM["Content-Type"], b"&nonce=%FF"),
        (FORM["Content-Type"], b"&client_id=" + SUPPORT.encode()),
    ],
    ids=["json", "too-large", "not-utf8", "client-id-twice"],
)
def test_a_posted_body_that_cannot_be_read_gets_an_error_page(
    server: Server, content_type: str, extra: bytes
) -> None:
    # Nothing in a body that cannot be parsed is trusted, the redirect URI least of all.
    body = urlencode(_query(server)).encode() + extra

    response = server.client.post(
        "/authorize", content=body, headers={"Content-Type": content_type}
    )

    _assert_error_page(response)
    _assert_not_framable(response)


@pytest.mark.parametrize("name", ["google-calendar", "no-such-connection"])
def test_the_pages_of_linking_a_connection_cannot_be_framed_either(
    server: Server, name: str
) -> None:
    response = server.client.get(f"/connections/{name}/link")

    assert response.headers["content-type"].startswith("text/html")
    _assert_not_framable(response)
