"""The UserInfo endpoint (OIDC Core §5.3) and its bearer challenges (RFC 6750 §3).

No token: a bare `Bearer` challenge, no error code (§3.1). A bad token: 401
`invalid_token`. A token without `openid`: 403 `insufficient_scope`. Each with
`WWW-Authenticate`.
"""

from __future__ import annotations

import httpx
import pytest
from serverkit import CRM, RECONCILER, SALES, Server, oauth_error


def _sign_in_token(
    server: Server, scope: str = "openid profile email crm:read tools:search"
) -> str:
    return str(server.tokens_for(SALES, "alice", scope=scope)["access_token"])


def _challenge(response: httpx.Response) -> str:
    return str(response.headers["www-authenticate"])


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_sign_in_token_gets_the_persons_claims(server: Server, method: str) -> None:
    token = _sign_in_token(server)

    response = server.client.request(
        method, "/userinfo", headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "sub": "acme:alice",
        "tenant": "acme",
        "name": "Alice Moreau",
        "email": "alice@acme.example.com",
    }


def test_the_token_may_be_posted_in_the_form(server: Server) -> None:
    token = _sign_in_token(server)

    response = server.post_form("/userinfo", {"access_token": token})

    assert response.status_code == 200
    assert response.json()["sub"] == "acme:alice"


def test_claims_follow_the_consented_scopes(server: Server) -> None:
    token = _sign_in_token(server, scope="openid crm:read tools:search")

    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.json() == {"sub": "acme:alice", "tenant": "acme"}


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("openid", {}),
        ("openid profile", {"name": "Alice Moreau"}),
        ("openid email", {"email": "alice@acme.example.com"}),
    ],
)
def test_claims_follow_the_scopes_of_the_token_not_of_the_sign_in(
    server: Server, scope: str, expected: dict[str, str]
) -> None:
    # OIDC Core §5.4: the scopes associated with the access token decide what it reveals.
    tokens = server.tokens_for(SALES, "alice", scope="openid profile email")
    refreshed = server.refresh(SALES, tokens["refresh_token"], scope=scope)
    assert refreshed.status_code == 200, refreshed.text
    token = refreshed.json()["access_token"]

    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200, response.text
    assert response.json() == {"sub": "acme:alice", "tenant": "acme", **expected}


def test_no_token_gets_a_challenge_without_an_error_code(server: Server) -> None:
    response = server.client.get("/userinfo")

    assert response.status_code == 401
    assert _challenge(response) == 'Bearer realm="fleetid"'


@pytest.mark.parametrize("token", ["garbage", "a.b.c"])
def test_an_invalid_token_gets_an_invalid_token_challenge(server: Server, token: str) -> None:
    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert oauth_error(response) == "invalid_token"
    assert _challenge(response).startswith("Bearer ")
    assert 'error="invalid_token"' in _challenge(response)


def test_an_expired_token_gets_an_invalid_token_challenge(server: Server) -> None:
    token = _sign_in_token(server)
    server.clock.advance(15 * 60 + 10)

    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


def test_a_revoked_token_gets_an_invalid_token_challenge(server: Server) -> None:
    token = _sign_in_token(server)
    server.post_form("/revoke", {"token": token}, agent=SALES)

    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


def test_a_token_of_an_ended_sign_in_gets_an_invalid_token_challenge(server: Server) -> None:
    tokens = server.tokens_for(SALES, "alice", scope="openid crm:read tools:search")
    server.post_form("/revoke", {"token": tokens["refresh_token"]}, agent=SALES)

    response = server.client.get(
        "/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )

    assert response.status_code == 401
    assert 'error="invalid_token"' in _challenge(response)


@pytest.mark.parametrize("kind", ["resource", "machine"])
def test_a_token_without_openid_gets_insufficient_scope(server: Server, kind: str) -> None:
    if kind == "resource":
        token = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])[
            "access_token"
        ]
    else:
        token = server.machine_token(RECONCILER)

    response = server.client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 403
    assert oauth_error(response) == "insufficient_scope"
    assert 'error="insufficient_scope"' in _challenge(response)


def test_another_scheme_is_not_a_bearer_token(server: Server) -> None:
    response = server.client.get("/userinfo", headers={"Authorization": "Basic Zm9vOmJhcg=="})

    assert response.status_code == 401
    assert _challenge(response) == 'Bearer realm="fleetid"'
