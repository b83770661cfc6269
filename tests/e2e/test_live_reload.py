"""`fleetid serve` follows its fleet: an edit goes live as a new revision, a new agent gets
credentials (here one that authenticates with private_key_jwt), a new policy file
restricts at once, an invalid edit is refused while the last good revision keeps serving,
and a restart on the same state keeps the client secrets and the signing keys.

The tests run in order on one server and one fleet copy, each building on the last.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import jwt
import pytest
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import CRM, FleetServer, edit_fleet, wait_until, write_atomically

SUPPORT = "support-triage"
RECONCILER = "crm-reconciler"
LEDGER = "ledger-sync"
LEDGER_KID = "ledger-sync-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# support-triage gains crm:write and a role to hold it by; crm-reconciler loses crm:write.
SUPPORT_GAINS_WRITE = (
    "      crm: [crm:read]\n"
    "      tools: [tools:search, tools:tickets]\n"
    "    redirect_uris: [https://support.acme.example.com/callback]\n",
    "      crm: [crm:read, crm:write]\n"
    "      tools: [tools:search, tools:tickets]\n"
    "    roles: [crm-sync]\n"
    "    redirect_uris: [https://support.acme.example.com/callback]\n",
)
RECONCILER_LOSES_WRITE = (
    "      crm: [crm:read, crm:write]\n    roles: [crm-sync]\n",
    "      crm: [crm:read]\n    roles: [crm-sync]\n",
)
# A scope the crm resource does not define: the validator refuses the whole file.
INVALID_SCOPE = (
    "      crm: [crm:read, crm:write]\n      tools: [tools:search, tools:tickets]\n",
    "      crm: [crm:read, crm:write, crm:erase]\n      tools: [tools:search, tools:tickets]\n",
)
INVALID_PROBLEM = r"fleet\.yaml:\d+:\d+: error: resource 'crm' defines no scope 'crm:erase'"
SUPPORT_FREEZE = """\
version: 1
rules:
  - id: support-no-crm-writes
    description: support-triage reads the CRM and never writes to it
    effect: deny
    match:
      agents: [support-triage]
      scopes: ["crm:write"]
