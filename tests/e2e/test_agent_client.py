"""`fleetid.agent.FleetClient` against a running `fleetid serve`: what an agent's code does."""

from __future__ import annotations

import httpx
import pytest
from harness import FleetServer

from fleetid.agent import FleetClient, Refused

CRM = "https://crm.acme.example.com"


@pytest.fixture(scope="module")
def assistant(fleet_server: FleetServer) -> FleetClient:
    secret = fleet_server.credentials("sales-assistant")
    return FleetClient(fleet_server.issuer, "sales-assistant", secret)


def test_an_agent_exchanges_a_user_token_for_a_narrower_one(
    fleet_server: FleetServer, assistant: FleetClient
) -> None:
    user_token = fleet_server.sign_in("sales-assistant", "alice").access_token

    crm = assistant.exchange(user_token, resource=CRM, scopes=["crm:read"])

    claims = fleet_server.verify(crm.value, audience=CRM)
    assert claims["scope"] == "crm:read"
    assert claims["act"] == {"sub": "sales-assistant"}
    assert crm.scopes == ("crm:read",)
    assert crm.authorization == {"Authorization": f"Bearer {crm.value}"}


def test_the_exchanged_token_is_cached_until_shortly_before_it_expires(
    fleet_server: FleetServer,
) -> None:
    secret = fleet_server.credentials("sales-assistant")
    calls: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda request: calls.append(request.url.path)]})
    client = FleetClient(fleet_server.issuer, "sales-assistant", secret, http=http)
    user_token = fleet_server.sign_in("sales-assistant", "alice").access_token

    first = client.exchange(user_token, resource=CRM, scopes=["crm:read"])
    second = client.exchange(user_token, resource=CRM, scopes=["crm:read"])

    assert first is second
    assert calls.count("/token") == 1


def test_a_refusal_says_why_and_never_shows_a_token(
    fleet_server: FleetServer, assistant: FleetClient
) -> None:
    user_token = fleet_server.sign_in("sales-assistant", "bob").access_token

    with pytest.raises(Refused) as refused:
        assistant.exchange(user_token, resource=CRM, scopes=["crm:write"])

    assert refused.value.error == "invalid_scope"
    assert "none of the roles" in refused.value.description
    assert user_token not in str(refused.value)
    assert user_token not in repr(refused.value)
    assert "fis_" not in repr(assistant)


def test_from_environment_names_what_is_missing() -> None:
    with pytest.raises(Exception, match="FLEETID_ISSUER is not set"):
        FleetClient.from_environment({})


def test_from_environment_reads_the_secret_from_secrets_manager(
    fleet_server: FleetServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    secret = fleet_server.credentials("sales-assistant")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="sa", SecretString=secret)["ARN"]
        client = FleetClient.from_environment(
            {
                "FLEETID_ISSUER": fleet_server.issuer,
                "FLEETID_CLIENT_ID": "sales-assistant",
                "FLEETID_CLIENT_SECRET_ARN": arn,
            }
        )
    user_token = fleet_server.sign_in("sales-assistant", "alice").access_token
    assert client.exchange(user_token, resource=CRM, scopes=["crm:read"]).scopes == ("crm:read",)
