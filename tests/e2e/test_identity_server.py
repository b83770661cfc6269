"""The identity server end to end: discovery, the code flow, token exchange under issuance
policy, client credentials, refresh rotation, introspection, revocation, userinfo, the
`verify`, `login` and `audit` commands, a second server refused on the same state folder,
and no secret in the audit trail or the log.

One `fleetid serve` runs for the whole module, on the example fleet plus one Globex
administrator among the dev users (the example has none, and the Globex policy is about
them). Tests that end a sign-in (reuse detection, revocation) start their own.
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuthError
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from harness import (
    CRM,
    LOOPBACK_CALLBACK,
    SUPPORT_CALLBACK,
    TOKEN_EXCHANGE,
    FleetServer,
    SignIn,
    page_form,
)

SALES = "sales-assistant"
SUPPORT = "support-triage"
RECONCILER = "crm-reconciler"
SALES_AUDIENCE = f"urn:fleetid:agent:{SALES}"
SUPPORT_SCOPE = "openid crm:read tools:search tools:tickets"

GLOBEX_ADMIN = """
  gina:
    name: Gina Rossi
    email: gina@globex.example
    tenant: globex
    groups: [crm-admins@globex.example]
"""


@pytest.fixture(scope="module")
def fleet_copy(fleet_copy: Path) -> Path:
    text = fleet_copy.read_text()
    assert text.rstrip().endswith("groups: [Finance Analysts]"), "dev_users is no longer last"
    fleet_copy.write_text(text.rstrip("\n") + "\n" + GLOBEX_ADMIN.lstrip("\n"))
    return fleet_copy


@pytest.fixture(scope="module")
def server(fleet_server: FleetServer) -> FleetServer:
    return fleet_server


@pytest.fixture(scope="module")
def alice(server: FleetServer) -> SignIn:
    """Alice (Sales Managers at acme) signed in to sales-assistant."""
    return server.sign_in(SALES, "alice")


@pytest.fixture(scope="module")
def alice_crm(server: FleetServer, alice: SignIn) -> dict[str, Any]:
    """sales-assistant's crm:read token for Alice, exchanged from her sign-in token."""
    return server.exchange(SALES, alice.access_token, resource=CRM, scope="crm:read")


@pytest.fixture(scope="module")
def alice_support(server: FleetServer) -> SignIn:
    """Alice signed in to support-triage."""
    return server.sign_in(SUPPORT, "alice", scope=SUPPORT_SCOPE, redirect_uri=SUPPORT_CALLBACK)


def refusal(call: Any, *args: Any, **kwargs: Any) -> OAuthError:
    with pytest.raises(OAuthError) as refused:
        call(*args, **kwargs)
    return refused.value


# -- discovery -------------------------------------------------------------------------


def test_both_discovery_documents_describe_the_same_server(server: FleetServer) -> None:
    http = server.browser()
    oidc = http.get(server.discovery_url)
    oauth = http.get(f"{server.issuer}/.well-known/oauth-authorization-server")
    assert oidc.status_code == oauth.status_code == 200
    assert oidc.headers["content-type"] == "application/json"
    assert oidc.json() == oauth.json()

    metadata = oidc.json()
    issuer = server.issuer
    assert metadata["issuer"] == issuer
    assert metadata["authorization_endpoint"] == f"{issuer}/authorize"
    assert metadata["token_endpoint"] == f"{issuer}/token"
    assert metadata["jwks_uri"] == f"{issuer}/jwks.json"
    assert metadata["userinfo_endpoint"] == f"{issuer}/userinfo"
    assert metadata["introspection_endpoint"] == f"{issuer}/introspect"
    assert metadata["revocation_endpoint"] == f"{issuer}/revoke"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"crm:read", "crm:write", "tools:search", "tools:tickets"} <= set(
        metadata["scopes_supported"]
    )
    # Authlib's OpenID Provider metadata model accepts the document as it is.
    OpenIDProviderMetadata(metadata).validate()


def test_discovery_is_valid_rfc8414_metadata(server: FleetServer) -> None:
    AuthorizationServerMetadata(server.metadata).validate()