"""


@pytest.fixture(scope="module")
def server(fleet_server: FleetServer) -> FleetServer:
    return fleet_server


@pytest.fixture(scope="module")
def ledger_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def granted(server: FleetServer, agent: str, **request: Any) -> dict[str, Any] | None:
    """The client credentials token, or None while the server refuses it."""
    try:
        return server.client_credentials(agent, **request)
    except OAuthError:
        return None


def refusal(server: FleetServer, agent: str, **request: Any) -> OAuthError | None:
    try:
        server.client_credentials(agent, **request)
    except OAuthError as refused:
        return refused
    return None


def revision_of(server: FleetServer, token: dict[str, Any]) -> str:
    return str(server.verify(token["access_token"], audience=CRM)["revision"])


def test_an_edited_fleet_goes_live(server: FleetServer) -> None:
    before = server.client_credentials(RECONCILER)
    assert before["scope"] == "crm:read crm:write"
    first_revision = revision_of(server, before)
    assert first_revision.startswith(server.revision_short)
    refused = refusal(server, SUPPORT, resource=CRM, scope="crm:write")
    assert refused is not None
    assert "not in the agent's scopes" in refused.description

    edit_fleet(server.fleet, SUPPORT_GAINS_WRITE, RECONCILER_LOSES_WRITE)
    token = wait_until(
        lambda: granted(server, SUPPORT, resource=CRM, scope="crm:write"),
        timeout=15,
        what="support-triage to be granted crm:write",
    )
    assert token["scope"] == "crm:write"
    assert token["expires_in"] == 120
    new_revision = revision_of(server, token)
    assert new_revision != first_revision
    server.wait_for_log(f"revision {new_revision[:12]} is live")

    # The same revision took crm:write from the reconciler: both edits landed together.
    after = server.client_credentials(RECONCILER, scope="crm:read crm:write")
    assert after["scope"] == "crm:read"
    assert revision_of(server, after) == new_revision


def test_a_new_agent_is_served_with_credentials_on_reload(
    server: FleetServer, ledger_key: rsa.RSAPrivateKey
) -> None:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(ledger_key.public_key(), as_dict=True)
    jwks = {"keys": [{**public, "kid": LEDGER_KID, "alg": "RS256", "use": "sig"}]}
    agent = (
        f"  {LEDGER}:\n"
        "    runtime: langgraph\n"
        "    description: Posts CRM totals to the ledger\n"
        "    scopes:\n"
        "      crm: [crm:read]\n"
        "    roles: [crm-sync]\n"
        "    token_endpoint_auth_method: private_key_jwt\n"
        f"    jwks: {json.dumps(jwks)}\n"
    )
    edit_fleet(server.fleet, ("\n\ngateways:\n", f"\n{agent}\ngateways:\n"))
    server.wait_for_log(f"new agent {LEDGER}: client_id {LEDGER}")

    # It got a secret like every agent, but may not authenticate with it; being told so
    # (rather than "unknown client") shows the revision that knows it is live.
    http = server.browser()

    def told_to_use_its_key() -> bool:
        answer = http.post(
            server.token_endpoint,
            data={"grant_type": "client_credentials"},
            auth=(LEDGER, server.credentials(LEDGER)),
        )
        assert answer.status_code == 401
        return "not client_secret_basic" in answer.json()["error_description"]

    wait_until(told_to_use_its_key, timeout=15, what=f"{LEDGER} to be served")


def test_the_new_agent_authenticates_with_private_key_jwt(
    server: FleetServer, ledger_key: rsa.RSAPrivateKey
) -> None:
    pem = ledger_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    # The server refuses assertions that live over 600 s, and Authlib's default is an hour.
    auth = PrivateKeyJWT(
        server.token_endpoint,
        claims={"exp": int(time.time()) + 300},
        headers={"kid": LEDGER_KID},
    )
    with OAuth2Client(
        client_id=LEDGER,
        client_secret=pem,
        token_endpoint_auth_method="private_key_jwt",
        timeout=10,
        trust_env=False,
    ) as client:
        client.register_client_auth_method(auth)
        token = dict(client.fetch_token(server.token_endpoint, grant_type="client_credentials"))
    server.remember_token(token)
    assert token["scope"] == "crm:read"
    claims = server.verify(token["access_token"], audience=CRM)
    assert claims["client_id"] == claims["sub"] == LEDGER

    # RFC 7523 §3: an assertion is accepted once.
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": LEDGER,
            "sub": LEDGER,
            "aud": server.token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        },
        ledger_key,
        algorithm="RS256",
        headers={"kid": LEDGER_KID},
    )
    server.remember(assertion)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    http = server.browser()
    first = http.post(server.token_endpoint, data=form)
    assert first.status_code == 200, first.text
    server.remember_token(first.json())
    replayed = http.post(server.token_endpoint, data=form)
    assert replayed.status_code == 401
    assert replayed.json()["error"] == "invalid_client"
    assert "already used" in replayed.json()["error_description"]


def test_a_new_policy_file_restricts_at_once(server: FleetServer) -> None:
    write_atomically(server.fleet.parent / "policies" / "support.yaml", SUPPORT_FREEZE)
    refused = wait_until(
        lambda: refusal(server, SUPPORT, resource=CRM, scope="crm:write"),
        timeout=15,
        what="the new policy to refuse crm:write",
    )
    assert refused.error == "invalid_scope"
    assert "denied by policy support-no-crm-writes" in refused.description


def test_an_invalid_fleet_is_refused_and_the_live_revision_keeps_serving(
    server: FleetServer,
) -> None:
    live = revision_of(server, server.client_credentials(RECONCILER))

    edit_fleet(server.fleet, INVALID_SCOPE)
    refused_edit = f"the edited fleet is invalid; revision {live[:12]} keeps serving:"
    server.wait_for_log(rf"{refused_edit}\n[^\n]*{INVALID_PROBLEM}")

    # Still the last good revision: the new agent, the new policy, the reconciler's loss.
    assert revision_of(server, server.client_credentials(RECONCILER)) == live
    refused = refusal(server, SUPPORT, resource=CRM, scope="crm:write")
    assert refused is not None
    assert "support-no-crm-writes" in refused.description
    assert server.browser().get(server.discovery_url).status_code == 200


def test_serve_refuses_to_start_on_an_invalid_fleet(server: FleetServer) -> None:
    logged = len(server.log_text())
    # Another port, the same state: the fleet is compiled before anything else is opened.
    assert server.run_another() == 2
    output = server.log_text()[logged:]
    assert re.search(INVALID_PROBLEM, output), output
    assert "1 problem found" in output


def test_a_restart_keeps_client_secrets_and_signing_keys(server: FleetServer) -> None:
    http = server.browser()
    kids_before = {key["kid"] for key in http.get(server.metadata["jwks_uri"]).json()["keys"]}
    issued_before = server.client_credentials(RECONCILER)
    secrets_before = {agent: server.credentials(agent) for agent in (RECONCILER, SUPPORT, LEDGER)}

    server.stop()
    edit_fleet(server.fleet, (INVALID_SCOPE[1], INVALID_SCOPE[0]))
    server.start()

    kids = {key["kid"] for key in http.get(server.metadata["jwks_uri"]).json()["keys"]}
    assert kids == kids_before
    printed = server.cli("credentials", LEDGER, "--state", str(server.state))
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["client_secret"] == secrets_before[LEDGER]

    # The old secrets authenticate, the same key signs, a token from before is still live.
    assert granted(server, SUPPORT, resource=CRM, scope="crm:read") is not None
    issued_after = server.client_credentials(RECONCILER)
    assert (
        jwt.get_unverified_header(issued_after["access_token"])["kid"]
        == jwt.get_unverified_header(issued_before["access_token"])["kid"]
    )
    assert server.introspect(RECONCILER, issued_before["access_token"])["active"] is True
    assert revision_of(server, issued_after) == revision_of(server, issued_before)


def test_the_served_revision_is_the_one_validate_computes(server: FleetServer) -> None:
    served = revision_of(server, server.client_credentials(RECONCILER))
    result = server.cli("validate", str(server.fleet))
    assert result.returncode == 0, result.stderr
    assert f"valid, revision {served[:12]} " in result.stdout


def test_a_key_rotation_is_adopted_without_a_restart(server: FleetServer) -> None:
    def kid(token: dict[str, Any]) -> str:
        return str(jwt.get_unverified_header(token["access_token"])["kid"])

    http = server.browser()
    published_before = {key["kid"] for key in http.get(server.metadata["jwks_uri"]).json()["keys"]}
    issued_before = server.client_credentials(RECONCILER)

    # Forced: the server started seconds ago, so its next key is younger than a JWKS cache.
    rotated = server.cli(
        "keys", "rotate", "--force", "--fleet", str(server.fleet), "--state", str(server.state)
    )
    assert rotated.returncode == 0, rotated.stderr

    def signed_by_a_new_key() -> dict[str, Any] | None:
        token = server.client_credentials(RECONCILER)
        return token if kid(token) != kid(issued_before) else None

    issued_after = wait_until(signed_by_a_new_key, timeout=10, what="the rotated key to sign")
    # The new key was published as next before it signed; the old one is kept for its tokens.
    assert kid(issued_after) in published_before
    published_after = {key["kid"] for key in http.get(server.metadata["jwks_uri"]).json()["keys"]}
    assert {kid(issued_before), kid(issued_after)} <= published_after
    assert server.introspect(RECONCILER, issued_before["access_token"])["active"] is True
    server.wait_for_log("key rings reloaded")


def test_no_secret_reaches_the_audit_trail_or_the_log(
    server: FleetServer, ledger_key: rsa.RSAPrivateKey
) -> None:
    pem = ledger_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    server.remember(*(line for line in pem.splitlines() if len(line) >= 40))
    server.assert_nothing_secret_written()
