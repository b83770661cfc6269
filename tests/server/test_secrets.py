"""Raw secrets never reach the logs or the audit trail (DESIGN.md, principle 4; STYLE.md:
"never a token, secret, code or key").

One test runs every flow of the server, successes and refusals, with every logger at DEBUG
and the JSONL audit on, collecting each secret that crossed the wire; then searches the
captured log text and the audit file for each of them, and for each line of the signing
key's PEM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from serverkit import (
    CLIENT_CREDENTIALS,
    CRM,
    KEYED,
    RECONCILER,
    SALES,
    SUPPORT,
    TOOLS,
    Server,
    agent_urn,
    new_verifier,
)

# Client-side loggers: they describe what the test sent, not what the server wrote.
_CLIENT_LOGGERS = ("httpx", "httpcore", "hpack")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _signing_key_material(server: Server) -> list[str]:
    """Each private key PEM in the state folder, whole and line by line."""
    material = []
    for path in server.state.glob("keys*.json"):
        for text in _strings(json.loads(path.read_text())):
            if "PRIVATE KEY" in text:
                material.append(text)
                material += [line for line in text.splitlines() if len(line) >= 32]
    assert material, "no private key found in the state folder"
    return material


def _run_every_flow(server: Server) -> dict[str, str]:
    """Every flow, with its secrets by name."""
    secrets: dict[str, str] = {}

    # A sign-in, redeemed, refreshed, exchanged, delegated, introspected, revoked.
    interaction, verifier = server.start(SALES, scope="openid profile email crm:read tools:search")
    secrets["interaction"] = interaction
    secrets["verifier"] = verifier
    server.sign_in(interaction, "alice")
    authorization = server.authorize(SALES, "bob", scope="openid profile crm:read tools:search")
    secrets["code"] = authorization.code
    tokens = server.redeem(authorization).json()
    secrets |= {f"first_{name}": tokens[name] for name in ("access_token", "refresh_token")}
    secrets["id_token"] = tokens["id_token"]
    refreshed = server.refresh(SALES, tokens["refresh_token"]).json()
    secrets |= {f"second_{name}": refreshed[name] for name in ("access_token", "refresh_token")}
    sign_in = refreshed["access_token"]
    server.client.get("/userinfo", headers={"Authorization": f"Bearer {sign_in}"})
    crm = server.exchange(SALES, sign_in, CRM).json()["access_token"]
    secrets["crm_token"] = crm
    delegated = server.exchange(SALES, sign_in, agent_urn(SUPPORT)).json()["access_token"]
    secrets["delegated"] = delegated
    secrets["support_token"] = server.exchange(SUPPORT, delegated, TOOLS).json()["access_token"]
    server.introspect(SALES, crm)
    server.introspect(SALES, refreshed["refresh_token"])
    server.post_form("/revoke", {"token": crm}, agent=SALES)

    # Machines, with each client authentication method.
    secrets["machine"] = server.machine_token(RECONCILER)
    assertion = server.assertion()
    secrets["assertion"] = assertion
    server.token({"grant_type": CLIENT_CREDENTIALS, **server.assertion_form(assertion)})
    server.token({"grant_type": CLIENT_CREDENTIALS, **server.assertion_form(assertion)})

    # Refusals, which log and audit the most.
    wrong = server.secret(RECONCILER)[::-1]
    secrets["wrong_secret"] = wrong
    server.token({"grant_type": CLIENT_CREDENTIALS}, headers={"Authorization": f"Basic {wrong}"})
    server.client.post(
        "/token",
        content=b"grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(RECONCILER, wrong),
    )
    server.exchange(SALES, sign_in, CRM, scope="crm:write")
    server.exchange(SUPPORT, sign_in, CRM)
    server.redeem(authorization)
    server.refresh(SALES, tokens["refresh_token"])
    server.client.get("/userinfo", headers={"Authorization": f"Bearer {secrets['machine']}"})
    server.client.get(
        "/authorize",
        params=server.authorize_query(
            SALES, scope="openid", verifier=new_verifier(), state="secret-state"
        ),
    )
    other, _ = server.start(SALES, scope="openid crm:read", resources=[CRM])
    secrets["other_interaction"] = other
    server.consent(other, client=server.browser())

    for agent in server.revision.fleet.agents:
        secrets[f"client_secret:{agent}"] = server.secret(agent)
    assert KEYED in server.revision.fleet.agents
    return secrets


def test_no_secret_reaches_the_logs_or_the_audit_trail(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    secrets = _run_every_flow(server)

    logged = "\n".join(
        caplog.handler.format(record)
        for record in caplog.records
        if not record.name.startswith(_CLIENT_LOGGERS)
    )
    audit = server.audit_path.read_text()
    # The search is only worth something if both hold the flows.
    assert "POST /token" in logged
    assert "token_issued" in logged
    assert "token_refused" in audit
    assert "delegation_issued" in audit
    for name, secret in secrets.items():
        assert secret not in logged, f"{name} is in the log"
        assert secret not in audit, f"{name} is in the audit trail"
    for line in _signing_key_material(server):
        assert line not in logged, "the signing key is in the log"
        assert line not in audit, "the signing key is in the audit trail"


def test_the_store_keeps_digests_not_codes_or_refresh_tokens(server: Server) -> None:
    authorization = server.authorize(SALES, "bob", scope="openid crm:read", resources=[CRM])
    tokens = server.redeem(authorization).json()
    rotated = server.refresh(SALES, tokens["refresh_token"]).json()

    stored = b"".join(path.read_bytes() for path in server.state.glob("store.sqlite3*"))

    for secret in (authorization.code, tokens["refresh_token"], rotated["refresh_token"]):
        assert secret.encode() not in stored