def test_every_advertised_endpoint_answers(server: FleetServer) -> None:
    http = server.browser()
    metadata = server.metadata

    jwks = http.get(metadata["jwks_uri"])
    assert jwks.status_code == 200
    keys = jwks.json()["keys"]
    assert keys
    assert all(key["alg"] == "RS256" and key["kid"] and "d" not in key for key in keys)

    # The authorization endpoint answers a request naming no client with a page, since
    # there is nowhere safe to redirect to.
    authorize = http.get(metadata["authorization_endpoint"])
    assert authorize.status_code == 400
    assert authorize.headers["content-type"].startswith("text/html")
    assert "location" not in authorize.headers

    token = http.post(metadata["token_endpoint"], data={"grant_type": "password"})
    assert token.status_code == 400
    assert token.json()["error"] == "unsupported_grant_type"

    for name in ("introspection_endpoint", "revocation_endpoint"):
        unauthenticated = http.post(metadata[name], data={"token": "x"})
        assert unauthenticated.status_code == 401, name
        assert unauthenticated.json()["error"] == "invalid_client"

    userinfo = http.get(metadata["userinfo_endpoint"])
    assert userinfo.status_code == 401
    assert userinfo.headers["www-authenticate"].startswith("Bearer")


def test_every_advertised_grant_type_is_served(server: FleetServer) -> None:
    http = server.browser()
    auth = (RECONCILER, server.credentials(RECONCILER))
    for grant_type in server.metadata["grant_types_supported"]:
        response = http.post(server.token_endpoint, data={"grant_type": grant_type}, auth=auth)
        body = response.json()
        server.remember_token(body)
        assert body.get("error") != "unsupported_grant_type", grant_type


# -- a person signs in -----------------------------------------------------------------


def test_alice_signs_in_through_the_code_flow(server: FleetServer, alice: SignIn) -> None:
    # RFC 9207: the authorization response names the issuer, and carries the state back.
    assert alice.callback["state"] == alice.state
    assert alice.callback["iss"] == server.issuer
    assert set(alice.callback) == {"code", "state", "iss"}
    # The consent page already shows what policy refuses, and why.
    assert "crm:write: needs a person&#x27;s approval" in alice.consent_page

    token = alice.token
    assert token is not None
    assert token["token_type"] == "Bearer"
    assert token["refresh_token"]
    assert token["expires_in"] == 900

    sign_in = server.verify(alice.access_token, audience=SALES_AUDIENCE)
    assert sign_in["sub"] == "acme:alice"
    assert sign_in["client_id"] == sign_in["azp"] == SALES
    assert sign_in["scope"].split() == ["openid", "profile", "email"]
    assert sign_in["tenant"] == "acme"


def test_the_id_token_is_for_the_agent_and_carries_the_nonce(
    server: FleetServer, alice: SignIn
) -> None:
    assert alice.token is not None
    claims = server.verify(alice.token["id_token"], audience=SALES, typ="JWT")
    assert claims["nonce"] == alice.nonce
    assert claims["azp"] == SALES
    assert claims["sub"] == "acme:alice"
    assert claims["name"] == "Alice Moreau"
    assert claims["email"] == "alice@acme.example.com"
    assert claims["auth_time"] <= claims["iat"]


def test_userinfo_answers_with_the_sign_in_token(server: FleetServer, alice: SignIn) -> None:
    # The Authlib client holds the token it fetched and sends it as a bearer token.
    response = alice.client.get(server.metadata["userinfo_endpoint"])
    assert response.status_code == 200
    assert response.json() == {
        "sub": "acme:alice",
        "tenant": "acme",
        "name": "Alice Moreau",
        "email": "alice@acme.example.com",
    }


