"""Token exchange (RFC 8693) with resource indicators (RFC 8707) and issuance policy.

An agent trades a token issued to it (or addressed to it) for a token on one resource, or
for a token addressed to another agent, which exchanges it in turn; the actor chain nests
(RFC 8693 §4.1), and no exchange ever grants more than the person consented to or more
than the decision function allows the requesting agent.
"""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverkit import (
    ACCESS_TOKEN_TYPE,
    CRM,
    FINANCE,
    ISSUER,
    RECONCILER,
    SALES,
    SUPPORT,
    TOKEN_EXCHANGE,
    TOOLS,
    Server,
    agent_urn,
    claims_of,
    oauth_error,
)


def _sign_in_token(server: Server, user: str = "bob", scope: str = "crm:read tools:search") -> str:
    """A person's sign-in token for sales-assistant, addressed to the agent itself."""
    tokens = server.tokens_for(SALES, user, scope=f"openid {scope}")
    assert claims_of(tokens["access_token"])["aud"] == agent_urn(SALES)
    return str(tokens["access_token"])


def _delegate(server: Server, subject: str, to: str, by: str = SALES) -> str:
    response = server.exchange(by, subject, target_name="audience", audience=agent_urn(to))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_a_sign_in_token_is_exchanged_for_a_resource_token(server: Server) -> None:
    subject = _sign_in_token(server)

    response = server.exchange(SALES, subject, CRM)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body
    claims = claims_of(body["access_token"])
    assert claims["aud"] == CRM
    assert claims["sub"] == "acme:bob"
    assert claims["client_id"] == SALES
    assert claims["scope"] == "crm:read"
    assert claims["act"] == {"sub": SALES}
    assert claims["sid"] == claims_of(subject)["sid"]


@pytest.mark.parametrize("name", ["resource", "audience"])
def test_the_resource_may_be_named_by_resource_or_audience(server: Server, name: str) -> None:
    subject = _sign_in_token(server)

    response = server.exchange(SALES, subject, TOOLS, target_name=name)

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["aud"] == TOOLS


def test_a_machine_token_is_exchanged_for_a_narrower_one(server: Server) -> None:
    subject = server.machine_token(RECONCILER)

    response = server.exchange(RECONCILER, subject, CRM, scope="crm:read")

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["scope"] == "crm:read"
    assert claims["sub"] == RECONCILER
    assert "act" not in claims


def test_a_subject_token_of_another_agent_is_invalid_grant(server: Server) -> None:
    subject = _sign_in_token(server)

    response = server.exchange(SUPPORT, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_an_expired_subject_token_is_invalid_grant(server: Server) -> None:
    subject = _sign_in_token(server)
    server.clock.advance(15 * 60 + 10)

    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_a_subject_token_that_served_before_is_refused_once_expired(server: Server) -> None:
    # The first exchange has its signature check remembered; expiry is checked on each use.
    subject = _sign_in_token(server)
    assert server.exchange(SALES, subject, CRM).status_code == 200
    server.clock.advance(15 * 60 + 10)

    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_a_subject_token_that_served_before_is_refused_once_revoked(server: Server) -> None:
    subject = _sign_in_token(server)
    assert server.exchange(SALES, subject, CRM).status_code == 200
    revoked = server.post_form("/revoke", {"token": subject}, agent=SALES)
    assert revoked.status_code == 200

    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


@pytest.mark.parametrize("subject", ["garbage", "a.b.c", "e30.e30.", "x" * 20000])
def test_a_garbage_subject_token_is_invalid_grant(server: Server, subject: str) -> None:
    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_an_id_token_is_not_a_subject_token(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.exchange(SALES, tokens["id_token"], CRM)

    assert oauth_error(response) == "invalid_grant"


def test_a_refresh_token_is_not_a_subject_token(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.exchange(SALES, tokens["refresh_token"], CRM)

    assert oauth_error(response) == "invalid_grant"


def test_a_token_signed_by_another_key_is_invalid_grant(
    server: Server, stranger_key: rsa.RSAPrivateKey
) -> None:
    genuine = claims_of(server.machine_token(RECONCILER))
    kid = server.context.tokens.jwks()["keys"][0]["kid"]
    forged = jwt.encode(
        genuine, stranger_key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"}
    )

    response = server.exchange(RECONCILER, forged, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_a_revoked_subject_token_is_invalid_grant(server: Server) -> None:
    subject = _sign_in_token(server)
    revoked = server.post_form("/revoke", {"token": subject}, agent=SALES)
    assert revoked.status_code == 200

    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


@pytest.mark.parametrize("target", [CRM, agent_urn(SUPPORT)], ids=["resource", "agent"])
def test_a_subject_token_of_a_revoked_sign_in_is_invalid_grant(
    server: Server, target: str
) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    server.post_form("/revoke", {"token": tokens["refresh_token"]}, agent=SALES)

    response = server.exchange(SALES, tokens["access_token"], target)

    assert oauth_error(response) == "invalid_grant"
    assert "sign-in" in response.json()["error_description"]


def test_an_actor_token_is_invalid_request(server: Server) -> None:
    subject = _sign_in_token(server)
    actor = server.machine_token(RECONCILER)

    response = server.exchange(
        SALES, subject, CRM, actor_token=actor, actor_token_type=ACCESS_TOKEN_TYPE
    )

    assert oauth_error(response) == "invalid_request"


JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def test_a_token_asked_for_as_a_jwt_is_the_same_token_named_so(server: Server) -> None:
    subject = _sign_in_token(server)

    response = server.exchange(SALES, subject, CRM, requested_token_type=JWT_TYPE)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == JWT_TYPE
    assert body["token_type"] == "Bearer"
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert claims_of(body["access_token"])["aud"] == CRM


def test_a_delegation_asked_for_as_a_jwt_is_named_so(server: Server) -> None:
    subject = _sign_in_token(server)

    response = server.exchange(
        SALES,
        subject,
        target_name="audience",
        audience=agent_urn(SUPPORT),
        requested_token_type=JWT_TYPE,
    )

    assert response.status_code == 200, response.text
    assert response.json()["issued_token_type"] == JWT_TYPE


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("subject_token_type", "urn:ietf:params:oauth:token-type:refresh_token"),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2"),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token"),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:id_token"),
    ],
)
def test_an_unsupported_token_type_is_invalid_request(
    server: Server, name: str, value: str
) -> None:
    subject = _sign_in_token(server)
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "resource": CRM,
        name: value,
    }

    response = server.token(form, agent=SALES)

    assert oauth_error(response) == "invalid_request"


