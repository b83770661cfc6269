"""The refresh token grant with rotation and reuse detection (RFC 6749 §6, OAuth 2.1 §4.3.1).

Each refresh token works once and is replaced by a new one; presenting a spent one revokes
the whole sign-in it belongs to, every refresh token and access token of it included. Of
concurrent refreshes of one token, at most one succeeds.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serverkit import CRM, ISSUER, SALES, SUPPORT, TOOLS, Client, Server, claims_of, oauth_error

CONTENDERS = 20


def _sign_in(server: Server) -> dict[str, str]:
    return server.tokens_for(SALES, "bob", scope="openid crm:read", resources=[CRM])


def test_a_refresh_rotates_the_refresh_token(server: Server) -> None:
    first = _sign_in(server)

    response = server.refresh(SALES, first["refresh_token"])

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    access = claims_of(second["access_token"])
    assert access["aud"] == CRM
    assert access["scope"] == "crm:read"
    assert access["sid"] == claims_of(first["access_token"])["sid"]
    assert server.refresh(SALES, second["refresh_token"]).status_code == 200


def test_a_refresh_may_narrow_to_another_consented_resource(server: Server) -> None:
    tokens = server.tokens_for(SALES, "bob", scope="openid crm:read tools:search")

    response = server.refresh(SALES, tokens["refresh_token"], resource=TOOLS)

    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["aud"] == TOOLS


def test_reusing_a_rotated_refresh_token_revokes_the_family(server: Server) -> None:
    first = _sign_in(server)
    second = server.refresh(SALES, first["refresh_token"]).json()

    reused = server.refresh(SALES, first["refresh_token"])

    assert oauth_error(reused) == "invalid_grant"
    assert oauth_error(server.refresh(SALES, second["refresh_token"])) == "invalid_grant"
    assert server.introspect(SALES, second["access_token"]) == {"active": False}
    assert server.introspect(SALES, first["access_token"]) == {"active": False}
    assert any(event["event"] == "refresh_token_reused" for event in server.audit())


def test_an_unknown_refresh_token_is_invalid_grant(server: Server) -> None:
    response = server.refresh(SALES, "firt_" + "A" * 43)

    assert oauth_error(response) == "invalid_grant"


def test_another_clients_refresh_token_is_invalid_grant_and_harmless(server: Server) -> None:
    tokens = _sign_in(server)

    stolen = server.refresh(SUPPORT, tokens["refresh_token"])

    assert oauth_error(stolen) == "invalid_grant"
    assert server.refresh(SALES, tokens["refresh_token"]).status_code == 200


def test_a_refresh_token_ends_with_its_sign_in(server: Server) -> None:
    tokens = _sign_in(server)
    server.clock.advance(30 * 86400 + 1)

    response = server.refresh(SALES, tokens["refresh_token"])

    assert oauth_error(response) == "invalid_grant"


def test_a_refresh_never_exceeds_the_consent(server: Server) -> None:
    tokens = _sign_in(server)

    response = server.refresh(SALES, tokens["refresh_token"], resource=TOOLS)

    assert oauth_error(response) == "invalid_target"


def test_a_refused_refresh_leaves_the_refresh_token_usable(server: Server) -> None:
    tokens = _sign_in(server)
    refused = server.refresh(SALES, tokens["refresh_token"], scope="crm:write")
    assert oauth_error(refused) == "invalid_scope"

    retried = server.refresh(SALES, tokens["refresh_token"])

    assert retried.status_code == 200, retried.text


def _refresh_in_parallel(server: Server, refresh_token: str) -> list[httpx.Response]:
    """Refresh from many threads at once, each with its own client and event loop, so the
    grant code really runs concurrently against the store."""
    barrier = threading.Barrier(CONTENDERS)
    form = f"grant_type=refresh_token&refresh_token={refresh_token}".encode()

    def contend() -> httpx.Response:
        client = Client(server.app)
        try:
            barrier.wait()
            return client.post(
                "/token",
                content=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                auth=server.basic(SALES),
            )
        finally:
            client.close()

    with ThreadPoolExecutor(CONTENDERS) as pool:
        return list(pool.map(lambda _: contend(), range(CONTENDERS)))


async def _refresh_gathered(server: Server, refresh_token: str) -> list[httpx.Response]:
    """Refresh from one event loop, all requests in flight at once. The grant code is
    synchronous inside its handler, so one loop interleaves requests only where they await
    (reading the body); the threaded variant is the one that races the store."""
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        return list(
            await asyncio.gather(
                *[
                    client.post(
                        "/token",
                        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                        auth=server.basic(SALES),
                    )
                    for _ in range(CONTENDERS)
                ]
            )
        )


@pytest.mark.parametrize("contend", ["threads", "gather"])
def test_concurrent_refreshes_of_one_token_succeed_at_most_once(
    server: Server, contend: str
) -> None:
    tokens = _sign_in(server)

    if contend == "threads":
        responses = _refresh_in_parallel(server, tokens["refresh_token"])
    else:
        responses = asyncio.run(_refresh_gathered(server, tokens["refresh_token"]))

    statuses = sorted(response.status_code for response in responses)
    assert all(status in (200, 400) for status in statuses), statuses
    winners = [response.json() for response in responses if response.status_code == 200]
    assert len(winners) <= 1
    assert all(oauth_error(r) == "invalid_grant" for r in responses if r.status_code == 400)
    # The losers were reuse: the family ends revoked, the winner's new token with it.
    for winner in winners:
        assert oauth_error(server.refresh(SALES, winner["refresh_token"])) == "invalid_grant"
        assert server.introspect(SALES, winner["access_token"]) == {"active": False}
    assert server.introspect(SALES, tokens["access_token"]) == {"active": False}