def test_userinfo_refuses_a_resource_token(server: FleetServer, alice_crm: dict[str, Any]) -> None:
    response = server.browser().get(
        server.metadata["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {alice_crm['access_token']}"},
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


# -- token exchange under issuance policy ---------------------------------------------


def test_exchange_gives_a_crm_read_token_with_the_documented_claims(
    server: FleetServer, alice_crm: dict[str, Any]
) -> None:
    assert alice_crm["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert alice_crm["token_type"] == "Bearer"
    assert alice_crm["scope"] == "crm:read"
    assert "refresh_token" not in alice_crm

    claims = server.verify(alice_crm["access_token"], audience=CRM)
    assert claims["iss"] == server.issuer
    assert claims["aud"] == CRM
    assert claims["sub"] == "acme:alice"
    assert claims["client_id"] == claims["azp"] == SALES
    assert claims["scope"] == "crm:read"
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["jti"]
    assert claims["tenant"] == "acme"
    assert claims["revision"].startswith(server.revision_short)
    assert claims["act"] == {"sub": SALES}


def test_exchange_grants_only_what_policy_allows(server: FleetServer, alice: SignIn) -> None:
    # Asked for read and write, Alice's token carries read: write waits for her approval.
    partial = server.exchange(SALES, alice.access_token, scope="crm:read crm:write")
    assert partial["scope"] == "crm:read"
    assert server.verify(partial["access_token"], audience=CRM)["scope"] == "crm:read"


def test_crm_write_is_refused_to_a_user_without_the_role(server: FleetServer) -> None:
    bob = server.sign_in(SALES, "bob")
    refused = refusal(server.exchange, SALES, bob.access_token, scope="crm:write")
    assert refused.error == "invalid_scope"
    assert refused.description.startswith("crm:write: ")
    assert "holds none of the roles" in refused.description
    assert "sales-manager" in refused.description


def test_crm_write_for_alice_needs_approval(server: FleetServer, alice: SignIn) -> None:
    refused = refusal(server.exchange, SALES, alice.access_token, scope="crm:write")
    assert refused.error == "invalid_scope"
    assert refused.description.startswith("crm:write: ")
    assert "approval" in refused.description
    assert "crm-write-needs-approval" in refused.description


def test_crm_write_for_a_globex_admin_is_denied_by_policy(server: FleetServer) -> None:
    gina = server.sign_in(SALES, "gina")
    assert "globex-no-crm-writes" in gina.consent_page
    # She holds sales-manager through her Okta group, so only the policy stands in the way.
    assert server.exchange(SALES, gina.access_token, scope="crm:read")["scope"] == "crm:read"

    refused = refusal(server.exchange, SALES, gina.access_token, scope="crm:write")
    assert refused.error == "invalid_scope"
    assert "crm:write: denied by policy globex-no-crm-writes" in refused.description


def test_an_agent_cannot_exchange_for_a_scope_outside_its_list(
    server: FleetServer, alice_support: SignIn
) -> None:
    # Alice holds crm:write's role; support-triage may still never ask for it.
    read = server.exchange(SUPPORT, alice_support.access_token, scope="crm:read")
    assert server.verify(read["access_token"], audience=CRM)["client_id"] == SUPPORT

    refused = refusal(server.exchange, SUPPORT, alice_support.access_token, scope="crm:write")
    assert refused.error == "invalid_scope"
    assert "crm:write" in refused.description
    assert "not in the agent's scopes" in refused.description


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        ("crm:write", "not in the agent's scopes"),
        ("crm:read", "acting as itself, holds none of the roles"),
    ],
    ids=["unlisted", "no-role"],
)
def test_client_credentials_refuse_what_the_agent_may_not_hold(
    server: FleetServer, scope: str, reason: str
) -> None:
    refused = refusal(server.client_credentials, SUPPORT, resource=CRM, scope=scope)
    assert refused.error == "invalid_scope"
    assert refused.description.startswith(f"{scope}: ")
    assert reason in refused.description


def test_client_credentials_give_the_reconciler_a_short_crm_token(server: FleetServer) -> None:
    token = server.client_credentials(RECONCILER)
    assert token["scope"] == "crm:read crm:write"
    assert token["expires_in"] == 120
    assert "refresh_token" not in token

    claims = server.verify(token["access_token"], audience=CRM)
    assert claims["sub"] == claims["client_id"] == claims["azp"] == RECONCILER
    assert claims["scope"] == "crm:read crm:write"
    assert claims["exp"] - claims["iat"] == 120
    assert "act" not in claims
    assert "tenant" not in claims


