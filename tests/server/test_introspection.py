"""Token introspection (RFC 7662) for authenticated fleet clients.

An active token is described to a caller that has business with it (the client it was
issued to, the agent it is addressed to, an actor in its chain); anything else (unknown,
expired, revoked, of an ended sign-in, a spent or another client's refresh token, or a
token of someone else's) is `{"active": false}` and nothing more.
"""

from __future__ import annotations

import pytest
from serverkit import (
    CRM,
    FINANCE,
    RECONCILER,
    SALES,
    SUPPORT,
    Server,
    agent_urn,
    claims_of,
    oauth_error,
)

INACTIVE = {"active": False}


def test_an_active_access_token_is_described(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    response = server.post_form("/introspect", {"token": tokens["access_token"]}, agent=SALES)

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    description = response.json()
    assert description["active"] is True
    assert description["token_type"] == "Bearer"
    assert description["client_id"] == SALES
    assert description["sub"] == "acme:bob"
    assert description["aud"] == CRM
    assert description["scope"] == "crm:read"
    assert description["tenant"] == "acme"
    assert {"exp", "iat", "jti", "iss"} <= set(description)


def test_the_act_chain_is_described(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    exchanged = server.exchange(SALES, tokens["access_token"], CRM).json()["access_token"]

    assert server.introspect(SALES, exchanged)["act"] == {"sub": SALES}


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "firt_unknown"])
def test_an_unknown_token_is_inactive(server: Server, token: str) -> None:
    response = server.post_form("/introspect", {"token": token}, agent=SALES)

    if token:
        assert response.json() == INACTIVE
    else:
        assert oauth_error(response) == "invalid_request"


def test_an_expired_token_is_inactive(server: Server) -> None:
    token = server.machine_token(RECONCILER)
    server.clock.advance(121 + 5)

    assert server.introspect(RECONCILER, token) == INACTIVE


def test_a_revoked_access_token_is_inactive(server: Server) -> None:
    token = server.machine_token(RECONCILER)
    server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    assert server.introspect(RECONCILER, token) == INACTIVE


def test_an_access_token_of_an_ended_sign_in_is_inactive(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])
    server.post_form("/revoke", {"token": tokens["refresh_token"]}, agent=SALES)

    assert server.introspect(SALES, tokens["access_token"]) == INACTIVE


def test_a_refresh_token_is_described_to_its_client(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    description = server.introspect(SALES, tokens["refresh_token"])

    assert description["active"] is True
    assert description["token_type"] == "refresh_token"
    assert description["client_id"] == SALES
    assert description["sub"] == "acme:bob"


def test_another_clients_refresh_token_is_inactive(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    assert server.introspect(SUPPORT, tokens["refresh_token"]) == INACTIVE


def test_a_spent_refresh_token_is_inactive(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])
    server.refresh(SALES, tokens["refresh_token"])

    assert server.introspect(SALES, tokens["refresh_token"]) == INACTIVE


def test_another_agents_access_token_is_inactive_to_an_agent_with_no_business_with_it(
    server: Server,
) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])

    assert server.introspect(FINANCE, tokens["access_token"]) == INACTIVE
    assert server.introspect(SUPPORT, tokens["access_token"]) == INACTIVE


def test_the_agent_a_token_is_addressed_to_and_every_actor_may_introspect_it(
    server: Server,
) -> None:
    sign_in = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    delegated = server.exchange(
        SALES, sign_in["access_token"], agent_urn(SUPPORT), target_name="audience"
    ).json()["access_token"]
    crm = server.exchange(SUPPORT, delegated, CRM).json()["access_token"]

    assert server.introspect(SUPPORT, delegated)["active"] is True
    assert server.introspect(SALES, delegated)["active"] is True
    assert server.introspect(SUPPORT, crm)["active"] is True
    assert server.introspect(SALES, crm)["act"] == {"sub": SUPPORT, "act": {"sub": SALES}}
    assert server.introspect(FINANCE, crm) == INACTIVE


