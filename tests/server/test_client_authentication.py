"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2, OIDC Core §9).

Each agent authenticates with the one method fleet.yaml gives it; a failure is a 401
`invalid_client` with a `WWW-Authenticate` challenge, and using two methods at once is an
`invalid_request`.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from serverkit import (
    CLIENT_CREDENTIALS,
    ISSUER,
    KEYED,
    KEYED_KID,
    POSTER,
    RECONCILER,
    SALES,
    TOKEN_ENDPOINT,
    Server,
    claims_of,
    compile_fleet,
    fleet_document,
    oauth_error,
    public_jwk,
    write_fleet,
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


def test_an_assertion_for_this_server_and_another_is_invalid_client(server: Server) -> None:
    both = server.assertion(audience=None, aud=[TOKEN_ENDPOINT, "https://elsewhere.example.com"])

    response = server.token({**GRANT, **server.assertion_form(both)})

    _assert_invalid_client(response)
    assert "other audiences" in response.json()["error_description"]


def test_an_assertion_naming_this_server_twice_over_authenticates(server: Server) -> None:
    ours = server.assertion(audience=None, aud=[TOKEN_ENDPOINT, ISSUER])

    response = server.token({**GRANT, **server.assertion_form(ours)})

    assert response.status_code == 200, response.text


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


# -- which algorithms a registered key accepts --------------------------------------------


def _register_keys(server: Server, folder: Path, *keys: dict[str, Any]) -> None:
    """Make the live revision give keyed-agent these JWKs."""
    document = fleet_document(server.signer)
    document["agents"][KEYED]["jwks"] = {"keys": list(keys)}
    revision = compile_fleet(write_fleet(folder / "fleet-keys", document))
    server.context.live.switch(revision)
    assert server.revision.hash == revision.hash


def _signed(server: Server, key: Any, algorithm: str) -> str:
    now = int(server.clock())
    claims = {
        "iss": KEYED,
        "sub": KEYED,
        "aud": TOKEN_ENDPOINT,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": KEYED_KID})


def _without_alg(jwk: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in jwk.items() if name != "alg"}


@pytest.mark.parametrize("algorithm", ["RS256", "PS256"])
def test_an_rsa_key_without_alg_accepts_each_advertised_rsa_algorithm(
    server: Server, tmp_path: Path, algorithm: str
) -> None:
    # Discovery advertises PS256 for private_key_jwt: an RSA key that pins nothing takes it.
    _register_keys(server, tmp_path, _without_alg(public_jwk(server.signer)))

    response = server.token(
        {**GRANT, **server.assertion_form(_signed(server, server.signer, algorithm))}
    )

    assert response.status_code == 200, response.text
    assert (
        algorithm
        in server.client.get("/.well-known/openid-configuration").json()[
            "token_endpoint_auth_signing_alg_values_supported"
        ]
    )


@pytest.mark.parametrize(("pinned", "other"), [("RS256", "PS256"), ("PS256", "RS256")])
def test_a_key_that_declares_its_alg_accepts_that_one_only(
    server: Server, tmp_path: Path, pinned: str, other: str
) -> None:
    _register_keys(server, tmp_path, {**public_jwk(server.signer), "alg": pinned})

    accepted = server.token(
        {**GRANT, **server.assertion_form(_signed(server, server.signer, pinned))}
    )
    refused = server.token(
        {**GRANT, **server.assertion_form(_signed(server, server.signer, other))}
    )

    assert accepted.status_code == 200, accepted.text
    _assert_invalid_client(refused)


def test_an_ec_p256_key_without_alg_accepts_es256(server: Server, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    _register_keys(server, tmp_path, {**jwk, "kid": KEYED_KID, "use": "sig"})

    response = server.token({**GRANT, **server.assertion_form(_signed(server, key, "ES256"))})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize("declared", ["RS384", "HS256", "none"])
def test_a_key_that_declares_an_unadvertised_alg_verifies_nothing(
    server: Server, tmp_path: Path, declared: str
) -> None:
    _register_keys(server, tmp_path, {**public_jwk(server.signer), "alg": declared})
    algorithm = "RS384" if declared == "RS384" else "RS256"

    response = server.token(
        {**GRANT, **server.assertion_form(_signed(server, server.signer, algorithm))}
    )

    _assert_invalid_client(response)


def test_an_unsigned_assertion_is_refused_by_a_key_without_alg(
    server: Server, tmp_path: Path
) -> None:
    _register_keys(server, tmp_path, _without_alg(public_jwk(server.signer)))
    unsigned = jwt.encode(
        jwt.decode(_signed(server, server.signer, "RS256"), options={"verify_signature": False}),
        None,
        algorithm="none",
        headers={"kid": KEYED_KID},
    )

    response = server.token({**GRANT, **server.assertion_form(unsigned)})

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


# -- failed attempts on the audit trail ---------------------------------------------------


def _failures(server: Server) -> list[dict[str, Any]]:
    return [line for line in server.audit() if line["event"] == "client_authentication_failed"]


@pytest.mark.parametrize("endpoint", ["/token", "/introspect", "/revoke"])
def test_a_wrong_secret_for_an_agent_is_on_the_trail_without_the_secret(
    server: Server, endpoint: str
) -> None:
    guess = "fis_" + "g" * 40
    form = {**GRANT, "token": "x"} if endpoint != "/token" else GRANT

    response = server.post_form(
        endpoint, form, headers={"Authorization": _basic(RECONCILER, guess)}
    )

    _assert_invalid_client(response)
    [line] = _failures(server)
    assert line["agent"] == RECONCILER
    assert line["outcome"] == f"invalid_client on {endpoint}"
    assert line["reason"] == "client authentication failed"
    assert line["revision"] == server.revision.hash
    assert guess not in server.audit_path.read_text()


def test_an_assertion_claiming_an_agent_that_fails_is_on_the_trail(server: Server) -> None:
    forged = server.assertion(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))

    _assert_invalid_client(server.token({**GRANT, **server.assertion_form(forged)}))

    [line] = _failures(server)
    assert line["agent"] == KEYED
    assert forged not in server.audit_path.read_text()


def test_a_client_id_no_agent_has_leaves_no_line(server: Server) -> None:
    response = server.token(GRANT, headers={"Authorization": _basic("nobody", "fis_x")})

    _assert_invalid_client(response)
    assert _failures(server) == []