def test_concurrent_rs256_tokens_are_signed_on_the_native_threads(server: FleetServer) -> None:
    # `fleetid serve` hands RS256 signatures to native threads; many at once must each come
    # back whole, under the key the JWKS publishes.
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(pool.map(lambda _: server.client_credentials(RECONCILER), range(40)))

    for token in tokens:
        assert server.verify(token["access_token"], audience=CRM)["sub"] == RECONCILER
    assert server.wait_for_log(r"key \S+ signs on \d+ native thread")


def test_exchanging_a_token_issued_to_another_agent_is_refused(
    server: FleetServer, alice: SignIn, alice_crm: dict[str, Any], alice_support: SignIn
) -> None:
    for agent, token in [
        (SUPPORT, alice.access_token),
        (SUPPORT, alice_crm["access_token"]),
        (SALES, alice_support.access_token),
    ]:
        refused = refusal(server.exchange, agent, token, scope="crm:read")
        assert refused.error == "invalid_grant"
        assert "issued to another agent" in refused.description


def test_only_access_tokens_are_subject_tokens(server: FleetServer, alice: SignIn) -> None:
    assert alice.token is not None
    for token in (alice.token["id_token"], alice.token["refresh_token"]):
        refused = refusal(server.exchange, SALES, token, scope="crm:read")
        assert refused.error == "invalid_grant"


def test_an_agent_delegates_to_another_and_the_actor_chain_nests(
    server: FleetServer, alice: SignIn
) -> None:
    handed = server.exchange(
        SALES, alice.access_token, resource=None, audience=f"urn:fleetid:agent:{SUPPORT}"
    )
    delegated = server.verify(handed["access_token"], audience=f"urn:fleetid:agent:{SUPPORT}")
    assert delegated["sub"] == "acme:alice"
    assert delegated["act"] == {"sub": SALES}

    crm = server.exchange(SUPPORT, handed["access_token"], scope="crm:read")
    claims = server.verify(crm["access_token"], audience=CRM)
    assert claims["client_id"] == SUPPORT
    assert claims["act"] == {"sub": SUPPORT, "act": {"sub": SALES}}


# -- fleetid verify --------------------------------------------------------------------


def test_verify_accepts_the_sign_in_token(server: FleetServer, alice: SignIn) -> None:
    result = server.cli(
        "verify", alice.access_token, "--agent", SALES,
        "--fleet", str(server.fleet), "--server", server.issuer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"accepted: acme:alice via {SALES}"


@pytest.mark.parametrize(
    ("token_of", "reason"),
    [
        ("alice_crm", f"aud is not among ['{SALES_AUDIENCE}']"),
        ("alice_support", f"client_id is not among ['{SALES}']"),
    ],
    ids=["crm-token", "other-agents-token"],
)
def test_verify_rejects_a_token_not_meant_for_the_agent(
    server: FleetServer, request: pytest.FixtureRequest, token_of: str, reason: str
) -> None:
    held = request.getfixturevalue(token_of)
    token = held.access_token if isinstance(held, SignIn) else held["access_token"]
    result = server.cli(
        "verify", token, "--agent", SALES, "--fleet", str(server.fleet), "--server", server.issuer
    )
    assert result.returncode == 4
    assert result.stderr.strip() == f"fleetid: rejected: {reason}"
    assert result.stdout == ""


# -- codes, PKCE and the authorization endpoint ---------------------------------------


def test_a_code_works_once_and_its_reuse_revokes_the_sign_in(server: FleetServer) -> None:
    first = server.sign_in(SALES, "alice")
    again = refusal(
        server.fetch,
        first.client,
        authorization_response=first.location,
        state=first.state,
        code_verifier=first.verifier,
    )
    assert again.error == "invalid_grant"

    # RFC 6749 §10.5: what the first redemption issued is revoked with it.
    assert refusal(server.exchange, SALES, first.access_token).error == "invalid_grant"
    assert first.token is not None
    refreshed = refusal(
        first.client.refresh_token,
        server.token_endpoint,
        refresh_token=first.token["refresh_token"],
    )
    assert refreshed.error == "invalid_grant"


def test_a_code_needs_the_verifier_of_its_challenge(server: FleetServer) -> None:
    unredeemed = server.sign_in(SALES, "alice", redeem=False)
    wrong = refusal(
        server.fetch,
        unredeemed.client,
        authorization_response=unredeemed.location,
        state=unredeemed.state,
        code_verifier=generate_token(64),
    )
    assert wrong.error == "invalid_grant"
    assert "code_verifier" in wrong.description


@pytest.mark.parametrize(
    "challenge",
    [{}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}],
    ids=["no-challenge", "plain"],
)
def test_authorization_without_an_s256_challenge_is_refused_at_the_redirect(
    server: FleetServer, challenge: dict[str, str]
) -> None:
    client = server.client(SALES, redirect_uri=LOOPBACK_CALLBACK)
    url, state = client.create_authorization_url(
        server.metadata["authorization_endpoint"], scope="openid", **challenge
    )
    answer = server.browser().get(url)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"{LOOPBACK_CALLBACK}?")
    callback = dict(parse_qsl(urlsplit(location).query))
    assert callback["error"] == "invalid_request"
    assert "code_challenge" in callback["error_description"]
    assert callback["state"] == state
    assert callback["iss"] == server.issuer