def test_an_exchange_without_a_target_is_invalid_target(server: Server) -> None:
    response = server.exchange(SALES, _sign_in_token(server))

    assert oauth_error(response) == "invalid_target"


def test_an_exchange_for_two_resources_is_invalid_target(server: Server) -> None:
    response = server.exchange(SALES, _sign_in_token(server), CRM, TOOLS)

    assert oauth_error(response) == "invalid_target"


# -- delegation to another agent ----------------------------------------------------------


@pytest.mark.parametrize("name", ["audience", "resource"])
def test_an_agents_urn_gives_a_token_addressed_to_that_agent(server: Server, name: str) -> None:
    subject = _sign_in_token(server)
    asked_at = int(server.clock())

    response = server.exchange(SALES, subject, agent_urn(SUPPORT), target_name=name)

    assert response.status_code == 200, response.text
    body = response.json()
    claims = claims_of(body["access_token"])
    assert claims["aud"] == agent_urn(SUPPORT)
    assert claims["sub"] == "acme:bob"
    assert claims["client_id"] == SALES
    assert claims["scope"] == ""
    assert claims["act"] == {"sub": SALES}
    # Not beyond the sign-in token's own expiry, counted from when the exchange began.
    assert body["expires_in"] <= claims_of(subject)["exp"] - asked_at


def test_the_addressed_agent_exchanges_it_in_turn_with_a_nested_act_chain(server: Server) -> None:
    delegated = _delegate(server, _sign_in_token(server), SUPPORT)

    response = server.exchange(SUPPORT, delegated, CRM)

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["aud"] == CRM
    assert claims["client_id"] == SUPPORT
    assert claims["sub"] == "acme:bob"
    assert claims["scope"] == "crm:read"
    assert claims["act"] == {"sub": SUPPORT, "act": {"sub": SALES}}


def test_a_chain_of_three_agents_nests_three_actors(server: Server) -> None:
    to_support = _delegate(server, _sign_in_token(server), SUPPORT)
    to_finance = _delegate(server, to_support, FINANCE, by=SUPPORT)

    response = server.exchange(FINANCE, to_finance, TOOLS)

    assert response.status_code == 200, response.text
    claims = claims_of(response.json()["access_token"])
    assert claims["act"] == {"sub": FINANCE, "act": {"sub": SUPPORT, "act": {"sub": SALES}}}
    assert claims["scope"] == "tools:search"


def test_a_token_addressed_to_one_agent_is_not_for_a_third(server: Server) -> None:
    delegated = _delegate(server, _sign_in_token(server), SUPPORT)

    response = server.exchange(FINANCE, delegated, TOOLS)

    assert oauth_error(response) == "invalid_grant"


def test_delegation_to_an_agent_that_does_not_serve_the_tenant_is_invalid_target(
    server: Server,
) -> None:
    # carol is at globex; finance-reporter serves acme only.
    subject = _sign_in_token(server, user="carol")

    response = server.exchange(SALES, subject, target_name="audience", audience=agent_urn(FINANCE))

    assert oauth_error(response) == "invalid_target"