def test_introspection_requires_client_authentication(server: Server) -> None:
    token = server.machine_token(RECONCILER)

    response = server.post_form("/introspect", {"token": token})

    assert response.status_code == 401
    assert oauth_error(response) == "invalid_client"
    assert "www-authenticate" in response.headers


def test_a_token_is_inactive_from_the_second_it_expires(server: Server) -> None:
    token = server.machine_token(RECONCILER)
    server.clock.advance(claims_of(token)["exp"] - server.clock())

    assert server.introspect(RECONCILER, token) == INACTIVE


# -- resource servers ------------------------------------------------------------------
# The example fleet's CRM introspects (`introspection: true`): its server authenticates as
# the client `crm`, and learns only of the access tokens addressed to it.

CRM_SERVER = "crm"


def test_a_resource_server_is_told_of_a_token_addressed_to_it(server: Server) -> None:
    token = server.machine_token(RECONCILER, CRM, "crm:read")

    description = server.introspect(CRM_SERVER, token)

    assert description["active"] is True
    assert description["aud"] == CRM
    assert description["client_id"] == RECONCILER
    assert description["scope"] == "crm:read"


def test_a_resource_server_may_post_its_secret(server: Server) -> None:
    token = server.machine_token(RECONCILER, CRM, "crm:read")
    form = {"token": token, "client_id": CRM_SERVER, "client_secret": server.secret(CRM_SERVER)}

    assert server.post_form("/introspect", form).json()["active"] is True


def test_a_resource_server_learns_nothing_of_tokens_for_others(server: Server) -> None:
    signed_in = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")
    addressed_to_the_agent = signed_in["access_token"]
    assert claims_of(addressed_to_the_agent)["aud"] == agent_urn(SALES)

    assert server.introspect(CRM_SERVER, addressed_to_the_agent) == INACTIVE
    assert server.introspect(CRM_SERVER, signed_in["refresh_token"]) == INACTIVE
    # The agent it was issued to still sees it: the answer depends on who asks.
    assert server.introspect(SALES, addressed_to_the_agent)["active"] is True


def test_a_resource_server_learns_of_a_revocation(server: Server) -> None:
    token = server.machine_token(RECONCILER, CRM, "crm:read")
    assert server.introspect(CRM_SERVER, token)["active"] is True

    server.post_form("/revoke", {"token": token}, agent=RECONCILER)

    assert server.introspect(CRM_SERVER, token) == INACTIVE


def test_a_resource_server_with_a_wrong_secret_is_refused_and_audited(server: Server) -> None:
    token = server.machine_token(RECONCILER, CRM, "crm:read")
    wrong = "fis_" + "x" * 43

    response = server.client.post("/introspect", data={"token": token}, auth=(CRM_SERVER, wrong))

    assert response.status_code == 401
    assert oauth_error(response) == "invalid_client"
    [line] = [
        event for event in server.audit() if event["event"] == "client_authentication_failed"
    ]
    assert line["agent"] == CRM_SERVER
    assert line["outcome"] == "invalid_client on /introspect"
    assert wrong not in str(line) and token not in str(line)


def test_a_resource_servers_credentials_open_only_introspection(server: Server) -> None:
    issued = server.token({"grant_type": "client_credentials", "resource": CRM}, agent=CRM_SERVER)
    revoked = server.post_form("/revoke", {"token": "anything"}, agent=CRM_SERVER)

    assert issued.status_code == 401 and oauth_error(issued) == "invalid_client"
    assert revoked.status_code == 401 and oauth_error(revoked) == "invalid_client"


def test_a_resource_that_does_not_introspect_has_no_credentials(server: Server) -> None:
    token = server.machine_token(RECONCILER, CRM, "crm:read")

    response = server.client.post(
        "/introspect", data={"token": token}, auth=("tools", "fis_" + "y" * 43)
    )

    assert response.status_code == 401
    assert server.secrets.secret("tools") is None