def test_an_unregistered_redirect_uri_is_never_redirected_to(server: FleetServer) -> None:
    client = server.client(SALES, redirect_uri="http://127.0.0.1:9/elsewhere")
    url, _ = client.create_authorization_url(
        server.metadata["authorization_endpoint"], scope="openid"
    )
    answer = server.browser().get(url)
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert "not registered" in answer.text


def test_a_denied_consent_returns_access_denied(server: FleetServer) -> None:
    denied = server.sign_in(SALES, "bob", decision="deny")
    assert denied.token is None
    assert denied.callback["error"] == "access_denied"
    assert denied.callback["state"] == denied.state
    assert denied.callback["iss"] == server.issuer
    assert "code" not in denied.callback


def test_the_sign_in_pages_belong_to_one_browser_and_are_answered_once(
    server: FleetServer,
) -> None:
    client = server.client(SALES, redirect_uri=LOOPBACK_CALLBACK, code_challenge_method="S256")
    url, _ = client.create_authorization_url(
        server.metadata["authorization_endpoint"], code_verifier=generate_token(64), scope="openid"
    )
    browser = server.browser()
    sign_in = page_form(browser.get(url))

    # The same form posted from another browser lacks the interaction's cookie.
    elsewhere = server.browser().post(
        f"{server.issuer}{sign_in.action}", data={**sign_in.hidden, "user": "alice"}
    )
    assert elsewhere.status_code == 400
    assert "another browser" in elsewhere.text

    consent = page_form(
        browser.post(f"{server.issuer}{sign_in.action}", data={**sign_in.hidden, "user": "alice"})
    )
    answer = {**consent.hidden, "decision": "allow"}
    first = browser.post(f"{server.issuer}{consent.action}", data=answer)
    assert first.status_code == 303
    server.remember(dict(parse_qsl(urlsplit(first.headers["location"]).query)).get("code"))
    again = browser.post(f"{server.issuer}{consent.action}", data=answer)
    assert again.status_code == 400
    assert "location" not in again.headers


def test_a_sign_in_for_one_resource_gets_its_token_directly(server: FleetServer) -> None:
    # Consent to one resource only: the code is redeemed for a crm token, not a sign-in
    # token, and the refresh token remembers the resource.
    signed_in = server.sign_in(SALES, "bob", scope="openid crm:read")
    assert signed_in.token is not None
    assert signed_in.token["scope"] == "crm:read"
    assert server.verify(signed_in.access_token, audience=CRM)["sub"] == "acme:bob"

    refreshed = dict(
        signed_in.client.refresh_token(
            server.token_endpoint, refresh_token=signed_in.token["refresh_token"]
        )
    )
    server.remember_token(refreshed)
    assert refreshed["scope"] == "crm:read"
    assert server.verify(refreshed["access_token"], audience=CRM)["sub"] == "acme:bob"


