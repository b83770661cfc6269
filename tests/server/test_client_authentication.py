"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2, OIDC Core §9).

Each agent authenticates with the one method fleet.yaml gives it; a failure is a 401
`invalid_client` with a `WWW-Authenticate` challenge, and using two methods at once is an
`invalid_request`.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverkit import (
    CLIENT_CREDENTIALS,
    ISSUER,
    KEYED,
    POSTER,
    RECONCILER,
    SALES,
    TOKEN_ENDPOINT,
    Server,
    claims_of,
    oauth_error,
)

GRANT = {"grant_type": CLIENT_CREDENTIALS}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert oauth_error(response) == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


# -- client_secret_basic ------------------------------------------------------------------


def test_basic_authenticates_the_agent(server: Server) -> None:
    response = server.token(GRANT, agent=RECONCILER)

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["client_id"] == RECONCILER


def test_basic_credentials_are_form_urlencoded_before_encoding(server: Server) -> None:
    # RFC 6749 §2.3.1: the id and the secret are form-urlencoded, then Basic-encoded;
    # a client may percent-encode every character.
    secret = server.secret(RECONCILER)
    encoded_id = "".join(f"%{byte:02X}" for byte in RECONCILER.encode())
    encoded_secret = quote(secret, safe="").replace("-", "%2D").replace("_", "%5F")

    response = server.token(GRANT, headers={"Authorization": _basic(encoded_id, encoded_secret)})

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["client_id"] == RECONCILER


def test_the_basic_scheme_name_is_case_insensitive(server: Server) -> None:
    header = _basic(RECONCILER, server.secret(RECONCILER)).replace("Basic", "bAsIc")

    response = server.token(GRANT, headers={"Authorization": header})

    assert response.status_code == 200, response.text


def test_a_wrong_secret_is_invalid_client_with_a_challenge(server: Server) -> None:
    secret = server.secret(RECONCILER)

    response = server.token(GRANT, headers={"Authorization": _basic(RECONCILER, secret + "x")})

    _assert_invalid_client(response)
    assert secret not in response.text


def test_another_agents_secret_is_invalid_client(server: Server) -> None:
    response = server.token(
        GRANT, headers={"Authorization": _basic(RECONCILER, server.secret(SALES))}
    )

    _assert_invalid_client(response)


def test_an_unknown_client_is_invalid_client(server: Server) -> None:
    response = server.token(GRANT, headers={"Authorization": _basic("nobody", "secret")})

    _assert_invalid_client(response)


