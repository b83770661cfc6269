"""The authorization code grant (RFC 6749 §4.1.3, RFC 7636 §4.6).

A code is redeemed once, by the client it was issued to, with the redirect URI of the
request and the verifier of its S256 challenge. A second redemption is `invalid_grant`
and revokes what the first one obtained (RFC 6749 §10.5).
"""

from __future__ import annotations

from serverkit import (
    CRM,
    FINANCE,
    ISSUER,
    REDIRECT,
    SALES,
    SUPPORT,
    TOOLS,
    Server,
    agent_urn,
    claims_of,
    new_verifier,
    oauth_error,
    redirect_parameters,
    s256,
)


def test_a_code_is_redeemed_for_the_consented_resource(server: Server) -> None:
    authorization = server.authorize(
        SALES, "bob", scope="openid profile crm:read crm:write", resources=[CRM]
    )

    response = server.redeem(authorization)

    assert response.status_code == 200, response.text
    body = response.json()
    access = claims_of(body["access_token"])
    assert access["aud"] == CRM
    assert access["sub"] == "acme:bob"
    assert access["client_id"] == access["azp"] == SALES
    # bob is in Sales: crm:write needs sales-manager, so it was never consented.
    assert access["scope"] == "crm:read"
    assert body["scope"] == "crm:read"
    assert access["revision"] == server.revision.hash
    assert body["refresh_token"].startswith("firt_")


def test_the_id_token_names_the_person_and_carries_the_nonce(server: Server) -> None:
    authorization = server.authorize(SALES, "alice", scope="openid profile email crm:read")

    body = server.redeem(authorization).json()

    identity = claims_of(body["id_token"])
    assert identity["iss"] == ISSUER
    assert identity["aud"] == SALES
    assert identity["sub"] == "acme:alice"
    assert identity["nonce"] == "nonce-1"
    assert identity["name"] == "Alice Moreau"
    assert identity["email"] == "alice@acme.example.com"


def test_without_a_single_resource_the_token_is_a_sign_in_token(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read tools:search")

    body = server.redeem(authorization).json()

    access = claims_of(body["access_token"])
    assert access["aud"] == agent_urn(SALES)
    assert access["scope"] == "openid"


def test_a_code_is_single_use(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])
    first = server.redeem(authorization)

    second = server.redeem(authorization)

    assert first.status_code == 200
    assert second.status_code == 400
    assert oauth_error(second) == "invalid_grant"


def test_a_second_redemption_revokes_what_the_first_obtained(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])
    first = server.redeem(authorization).json()
    assert server.introspect(SALES, first["access_token"])["active"] is True

    server.redeem(authorization)

    refreshed = server.refresh(SALES, first["refresh_token"])
    assert oauth_error(refreshed) == "invalid_grant"
    assert server.introspect(SALES, first["access_token"]) == {"active": False}
    assert server.introspect(SALES, first["refresh_token"]) == {"active": False}
    assert any(event["event"] == "code_reused" for event in server.audit())


def test_a_wrong_code_verifier_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization, code_verifier=new_verifier())

    assert oauth_error(response) == "invalid_grant"


def test_the_challenge_itself_is_not_a_verifier(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization, code_verifier=s256(authorization.verifier))

    assert oauth_error(response) == "invalid_grant"


def test_a_malformed_code_verifier_is_invalid_request(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    for verifier in ("short", "x" * 129, "a" * 42 + "!"):
        response = server.redeem(authorization, code_verifier=verifier)

        assert oauth_error(response) == "invalid_request"
    # The malformed attempts did not spend the code.
    assert server.redeem(authorization).status_code == 200


def test_a_wrong_redirect_uri_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization, redirect_uri="http://127.0.0.1:8765/callback")

    assert oauth_error(response) == "invalid_grant"


def test_a_code_of_another_client_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid tools:search", resources=[TOOLS])

    response = server.token(
        {
            "grant_type": "authorization_code",
            "code": authorization.code,
            "redirect_uri": REDIRECT[SUPPORT],
            "code_verifier": authorization.verifier,
        },
        agent=SUPPORT,
    )

    assert oauth_error(response) == "invalid_grant"


def test_a_code_of_another_client_with_its_redirect_uri_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid tools:search", resources=[TOOLS])

    response = server.token(
        {
            "grant_type": "authorization_code",
            "code": authorization.code,
            "redirect_uri": authorization.redirect_uri,
            "code_verifier": authorization.verifier,
        },
        agent=FINANCE,
    )

    assert oauth_error(response) == "invalid_grant"


def test_an_unknown_code_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization, code="fic_" + "A" * 43)

    assert oauth_error(response) == "invalid_grant"


def test_an_expired_code_is_invalid_grant(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])
    server.clock.advance(61)

    response = server.redeem(authorization)

    assert oauth_error(response) == "invalid_grant"


def test_a_resource_not_consented_at_redemption_is_invalid_target(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.redeem(authorization, resource=TOOLS)

    assert oauth_error(response) == "invalid_target"


def test_auth_time_is_when_the_person_signed_in_not_when_they_consented(
    server: Server,
) -> None:
    # OIDC Core §2: auth_time is "the time when the End-User authentication occurred".
    interaction, verifier = server.start(SALES, scope="openid crm:read", resources=[CRM])
    signed_in_at = int(server.clock())
    server.sign_in(interaction, "bob")
    server.clock.advance(300)
    location = server.consent(interaction).headers["location"]
    code = redirect_parameters(location)["code"]

    body = server.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT[SALES],
            "code_verifier": verifier,
        },
        agent=SALES,
    ).json()

    auth_time = claims_of(body["id_token"])["auth_time"]
    assert signed_in_at <= auth_time <= signed_in_at + 5
