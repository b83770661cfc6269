"""The OAuth client's handling of what a provider may answer, beyond what the peer does:
malformed or hostile responses, served by an in-process httpx transport."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fleetid.fleet.model import OAuthConnection
from fleetid.vault import ProviderClient, ProviderError, ProviderUnreachable
from fleetid.vault.oauth import code_challenge

ISSUER = "https://provider.example"
DISCOVERY = f"{ISSUER}/.well-known/openid-configuration"
SECRET = "client-secret with spaces+plus/slash"
TOKEN_LIKE = "echoed-refresh-token-0123456789"


def connection(**provider: Any) -> OAuthConnection:
    return OAuthConnection.model_validate(
        {
            "kind": "oauth",
            "provider": provider or {"discovery_url": DISCOVERY},
            "client_id": "fleetid client",
            "client_secret": {"env": "SECRET"},
            "scopes": ["calendar.read", "calendar.write"],
        }
    )


def discovery(**changes: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize?tenant=common",
        "token_endpoint": f"{ISSUER}/token",
        "revocation_endpoint": f"{ISSUER}/revoke",
        "code_challenge_methods_supported": ["S256"],
    } | changes


def client(token: Callable[[httpx.Request], httpx.Response], **document: Any) -> ProviderClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(200, json=discovery(**document))
        return token(request)

    return ProviderClient(httpx.Client(transport=httpx.MockTransport(handle)))


def refresh(provider: ProviderClient, config: OAuthConnection | None = None) -> Any:
    config = config or connection()
    metadata = provider.metadata("calendar", config)
    return provider.refresh("calendar", metadata, config, SECRET, "rt")


def test_the_client_authenticates_with_form_encoded_basic_credentials() -> None:
    seen: list[httpx.Request] = []

    def token(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"access_token": "at", "token_type": "bearer"})

    response = refresh(client(token))

    # RFC 6749 §2.3.1: each part form-urlencoded before base64.
    header = seen[0].headers["authorization"]
    user, password = base64.b64decode(header.removeprefix("Basic ")).decode().split(":")
    assert (user, password) == ("fleetid+client", "client-secret+with+spaces%2Bplus%2Fslash")
    assert response.token_type == "Bearer"
    assert response.expires_in is None and response.refresh_token is None
    assert "at" not in repr(response).replace("access_token", "")


def test_the_authorization_url_keeps_the_endpoints_own_query() -> None:
    provider = client(lambda request: httpx.Response(500))
    config = connection()
    metadata = provider.metadata("calendar", config)

    url = provider.authorization_url(
        metadata, config, redirect_uri="https://id.example/cb", state="s", challenge="c"
    )

    assert url.startswith(f"{ISSUER}/authorize?tenant=common&response_type=code&")
    assert "scope=calendar.read%20calendar.write" in url


def test_the_pkce_challenge_is_rfc_7636s_example() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"token_type": "Bearer"}, "no access_token"),
        ({"access_token": "at", "token_type": "DPoP"}, "other than Bearer"),
        ({"access_token": "at", "token_type": "Bearer", "expires_in": "soon"}, "expires_in"),
        ({"access_token": "at", "token_type": "Bearer", "refresh_token": 7}, "refresh_token"),
        ([TOKEN_LIKE], "not a JSON object"),
    ],
)
def test_a_malformed_token_response_is_refused(body: Any, problem: str) -> None:
    provider = client(lambda request: httpx.Response(200, json=body))

    with pytest.raises(ProviderError, match=problem) as raised:
        refresh(provider)

    assert TOKEN_LIKE not in str(raised.value)


def test_an_expires_in_sent_as_a_string_is_read() -> None:
    body = {"access_token": "at", "token_type": "Bearer", "expires_in": "3600", "scope": "a b"}
    response = refresh(client(lambda request: httpx.Response(200, json=body)))

    assert (response.expires_in, response.scope) == (3600, ("a", "b"))


def test_an_error_response_gives_its_code_but_never_its_description() -> None:
    body = {"error": "invalid_grant", "error_description": f"token {TOKEN_LIKE} was revoked"}
    provider = client(lambda request: httpx.Response(400, json=body))

    with pytest.raises(ProviderError) as raised:
        refresh(provider)

    assert (raised.value.error, raised.value.status) == ("invalid_grant", 400)
    assert "invalid_grant" in str(raised.value)
    assert TOKEN_LIKE not in str(raised.value)


def test_an_error_code_that_is_not_a_code_is_not_repeated() -> None:
    body = {"error": f"<script>{TOKEN_LIKE}</script>"}
    provider = client(lambda request: httpx.Response(400, json=body))

    with pytest.raises(ProviderError) as raised:
        refresh(provider)

    assert raised.value.error == "unrecognised_error"
    assert TOKEN_LIKE not in str(raised.value)


def test_discovery_naming_another_issuer_is_refused() -> None:
    provider = client(lambda request: httpx.Response(500), issuer="https://attacker.example")

    with pytest.raises(ProviderError, match="another issuer"):
        provider.metadata("calendar", connection())


def test_endpoints_must_be_https_off_loopback() -> None:
    provider = client(
        lambda request: httpx.Response(500), token_endpoint="http://provider.example/t"
    )

    with pytest.raises(ProviderError, match="not https"):
        provider.metadata("calendar", connection())


def test_endpoints_in_fleet_yaml_win_over_discovered_ones() -> None:
    provider = client(lambda request: httpx.Response(500))
    config = connection(discovery_url=DISCOVERY, token_endpoint=f"{ISSUER}/other-token")

    metadata = provider.metadata("calendar", config)

    assert metadata.token_endpoint == f"{ISSUER}/other-token"
    assert metadata.revocation_endpoint == f"{ISSUER}/revoke"
    assert metadata.issuer == ISSUER


def test_discovery_is_cached() -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json=discovery())

    provider = ProviderClient(httpx.Client(transport=httpx.MockTransport(handle)))
    for _ in range(3):
        provider.metadata("calendar", connection())

    assert len(calls) == 1


def test_a_failed_connection_is_unreachable_with_its_cause() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    provider = ProviderClient(httpx.Client(transport=httpx.MockTransport(handle)))

    with pytest.raises(ProviderUnreachable) as raised:
        provider.metadata("calendar", connection())

    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert raised.value.code == "provider_unreachable"


def test_revocation_errors_are_reported() -> None:
    provider = client(lambda request: httpx.Response(503, text="down"))
    config = connection()
    metadata = provider.metadata("calendar", config)

    with pytest.raises(ProviderError) as raised:
        provider.revoke("calendar", metadata, config, SECRET, "rt", hint="refresh_token")

    assert (raised.value.status, raised.value.operation) == (503, "revocation")
    assert json.dumps(raised.value.args).find(SECRET) == -1
