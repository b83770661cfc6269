"""Token revocation (RFC 7009).

A client revokes its own tokens: an access token is refused from then on, a refresh token
ends its whole sign-in (RFC 7009 §2.1). The answer is 200 whether or not the token was
known, and revoking another client's token has no effect (§2.1: the server checks the
token "was issued to the client making the revocation request").
"""

from __future__ import annotations

import pytest
from serverkit import CRM, RECONCILER, SALES, SUPPORT, Server, oauth_error

INACTIVE = {"active": False}


def _sign_in(server: Server) -> dict[str, str]:
    return server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])


def test_revoking_an_access_token_makes_it_inactive(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    response = server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    assert server.introspect(RECONCILER, token) == INACTIVE
    assert oauth_error(server.exchange(RECONCILER, token, CRM)) == "invalid_grant"


def test_revoking_a_refresh_token_ends_its_sign_in(server: Server) -> None:
    tokens = _sign_in(server)

    server.post_form("/revoke", {"token": tokens["refresh_token"]}, agent=SALES)

    assert oauth_error(server.refresh(SALES, tokens["refresh_token"])) == "invalid_grant"
    assert server.introspect(SALES, tokens["access_token"]) == INACTIVE


@pytest.mark.parametrize("hint", ["access_token", "refresh_token"])
def test_a_wrong_hint_does_not_stop_the_revocation(server: Server, hint: str) -> None:
    tokens = _sign_in(server)
    token = tokens["refresh_token"] if hint == "access_token" else tokens["access_token"]

    server.post_form("/revoke", {"token": token, "token_type_hint": hint}, agent=SALES)

    assert server.introspect(SALES, token) == INACTIVE


def test_revoking_another_clients_refresh_token_has_no_effect(server: Server) -> None:
    tokens = _sign_in(server)

    response = server.post_form("/revoke", {"token": tokens["refresh_token"]}, agent=SUPPORT)

    assert response.status_code == 200
    assert server.introspect(SALES, tokens["access_token"])["active"] is True
    assert server.refresh(SALES, tokens["refresh_token"]).status_code == 200


def test_revoking_another_clients_access_token_has_no_effect(server: Server) -> None:
    tokens = _sign_in(server)

    response = server.post_form("/revoke", {"token": tokens["access_token"]}, agent=SUPPORT)

    assert response.status_code == 200
    assert server.introspect(SALES, tokens["access_token"])["active"] is True


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "firt_unknown"])
def test_revoking_an_unknown_token_answers_200(server: Server, token: str) -> None:
    response = server.post_form("/revoke", {"token": token}, agent=SALES)

    assert response.status_code == 200


def test_revoking_twice_answers_200(server: Server) -> None:
    token = server.machine_token(RECONCILER)
    server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    response = server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    assert response.status_code == 200


def test_an_unsupported_token_type_hint_is_unsupported_token_type(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    response = server.post_form(
        "/revoke", {"token": token, "token_type_hint": "id_token"}, agent=RECONCILER
    )

    assert response.status_code == 400
    assert oauth_error(response) == "unsupported_token_type"
    assert server.introspect(RECONCILER, token)["active"] is True


def test_revocation_without_a_token_is_invalid_request(server: Server) -> None:
    response = server.post_form("/revoke", {}, agent=RECONCILER)

    assert oauth_error(response) == "invalid_request"


def test_revocation_requires_client_authentication(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    response = server.post_form("/revoke", {"token": token, "client_id": RECONCILER})

    assert response.status_code == 401
    assert oauth_error(response) == "invalid_client"
    assert server.introspect(RECONCILER, token)["active"] is True


def test_revocation_is_audited_without_the_token(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    revoked = [event for event in server.audit() if event["event"] == "revoked"]
    assert len(revoked) == 1
    assert revoked[0]["agent"] == RECONCILER
    assert token not in server.audit_path.read_text()
