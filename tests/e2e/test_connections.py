"""Connections through a running `fleetid serve`, with node-oidc-provider as the third party:
a person links their account in the browser, agents fetch the credential by token exchange
under policy, the person unlinks."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import jwt
import pytest
import yaml
from harness import ENVIRONMENT, REPO_ROOT, FleetServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "vault"))
from peerkit import CLIENT_ID, Peer, install_peer

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
CALENDAR = "urn:fleetid:connection:google-calendar"
REPORTING = "urn:fleetid:connection:reporting"
CONNECTOR_SECRET = "connector-secret-0123456789abcdef0123456789"
REPORTING_KEY = "rk_live_0123456789abcdefghijklmnopqrstuv"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetServer, Peer]]:
    if shutil.which("node") is None:
        pytest.skip("the OAuth peer needs Node.js")
    folder = tmp_path_factory.mktemp("connections")
    shutil.copytree(REPO_ROOT / "policies", folder / "policies")
    server = FleetServer(folder / "fleet.yaml", folder / "state", folder / "server.log")
    peer = Peer.start(install_peer(), redirect_uri=f"{server.issuer}/connections/callback")

    fleet = yaml.safe_load((REPO_ROOT / "fleet.yaml").read_text())
    fleet["connections"]["google-calendar"].update(
        provider={"discovery_url": peer.discovery_url},
        client_id=CLIENT_ID,
        client_secret={"env": "FLEETID_TEST_CONNECTOR_SECRET"},
        scopes=["openid", "offline_access", "calendar.read"],
    )
    (folder / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    ENVIRONMENT["FLEETID_TEST_CONNECTOR_SECRET"] = CONNECTOR_SECRET
    ENVIRONMENT["REPORTING_API_KEY"] = REPORTING_KEY
    server.start()
    server.remember(CONNECTOR_SECRET, REPORTING_KEY)
    try:
        yield server, peer
    finally:
        server.close()
        peer.stop()


def _exchange(
    server: FleetServer, agent: str, token: str, resource: str, **extra: str
) -> httpx.Response:
    return httpx.post(
        server.token_endpoint,
        data={
            "grant_type": EXCHANGE,
            "subject_token": token,
            "subject_token_type": ACCESS_TOKEN,
            "resource": resource,
            **extra,
        },
        auth=(agent, server.credentials(agent)),
    )


def _through_sign_in(
    server: FleetServer, browser: httpx.Client, path: str, user: str
) -> httpx.Response:
    page = browser.get(f"{server.issuer}{path}")
    assert page.status_code == 200
    interaction = re.search(r'name="interaction" value="([^"]+)"', page.text)
    assert interaction is not None
    return browser.post(
        f"{server.issuer}/connections/sign-in",
        data={"interaction": interaction.group(1), "user": user},
    )


def _link(server: FleetServer, peer: Peer, user: str) -> httpx.Response:
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        to_provider = _through_sign_in(server, browser, "/connections/google-calendar/link", user)
        assert to_provider.status_code == 303
        callback = peer.authorize(to_provider.headers["location"], login=user)
        assert callback.startswith(f"{server.issuer}/connections/callback")
        return browser.get(urljoin(server.issuer, callback))


def test_a_user_links_and_the_agent_fetches_a_fresh_token(
    setup: tuple[FleetServer, Peer],
) -> None:
    server, peer = setup
    alice = server.sign_in("sales-assistant", "alice").access_token

    before = _exchange(server, "sales-assistant", alice, CALENDAR)
    assert before.status_code == 400
    assert before.json()["error"] == "invalid_grant"
    assert "/connections/google-calendar/link" in before.json()["error_description"]

    linked = _link(server, peer, "alice")
    assert linked.status_code == 200, linked.text
    assert "is linked" in linked.text

    fetched = _exchange(server, "sales-assistant", alice, CALENDAR)
    assert fetched.status_code == 200, fetched.text
    body = fetched.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 0
    server.remember(body["access_token"])

    # What the agent got is the provider's own token, signed by it.
    jwks_uri = httpx.get(peer.discovery_url).json()["jwks_uri"]
    key = jwt.PyJWKClient(jwks_uri).get_signing_key_from_jwt(body["access_token"])
    claims = jwt.decode(
        body["access_token"], key.key, algorithms=["RS256"], options={"verify_aud": False}
    )
    assert claims["iss"] == peer.issuer
    assert claims["client_id"] == CLIENT_ID


def test_policy_decides_who_may_fetch(setup: tuple[FleetServer, Peer]) -> None:
    server, _ = setup
    dan = server.sign_in("sales-assistant", "dan").access_token
    refused = _exchange(server, "sales-assistant", dan, CALENDAR)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_target"
    assert "none of the roles" in refused.json()["error_description"]

    carol = server.sign_in(
        "support-triage",
        "carol",
        scope="openid",
        redirect_uri="https://support.acme.example.com/callback",
    ).access_token
    not_listed = _exchange(server, "support-triage", carol, CALENDAR)
    assert "does not list connection" in not_listed.json()["error_description"]


def test_an_api_key_connection_hands_out_its_key_and_how_to_send_it(
    setup: tuple[FleetServer, Peer],
) -> None:
    server, _ = setup
    dan = server.sign_in(
        "finance-reporter",
        "dan",
        scope="openid",
        redirect_uri="https://finance.acme.example.com/callback",
    ).access_token

    fetched = _exchange(server, "finance-reporter", dan, REPORTING)

    assert fetched.status_code == 200, fetched.text
    body = fetched.json()
    assert body["access_token"] == REPORTING_KEY
    assert body["header"] == "X-Reporting-Key"
    # A key is no JWT, whatever the agent asks for.
    as_jwt = _exchange(
        server,
        "finance-reporter",
        dan,
        REPORTING,
        requested_token_type="urn:ietf:params:oauth:token-type:jwt",
    )
    assert as_jwt.status_code == 400
    assert as_jwt.json()["error"] == "invalid_request"
    assert REPORTING_KEY not in as_jwt.text


def test_unlinking_ends_fetches_and_nothing_secret_is_written(
    setup: tuple[FleetServer, Peer],
) -> None:
    server, peer = setup
    bob = server.sign_in("sales-assistant", "bob").access_token
    assert _link(server, peer, "bob").status_code == 200
    assert _exchange(server, "sales-assistant", bob, CALENDAR).status_code == 200

    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        page = _through_sign_in(server, browser, "/connections/google-calendar/unlink", "bob")
    assert page.status_code == 200
    assert "no longer linked" in page.text

    after = _exchange(server, "sales-assistant", bob, CALENDAR)
    assert after.json()["error"] == "invalid_grant"

    audit = (server.state / "audit.jsonl").read_text().splitlines()
    events = {json.loads(line)["event"] for line in audit}
    assert "connection_linked" in events
    assert "connection_unlinked" in events
    assert "connection_fetched" in events
    assert "connection_refused" in events
    server.assert_nothing_secret_written()