# -- refresh rotation ------------------------------------------------------------------


def test_refresh_token_reuse_revokes_the_whole_family(server: FleetServer) -> None:
    signed_in = server.sign_in(SALES, "alice")
    assert signed_in.token is not None
    first = signed_in.token["refresh_token"]
    client = signed_in.client

    rotated = dict(client.refresh_token(server.token_endpoint, refresh_token=first))
    server.remember_token(rotated)
    second = rotated["refresh_token"]
    assert second != first
    assert server.verify(rotated["access_token"], audience=SALES_AUDIENCE)["sub"] == "acme:alice"
    assert server.introspect(SALES, first) == {"active": False}
    assert server.introspect(SALES, second)["token_type"] == "refresh_token"

    # Another agent presenting the rotated token is refused without it counting as reuse.
    stolen = refusal(
        server.client(SUPPORT).refresh_token, server.token_endpoint, refresh_token=second
    )
    assert stolen.error == "invalid_grant"
    assert "another client" in stolen.description
    assert server.introspect(SALES, second)["active"] is True

    # The first token again: reuse, and the whole sign-in is revoked.
    reused = refusal(client.refresh_token, server.token_endpoint, refresh_token=first)
    assert reused.error == "invalid_grant"
    assert "already used" in reused.description

    after = refusal(client.refresh_token, server.token_endpoint, refresh_token=second)
    assert after.error == "invalid_grant"
    assert refusal(server.exchange, SALES, signed_in.access_token).error == "invalid_grant"
    assert refusal(server.exchange, SALES, rotated["access_token"]).error == "invalid_grant"
    assert server.introspect(SALES, signed_in.access_token) == {"active": False}


# -- introspection and revocation ------------------------------------------------------


def test_introspection_shows_a_live_token_and_revocation_ends_it(
    server: FleetServer, alice: SignIn
) -> None:
    token = server.exchange(SALES, alice.access_token, scope="crm:read")["access_token"]
    claims = server.verify(token, audience=CRM)

    live = server.introspect(SALES, token)
    assert live["active"] is True
    for name in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "tenant", "act"):
        assert live[name] == claims[name], name

    # RFC 7009 §2.1: a token is revoked only by the client it was issued to.
    assert server.revoke(SUPPORT, token).status_code == 200
    assert server.introspect(SALES, token)["active"] is True

    assert server.revoke(SALES, token).status_code == 200
    assert server.introspect(SALES, token) == {"active": False}
    # Revoking it again, or revoking nonsense, is not an error (RFC 7009 §2.2).
    assert server.revoke(SALES, token).status_code == 200
    assert server.revoke(SALES, "not-a-token").status_code == 200


def test_the_crms_server_introspects_the_tokens_sent_to_it(
    server: FleetServer, alice: SignIn
) -> None:
    # The example's CRM introspects: `fleetid credentials crm` gives its server a secret,
    # and authlib asks as that client.
    token = server.exchange(SALES, alice.access_token, scope="crm:read")["access_token"]

    described = server.introspect("crm", token)
    assert described["active"] is True
    assert described["aud"] == CRM
    assert described["act"] == {"sub": SALES}
    # The sign-in token is addressed to the agent, not to the CRM.
    assert server.introspect("crm", alice.access_token) == {"active": False}

    assert server.revoke(SALES, token).status_code == 200
    assert server.introspect("crm", token) == {"active": False}


def test_introspection_by_an_unrelated_agent_says_inactive(
    server: FleetServer, alice_crm: dict[str, Any]
) -> None:
    assert server.introspect(RECONCILER, alice_crm["access_token"]) == {"active": False}


def test_unauthenticated_introspection_is_invalid_client(
    server: FleetServer, alice_crm: dict[str, Any]
) -> None:
    http = server.browser()
    endpoint = server.metadata["introspection_endpoint"]
    for auth in [None, (SALES, "fis_wrong")]:
        response = http.post(endpoint, data={"token": alice_crm["access_token"]}, auth=auth)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic")
        assert "active" not in response.json()