def test_a_delegated_token_lives_no_longer_than_its_subject(server: Server) -> None:
    subject = _sign_in_token(server)
    server.clock.advance(10 * 60)

    delegated = _delegate(server, subject, SUPPORT)

    assert claims_of(delegated)["exp"] <= claims_of(subject)["exp"]


def test_a_delegated_token_carries_no_resource_scope(server: Server) -> None:
    delegated = _delegate(server, _sign_in_token(server), SUPPORT)

    response = server.post_form("/userinfo", {"access_token": delegated})

    assert response.status_code == 403


# -- never more than consent and decision -------------------------------------------------


def test_a_delegated_exchange_never_exceeds_the_consent(server: Server) -> None:
    # carol (globex helpdesk: role support) consented, through sales-assistant, to what
    # sales-assistant may ask: tools:search. support-triage may ask tools:tickets, and
    # carol's role could hold it, but she never consented to it.
    delegated = _delegate(server, _sign_in_token(server, user="carol"), SUPPORT)

    only_tickets = server.exchange(SUPPORT, delegated, TOOLS, scope="tools:tickets")
    both = server.exchange(SUPPORT, delegated, TOOLS, scope="tools:search tools:tickets")

    assert oauth_error(only_tickets) == "invalid_scope"
    assert "tools:tickets" in only_tickets.json()["error_description"]
    assert both.status_code == 200, both.text
    assert claims_of(both.json()["access_token"])["scope"] == "tools:search"


def test_a_delegated_exchange_never_exceeds_the_decision(server: Server) -> None:
    # alice (Sales Managers) consented to crm:read; crm:write needs a person's approval and
    # support-triage may never ask for it.
    delegated = _delegate(
        server,
        _sign_in_token(server, user="alice", scope="crm:read crm:write tools:search"),
        SUPPORT,
    )

    response = server.exchange(SUPPORT, delegated, CRM, scope="crm:read crm:write")

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["scope"] == "crm:read"


def test_an_exchange_never_grants_a_scope_the_decision_refuses(server: Server) -> None:
    subject = _sign_in_token(server, user="alice", scope="crm:read crm:write tools:search")

    response = server.exchange(SALES, subject, CRM, scope="crm:write")

    assert oauth_error(response) == "invalid_scope"
    assert "approval" in response.json()["error_description"]


def test_an_exchange_for_a_resource_never_consented_is_invalid_scope(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid tools:search crm:read")
    delegated = _delegate(server, tokens["access_token"], FINANCE)
    # finance-reporter lists only tools; bob consented to tools:search through sales.
    assert server.exchange(FINANCE, delegated, TOOLS).status_code == 200

    response = server.exchange(FINANCE, delegated, CRM, scope="crm:read")

    assert oauth_error(response) == "invalid_scope"


def test_a_subject_token_of_another_issuer_is_invalid_grant(server: Server) -> None:
    genuine = claims_of(server.machine_token(RECONCILER))
    assert genuine["iss"] == ISSUER
    now = int(time.time())
    foreign = jwt.encode(
        {**genuine, "iss": "https://other.example.com", "iat": now, "exp": now + 60},
        "a-shared-secret-that-no-key-of-this-server-is",
        algorithm="HS256",
        headers={"typ": "at+jwt"},
    )

    response = server.exchange(RECONCILER, foreign, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_the_agent_that_delegated_a_token_cannot_spend_it_itself(server: Server) -> None:
    delegated = _delegate(server, _sign_in_token(server), SUPPORT)

    response = server.exchange(SALES, delegated, CRM)

    assert oauth_error(response) == "invalid_grant"
    assert response.json()["error_description"].endswith(f"it is addressed to {SUPPORT}")


def test_an_agent_exchanging_again_does_not_lengthen_the_actor_chain(server: Server) -> None:
    token = _sign_in_token(server)
    for _ in range(4):
        response = server.exchange(SALES, token, CRM, scope="crm:read")
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]

    assert claims_of(token)["act"] == {"sub": SALES}


def test_scopes_asked_for_a_token_addressed_to_an_agent_are_invalid_scope(
    server: Server,
) -> None:
    response = server.exchange(SALES, _sign_in_token(server), agent_urn(SUPPORT), scope="crm:read")

    assert oauth_error(response) == "invalid_scope"


def test_a_subject_token_is_refused_from_the_second_it_expires(server: Server) -> None:
    # RFC 7519 §4.1.4: not accepted on or after exp; the issuer allows itself no leeway.
    subject = _sign_in_token(server)
    server.clock.advance(claims_of(subject)["exp"] - server.clock())

    response = server.exchange(SALES, subject, CRM)

    assert oauth_error(response) == "invalid_grant"


def test_an_actor_token_type_without_an_actor_token_is_invalid_request(server: Server) -> None:
    response = server.exchange(
        SALES, _sign_in_token(server), CRM, actor_token_type=ACCESS_TOKEN_TYPE
    )

    assert oauth_error(response) == "invalid_request"
    assert "only with an actor_token" in response.json()["error_description"]
