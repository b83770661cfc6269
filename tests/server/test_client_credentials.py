"""The client credentials grant (RFC 6749 §4.4): an agent acting as itself, by its own roles,
on one resource (RFC 8707), for no longer than the policy allows, with no refresh token."""

from __future__ import annotations

from serverkit import (
    CLIENT_CREDENTIALS,
    CRM,
    RECONCILER,
    SALES,
    TOOLS,
    Server,
    agent_urn,
    claims_of,
    oauth_error,
)


def test_an_agent_with_one_resource_gets_everything_it_may_ask_there(server: Server) -> None:
    response = server.token({"grant_type": CLIENT_CREDENTIALS}, agent=RECONCILER)

    assert response.status_code == 200, response.text
    body = response.json()
    claims = claims_of(body["access_token"])
    assert claims["aud"] == CRM
    assert claims["sub"] == claims["client_id"] == claims["azp"] == RECONCILER
    assert claims["scope"] == "crm:read crm:write"
    assert "act" not in claims
    assert "refresh_token" not in body


def test_a_machine_token_on_the_crm_lives_as_the_policy_caps_it(server: Server) -> None:
    body = server.token({"grant_type": CLIENT_CREDENTIALS}, agent=RECONCILER).json()

    claims = claims_of(body["access_token"])
    # policies/crm.yaml: crm-machine-tokens-short caps machine CRM tokens at two minutes.
    assert body["expires_in"] == 120
    assert claims["exp"] - claims["iat"] == 120


def test_an_agent_of_several_resources_must_name_one(server: Server) -> None:
    response = server.token({"grant_type": CLIENT_CREDENTIALS}, agent=SALES)

    assert oauth_error(response) == "invalid_target"


def test_an_agent_without_a_role_for_the_scope_is_invalid_scope(server: Server) -> None:
    # sales-assistant has no roles of its own: as itself it holds no CRM scope.
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "resource": CRM, "scope": "crm:read"}, agent=SALES
    )

    assert oauth_error(response) == "invalid_scope"
    assert "crm:read" in response.json()["error_description"]


def test_a_scope_outside_the_agents_list_is_refused(server: Server) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "resource": TOOLS, "scope": "tools:search"},
        agent=RECONCILER,
    )

    assert oauth_error(response) == "invalid_scope"


def test_only_the_granted_scopes_are_in_the_token(server: Server) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "scope": "crm:read crm:delete"}, agent=RECONCILER
    )

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["scope"] == "crm:read"


def test_a_machine_token_cannot_be_addressed_to_an_agent(server: Server) -> None:
    response = server.token(
        {"grant_type": CLIENT_CREDENTIALS, "resource": agent_urn(SALES)}, agent=RECONCILER
    )

    assert oauth_error(response) == "invalid_target"