@pytest.mark.parametrize(
    "header", ["Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode()]
)
def test_malformed_basic_credentials_are_invalid_client(server: Server, header: str) -> None:
    response = server.token(GRANT, headers={"Authorization": header})

    _assert_invalid_client(response)


def test_no_authentication_is_invalid_client(server: Server) -> None:
    response = server.token({**GRANT, "client_id": RECONCILER})

    _assert_invalid_client(response)


def test_a_posted_client_id_must_match_the_basic_one(server: Server) -> None:
    response = server.token({**GRANT, "client_id": SALES}, agent=RECONCILER)

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


# -- client_secret_post -------------------------------------------------------------------


def test_post_authenticates_an_agent_registered_for_it(server: Server) -> None:
    response = server.token({**GRANT, "client_id": POSTER, "client_secret": server.secret(POSTER)})

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["client_id"] == POSTER


def test_post_with_a_wrong_secret_is_invalid_client(server: Server) -> None:
    response = server.token({**GRANT, "client_id": POSTER, "client_secret": "fis_wrong"})

    _assert_invalid_client(response)


def test_post_without_client_id_is_invalid_client(server: Server) -> None:
    response = server.token({**GRANT, "client_secret": server.secret(POSTER)})

    _assert_invalid_client(response)


def test_post_is_refused_to_an_agent_registered_for_basic(server: Server) -> None:
    response = server.token(
        {**GRANT, "client_id": RECONCILER, "client_secret": server.secret(RECONCILER)}
    )

    _assert_invalid_client(response)


def test_basic_is_refused_to_an_agent_registered_for_post(server: Server) -> None:
    response = server.token(GRANT, agent=POSTER)

    _assert_invalid_client(response)


# -- two methods at once ------------------------------------------------------------------


def test_basic_and_post_at_once_is_invalid_request(server: Server) -> None:
    response = server.token(
        {**GRANT, "client_id": POSTER, "client_secret": server.secret(POSTER)}, agent=POSTER
    )

    assert response.status_code == 400
    assert oauth_error(response) == "invalid_request"


def test_basic_and_an_assertion_at_once_is_invalid_request(server: Server) -> None:
    response = server.token(
        {**GRANT, **server.assertion_form(server.assertion())}, agent=RECONCILER
    )

    assert oauth_error(response) == "invalid_request"


def test_a_secret_and_an_assertion_at_once_is_invalid_request(server: Server) -> None:
    form = {
        **GRANT,
        "client_id": KEYED,
        "client_secret": server.secret(KEYED),
        **server.assertion_form(server.assertion()),
    }

    response = server.token(form)

    assert oauth_error(response) == "invalid_request"


# -- private_key_jwt ----------------------------------------------------------------------


@pytest.mark.parametrize("audience", [TOKEN_ENDPOINT, ISSUER])
def test_an_assertion_for_the_server_authenticates_the_agent(
    server: Server, audience: str
) -> None:
    response = server.token(
        {**GRANT, **server.assertion_form(server.assertion(audience=audience))}
    )

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["client_id"] == KEYED


def test_an_assertion_without_kid_uses_the_agents_only_key(server: Server) -> None:
    response = server.token({**GRANT, **server.assertion_form(server.assertion(kid=None))})

    assert response.status_code == 200, response.text


def test_an_assertion_with_the_matching_client_id_posted_is_accepted(server: Server) -> None:
    form = {**GRANT, "client_id": KEYED, **server.assertion_form(server.assertion())}

    response = server.token(form)

    assert response.status_code == 200, response.text


def test_a_replayed_assertion_is_invalid_client(server: Server) -> None:
    assertion = server.assertion()
    first = server.token({**GRANT, **server.assertion_form(assertion)})

    second = server.token({**GRANT, **server.assertion_form(assertion)})

    assert first.status_code == 200, first.text
    _assert_invalid_client(second)


def test_a_jti_reused_in_a_new_assertion_is_invalid_client(server: Server) -> None:
    first = server.token({**GRANT, **server.assertion_form(server.assertion(jti="once"))})

    second = server.token({**GRANT, **server.assertion_form(server.assertion(jti="once"))})

    assert first.status_code == 200, first.text
    _assert_invalid_client(second)


def test_an_assertion_replayed_at_another_endpoint_is_invalid_client(server: Server) -> None:
    assertion = server.assertion()
    token = server.token({**GRANT, **server.assertion_form(assertion)}).json()["access_token"]

    response = server.post_form(
        "/introspect", {"token": token, **server.assertion_form(assertion)}
    )

    _assert_invalid_client(response)


def test_an_expired_assertion_is_invalid_client(server: Server) -> None:
    assertion = server.assertion(lifetime=-60)

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_assertion_expiring_far_in_the_future_is_invalid_client(server: Server) -> None:
    # Its jti would have to be remembered for as long: the server caps assertion lifetimes.
    assertion = server.assertion(lifetime=3600)

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_assertion_without_exp_or_jti_is_invalid_client(server: Server) -> None:
    now = int(server.clock())
    for claims in (
        {"iss": KEYED, "sub": KEYED, "aud": TOKEN_ENDPOINT, "jti": "j1"},
        {"iss": KEYED, "sub": KEYED, "aud": TOKEN_ENDPOINT, "exp": now + 60},
    ):
        assertion = jwt.encode(claims, server.signer, algorithm="RS256")

        response = server.token({**GRANT, **server.assertion_form(assertion)})

        _assert_invalid_client(response)


def test_an_assertion_signed_by_another_key_is_invalid_client(
    server: Server, stranger_key: rsa.RSAPrivateKey
) -> None:
    assertion = server.assertion(key=stranger_key)

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_assertion_naming_an_unknown_kid_is_invalid_client(server: Server) -> None:
    response = server.token({**GRANT, **server.assertion_form(server.assertion(kid="other"))})

    _assert_invalid_client(response)


@pytest.mark.parametrize(
    "audience", ["https://elsewhere.example.com/token", f"{ISSUER}/authorize", SALES]
)
def test_an_assertion_for_another_audience_is_invalid_client(
    server: Server, audience: str
) -> None:
    response = server.token(
        {**GRANT, **server.assertion_form(server.assertion(audience=audience))}
    )

    _assert_invalid_client(response)


def test_an_assertion_whose_issuer_is_not_its_subject_is_invalid_client(server: Server) -> None:
    response = server.token({**GRANT, **server.assertion_form(server.assertion(iss=SALES))})

    _assert_invalid_client(response)


def test_an_assertion_for_an_agent_registered_for_a_secret_is_invalid_client(
    server: Server,
) -> None:
    # sales-assistant uses client_secret_basic: no assertion authenticates it, whatever key.
    response = server.token({**GRANT, **server.assertion_form(server.assertion(SALES))})

    _assert_invalid_client(response)


def test_a_secret_is_refused_to_an_agent_registered_for_private_key_jwt(server: Server) -> None:
    basic = server.token(GRANT, agent=KEYED)
    posted = server.token({**GRANT, "client_id": KEYED, "client_secret": server.secret(KEYED)})

    _assert_invalid_client(basic)
    _assert_invalid_client(posted)


@pytest.mark.parametrize(
    "assertion_type",
    ["urn:ietf:params:oauth:client-assertion-type:saml2-bearer", "", "jwt-bearer"],
)
def test_a_wrong_assertion_type_is_invalid_client(server: Server, assertion_type: str) -> None:
    form = {
        **GRANT,
        "client_assertion_type": assertion_type,
        "client_assertion": server.assertion(),
    }

    response = server.token(form)

    _assert_invalid_client(response)


@pytest.mark.parametrize("assertion", ["", "not-a-jwt", "a.b.c", "e30.e30."])
def test_a_garbage_assertion_is_invalid_client(server: Server, assertion: str) -> None:
    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_unsigned_assertion_is_invalid_client(server: Server) -> None:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(server.clock())
    claims = {"iss": KEYED, "sub": KEYED, "aud": TOKEN_ENDPOINT, "exp": now + 60, "jti": "n"}
    assertion = f"{part({'alg': 'none'})}.{part(claims)}."

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_assertion_naming_an_algorithm_of_another_key_type_is_invalid_client(
    server: Server,
) -> None:
    _, payload, signature = server.assertion().split(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({"alg": "ES256", "kid": "keyed-agent-1", "typ": "JWT"}).encode()
    )
    assertion = f"{forged.rstrip(b'=').decode()}.{payload}.{signature}"

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_an_assertion_expired_by_the_servers_clock_is_invalid_client(server: Server) -> None:
    assertion = server.assertion(lifetime=120)
    server.clock.advance(3600)

    response = server.token({**GRANT, **server.assertion_form(assertion)})

    _assert_invalid_client(response)


def test_client_authentication_applies_to_introspection_and_revocation(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    for path in ("/introspect", "/revoke"):
        response = server.client.post(
            path,
            content=f"token={token}".encode(),
            headers={**FORM, "Authorization": _basic(RECONCILER, "wrong")},
        )

        _assert_invalid_client(response)
