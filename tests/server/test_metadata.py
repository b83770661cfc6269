"""Discovery (OIDC Discovery 1.0, RFC 8414) and the JWKS: only what is implemented is
advertised, and the JWKS verifies the server's tokens and holds no private key material."""

from __future__ import annotations

import jwt
import pytest
from serverkit import ISSUER, RECONCILER, Server

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
def test_the_metadata_advertises_what_is_implemented(server: Server, path: str) -> None:
    response = server.client.get(path)

    assert response.status_code == 200
    metadata = response.json()
    assert metadata["issuer"] == ISSUER
    assert metadata["token_endpoint"] == f"{ISSUER}/token"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert set(metadata["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    }
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }


def test_the_jwks_verifies_issued_tokens_and_holds_no_private_key(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    response = server.client.get("/jwks.json")

    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys
    assert all(PRIVATE_MEMBERS.isdisjoint(key) for key in keys)
    kid = jwt.get_unverified_header(token)["kid"]
    [key] = [jwt.PyJWK(key) for key in keys if key["kid"] == kid]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        audience=None,
        options={"verify_aud": False},
    )
    assert claims["iss"] == ISSUER