def test_revoking_a_refresh_token_ends_the_sign_in(server: FleetServer) -> None:
    signed_in = server.sign_in(SALES, "bob")
    assert signed_in.token is not None
    assert server.revoke(SALES, signed_in.token["refresh_token"]).status_code == 200

    assert refusal(server.exchange, SALES, signed_in.access_token).error == "invalid_grant"
    userinfo = signed_in.client.get(server.metadata["userinfo_endpoint"])
    assert userinfo.status_code == 401
    assert 'error="invalid_token"' in userinfo.headers["www-authenticate"]


# -- fleetid login and fleetid audit ---------------------------------------------------


def test_fleetid_login_prints_a_token_response_that_exchanges(server: FleetServer) -> None:
    result = server.cli(
        "login", "--agent", SALES, "--user", "alice",
        "--fleet", str(server.fleet), "--state", str(server.state), "--server", server.issuer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    server.remember_token(response)
    assert response["token_type"] == "Bearer"
    assert {"access_token", "refresh_token", "id_token"} <= set(response)
    assert server.verify(response["access_token"], audience=SALES_AUDIENCE)["sub"] == "acme:alice"

    exchanged = server.exchange(SALES, response["access_token"], scope="crm:read")
    assert server.verify(exchanged["access_token"], audience=CRM)["scope"] == "crm:read"


def test_audit_lists_decisions_with_granted_and_refused_scopes(
    server: FleetServer, alice_crm: dict[str, Any]
) -> None:
    result = server.cli(
        "audit", "--agent", SALES, "--format", "json", "--state", str(server.state)
    )
    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert events
    assert {event["agent"] for event in events} == {SALES}

    jti = server.verify(alice_crm["access_token"], audience=CRM)["jti"]
    issued = [event for event in events if event["jti"] == jti]
    assert len(issued) == 1
    assert issued[0]["event"] == "token_issued"
    assert issued[0]["grant_type"] == TOKEN_EXCHANGE
    assert issued[0]["subject"] == "alice"
    assert issued[0]["tenant"] == "acme"
    assert issued[0]["resource"] == "crm"
    assert issued[0]["granted"] == ["crm:read"]
    assert issued[0]["act"] == [SALES]
    assert issued[0]["revision"].startswith(server.revision_short)

    refusals = {
        (event["subject"], refused["scope"], refused["code"]): refused["reason"]
        for event in events
        if event["event"] == "token_refused"
        for refused in event["refused"]
    }
    assert "approval" in refusals["alice", "crm:write", "approval_required"]
    assert "holds none of the roles" in refusals["bob", "crm:write", "no_role"]
    assert "globex-no-crm-writes" in refusals["gina", "crm:write", "denied"]
    # A refused decision never names a token.
    assert all(
        event["jti"] is None and event["granted"] == []
        for event in events
        if event["event"] == "token_refused"
    )

    consents = [event for event in events if event["event"] == "consent"]
    assert any(
        event["subject"] == "alice" and event["resource"] == "crm" and event["granted"]
        for event in consents
    )


def test_the_server_log_has_one_line_per_request_without_queries(server: FleetServer) -> None:
    log = server.log_text()
    assert "GET /authorize 200" in log
    assert "GET /authorize?" not in log
    assert "code=" not in log


def test_a_second_server_on_the_same_state_folder_is_refused(server: FleetServer) -> None:
    logged = len(server.log_text())
    secrets_before = (server.state / "clients.json").read_bytes()

    assert server.run_another() == 1

    [line] = server.log_text()[logged:].splitlines()
    assert line == (
        f"fleetid: state folder {server.state} is in use by another fleetid serve "
        f"(process {server.pid}): stop it, or give this one another folder with --state"
    )
    assert (server.state / "clients.json").read_bytes() == secrets_before
    assert server.browser().get(server.discovery_url).status_code == 200


def test_no_secret_reaches_the_audit_trail_or_the_log(server: FleetServer) -> None:
    # Last in the module: by now every grant, the CLI and every refusal have been exercised.
    assert "POST /token 200" in server.log_text()
    server.assert_nothing_secret_written()
