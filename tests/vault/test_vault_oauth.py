"""The OAuth connector against a real provider: node-oidc-provider on a loopback port.

Each test links a user as a browser would (the provider's development login and consent
pages), hands the redirect URL to `complete_link`, then fetches. Expiry is reached by moving
the vault's clock past the provider's 300-second access token lifetime, so the provider is
asked to refresh a token it still considers valid; nothing waits for real time to pass.
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from peerkit import CLIENT_ID, Peer
from vaultkit import REDIRECT_URI, MovableClock, oauth_connection

from fleetid.vault import (
    ACCESS_TOKEN_TYPE,
    Binding,
    Credential,
    Lease,
    LinkBroken,
    LinkDenied,
    LinkRejected,
    NotLinked,
    ProviderError,
    ProviderUnreachable,
    RefreshContended,
    UnknownConnection,
    Vault,
    VaultEvent,
)

CALENDAR = "calendar"
PAST_EXPIRY = 301


def link(vault: Vault, peer: Peer, user: str = "alice", tenant: str = "acme") -> str:
    """Link `user` and return the provider's redirect URL that completed it."""
    start = vault.begin_link(CALENDAR, tenant, user)
    callback = peer.authorize(start.authorization_url, login=user)
    vault.complete_link(callback, tenant, user)
    return callback


def stored_tokens(vault: Vault, user: str = "alice", tenant: str = "acme") -> dict[str, Any]:
    record = vault.records.read(Binding("oauth", CALENDAR, tenant, user))
    assert record is not None
    return vault.records.open(record)


@pytest.fixture
def calendar(peer: Peer) -> dict[str, Any]:
    return {CALENDAR: oauth_connection(peer)}


@pytest.fixture
def rotating_calendar(rotating_peer: Peer) -> dict[str, Any]:
    return {CALENDAR: oauth_connection(rotating_peer)}


def test_the_authorization_url_asks_for_pkce_s256_and_carries_a_state(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)

    start = vault.begin_link(CALENDAR, "acme", "alice")

    parts = urlsplit(start.authorization_url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{peer.issuer}/auth"
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid offline_access calendar.read"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43
    assert "state" not in repr(start) and query["state"] not in repr(start)


def test_link_then_fetch(make_vault: Any, calendar: dict[str, Any], peer: Peer) -> None:
    events: list[VaultEvent] = []
    vault, calls = make_vault(calendar, on_event=events.append)
    assert vault.link_status(CALENDAR, "acme", "alice") == "not_linked"

    start = vault.begin_link(CALENDAR, "acme", "alice")
    linked = vault.complete_link(peer.authorize(start.authorization_url), "acme", "alice")

    assert (linked.connection, linked.tenant, linked.user) == (CALENDAR, "acme", "alice")
    assert linked.scopes == ("calendar.read",)
    assert linked.refreshable and not linked.relinked
    assert linked.expires_in == 300
    assert vault.link_status(CALENDAR, "acme", "alice") == "linked"

    credential = vault.fetch(CALENDAR, "acme", "alice")

    assert credential.kind == "oauth"
    assert credential.secret == stored_tokens(vault)["access_token"]
    assert credential.header == "Authorization"
    assert credential.header_value() == f"Bearer {credential.secret}"
    assert credential.expires_in is not None and 0 < credential.expires_in <= 300
    assert not credential.refreshed
    assert credential.secret not in repr(credential)
    assert credential.token_response() == {
        "access_token": credential.secret,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": credential.expires_in,
        "scope": "calendar.read",
    }
    assert calls.grants == ["authorization_code"]
    assert [event.event for event in events] == ["link_started", "linked"]


def test_linking_without_pkce(make_vault: Any, peer: Peer) -> None:
    vault, _ = make_vault({CALENDAR: oauth_connection(peer, pkce=False)})

    start = vault.begin_link(CALENDAR, "acme", "alice")
    assert "code_challenge" not in start.authorization_url
    vault.complete_link(peer.authorize(start.authorization_url), "acme", "alice")

    assert vault.fetch(CALENDAR, "acme", "alice").secret


def test_linking_again_replaces_the_tokens(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    link(vault, peer)
    first = vault.fetch(CALENDAR, "acme", "alice").secret

    start = vault.begin_link(CALENDAR, "acme", "alice")
    relinked = vault.complete_link(peer.authorize(start.authorization_url), "acme", "alice")

    assert relinked.relinked
    assert vault.fetch(CALENDAR, "acme", "alice").secret != first


def test_users_are_linked_separately(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    link(vault, peer, user="alice")
    link(vault, peer, user="bob")

    alice, bob = vault.fetch(CALENDAR, "acme", "alice"), vault.fetch(CALENDAR, "acme", "bob")

    assert alice.secret != bob.secret
    with pytest.raises(NotLinked):
        vault.fetch(CALENDAR, "globex", "alice")


def test_a_user_who_never_linked_is_told_how_to_link(
    make_vault: Any, calendar: dict[str, Any]
) -> None:
    vault, _ = make_vault(calendar)

    with pytest.raises(NotLinked) as raised:
        vault.fetch(CALENDAR, "acme", "alice")

    error = raised.value
    assert error.code == "not_linked"
    assert (error.connection, error.tenant, error.user) == (CALENDAR, "acme", "alice")
    assert error.link_url == "/connections/calendar/link"
    assert "has not linked connection 'calendar'" in str(error)
    assert "/connections/calendar/link" in str(error)


def test_the_link_url_can_be_absolute(make_vault: Any, calendar: dict[str, Any]) -> None:
    vault, _ = make_vault(
        calendar, link_url="https://id.example.com/connections/{connection}/link"
    )

    with pytest.raises(NotLinked, match=r"https://id\.example\.com/connections/calendar/link"):
        vault.fetch(CALENDAR, "acme", "alice")


def test_a_state_is_redeemed_once(make_vault: Any, calendar: dict[str, Any], peer: Peer) -> None:
    vault, _ = make_vault(calendar)
    callback = link(vault, peer)

    with pytest.raises(LinkRejected, match="unknown, used or expired"):
        vault.complete_link(callback, "acme", "alice")


def test_a_state_expires(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, _ = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice")
    callback = peer.authorize(start.authorization_url)

    clock.advance(601)

    with pytest.raises(LinkRejected, match="unknown, used or expired"):
        vault.complete_link(callback, "acme", "alice")


def test_a_state_is_bound_to_the_user_who_started(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice")
    callback = peer.authorize(start.authorization_url)

    with pytest.raises(LinkRejected, match="started by another user"):
        vault.complete_link(callback, "acme", "mallory")

    # The state was spent on the attempt: nobody completes this link now.
    with pytest.raises(LinkRejected):
        vault.complete_link(callback, "acme", "alice")
    for user in ("alice", "mallory"):
        assert vault.link_status(CALENDAR, "acme", user) == "not_linked"


def test_a_state_is_bound_to_the_session_that_started(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice", session="session-1")
    callback = peer.authorize(start.authorization_url)

    with pytest.raises(LinkRejected, match="another session"):
        vault.complete_link(callback, "acme", "alice", session="session-2")

    start = vault.begin_link(CALENDAR, "acme", "alice", session="session-1")
    callback = peer.authorize(start.authorization_url)
    vault.complete_link(callback, "acme", "alice", session="session-1")
    assert vault.link_status(CALENDAR, "acme", "alice") == "linked"


def test_a_response_from_another_issuer_is_rejected(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice")
    callback = peer.authorize(start.authorization_url)
    query = parse_qs(urlsplit(callback).query)
    assert query["iss"] == [peer.issuer]
    query["iss"] = ["https://attacker.example"]

    with pytest.raises(LinkRejected, match="another issuer"):
        vault.complete_link(urlencode(query, doseq=True), "acme", "alice")


def test_a_response_without_the_issuer_is_rejected_when_the_provider_sends_it(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice")
    query = parse_qs(urlsplit(peer.authorize(start.authorization_url)).query)
    del query["iss"]

    with pytest.raises(LinkRejected, match="names no issuer"):
        vault.complete_link(urlencode(query, doseq=True), "acme", "alice")


def test_a_refused_authorization_says_so(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, calls = make_vault(calendar)
    start = vault.begin_link(CALENDAR, "acme", "alice")
    state = parse_qs(urlsplit(start.authorization_url).query)["state"][0]
    callback = {"error": "access_denied", "state": state, "iss": peer.issuer}

    with pytest.raises(LinkDenied) as raised:
        vault.complete_link(callback, "acme", "alice")

    assert raised.value.error == "access_denied"
    assert raised.value.code == "link_denied"
    assert calls.grants == []


def test_a_callback_with_a_repeated_parameter_is_rejected(
    make_vault: Any, calendar: dict[str, Any]
) -> None:
    vault, _ = make_vault(calendar)

    with pytest.raises(LinkRejected, match="repeats"):
        vault.complete_link(f"{REDIRECT_URI}?state=a&state=b&code=c", "acme", "alice")


def test_an_expired_token_is_refreshed_before_it_is_returned(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    events: list[VaultEvent] = []
    vault, calls = make_vault(calendar, on_event=events.append)
    link(vault, peer)
    first = vault.fetch(CALENDAR, "acme", "alice")

    clock.advance(PAST_EXPIRY)
    refreshed = vault.fetch(CALENDAR, "acme", "alice")

    assert refreshed.refreshed
    assert refreshed.secret != first.secret
    assert refreshed.expires_in == 300
    assert calls.refreshes == 1
    again = vault.fetch(CALENDAR, "acme", "alice")
    assert (again.secret, again.refreshed) == (refreshed.secret, False)
    assert calls.refreshes == 1
    assert events[-1].event == "refreshed"


def test_a_token_expiring_within_the_margin_is_refreshed(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(calendar, refresh_margin=60)
    link(vault, peer)

    clock.advance(230)
    assert not vault.fetch(CALENDAR, "acme", "alice").refreshed

    clock.advance(15)
    assert vault.fetch(CALENDAR, "acme", "alice").refreshed
    assert calls.refreshes == 1


def test_a_provider_that_keeps_the_refresh_token(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(calendar)
    link(vault, peer)
    refresh_token = stored_tokens(vault)["refresh_token"]

    for _ in range(2):
        clock.advance(PAST_EXPIRY)
        assert vault.fetch(CALENDAR, "acme", "alice").refreshed

    assert stored_tokens(vault)["refresh_token"] == refresh_token
    assert calls.refreshes == 2


def test_a_provider_that_rotates_refresh_tokens(
    make_vault: Any, rotating_calendar: dict[str, Any], rotating_peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(rotating_calendar)
    link(vault, rotating_peer)
    seen = [stored_tokens(vault)["refresh_token"]]

    for _ in range(2):
        clock.advance(PAST_EXPIRY)
        assert vault.fetch(CALENDAR, "acme", "alice").refreshed
        seen.append(stored_tokens(vault)["refresh_token"])

    assert len(set(seen)) == 3
    assert calls.refreshes == 2
    # The provider consumed the first one: the vault did right to discard it.
    assert rotating_peer.refresh_directly(seen[0]).json()["error"] == "invalid_grant"


def test_twenty_concurrent_fetches_of_an_expired_token_refresh_once(
    make_vault: Any, rotating_calendar: dict[str, Any], rotating_peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(rotating_calendar)
    link(vault, rotating_peer)
    clock.advance(PAST_EXPIRY)

    credentials = fetch_together([vault] * 20)

    assert calls.refreshes == 1
    assert len({credential.secret for credential in credentials}) == 1
    assert sum(credential.refreshed for credential in credentials) == 1
    assert vault.link_status(CALENDAR, "acme", "alice") == "linked"


def test_concurrent_fetches_in_two_processes_refresh_once(
    make_vault: Any, rotating_calendar: dict[str, Any], rotating_peer: Peer, clock: MovableClock
) -> None:
    """Two vault instances share only the store and the master key file, as two server
    processes do; the lease in the record makes the one that loses wait for the winner's
    refresh. The provider is slowed down so that the loser meets the lease."""
    polls: list[float] = []

    def slow_refresh(request: httpx.Request) -> None:
        if b"grant_type=refresh_token" in request.read():
            time.sleep(0.3)

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        time.sleep(seconds)

    options = {"sleep": sleep, "request_hooks": (slow_refresh,)}
    first, first_calls = make_vault(rotating_calendar, **options)
    second, second_calls = make_vault(rotating_calendar, **options)
    link(first, rotating_peer)
    clock.advance(PAST_EXPIRY)

    credentials = fetch_together([first] * 10 + [second] * 10)

    assert first_calls.refreshes + second_calls.refreshes == 1
    assert len({credential.secret for credential in credentials}) == 1
    assert polls, "the losing instance never waited on the lease"
    clock.advance(PAST_EXPIRY)
    assert second.fetch(CALENDAR, "acme", "alice").refreshed


def test_a_lease_left_by_a_crashed_fetch_is_taken_over(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(calendar, lease_seconds=30)
    link(vault, peer)
    clock.advance(PAST_EXPIRY)
    hold_lease(vault, until=int(clock()) + 30)

    clock.advance(31)
    assert vault.fetch(CALENDAR, "acme", "alice").refreshed
    assert calls.refreshes == 1


def test_a_lease_held_too_long_makes_the_fetch_give_up(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, calls = make_vault(calendar, lease_seconds=2, sleep=clock.advance)
    link(vault, peer)
    clock.advance(PAST_EXPIRY)
    hold_lease(vault, until=int(clock()) + 3600)

    with pytest.raises(RefreshContended) as raised:
        vault.fetch(CALENDAR, "acme", "alice")

    assert raised.value.user == "alice"
    assert calls.refreshes == 0


def hold_lease(vault: Vault, *, until: int) -> None:
    """Write a lease into the record as another process's fetch would have."""
    record = vault.records.read(Binding("oauth", CALENDAR, "acme", "alice"))
    assert record is not None
    assert vault.records.replace(record, lease=Lease("another-process", until)) is not None


def fetch_together(vaults: list[Vault]) -> list[Credential]:
    barrier = threading.Barrier(len(vaults))
    results: list[Credential] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def fetch(vault: Vault) -> None:
        barrier.wait()
        try:
            credential = vault.fetch(CALENDAR, "acme", "alice")
        except BaseException as error:
            with lock:
                errors.append(error)
            return
        with lock:
            results.append(credential)

    threads = [threading.Thread(target=fetch, args=(vault,)) for vault in vaults]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert len(results) == len(vaults)
    return results


def test_a_link_revoked_at_the_provider_is_broken(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    events: list[VaultEvent] = []
    vault, calls = make_vault(calendar, on_event=events.append)
    link(vault, peer)
    peer.revoke_directly(stored_tokens(vault)["refresh_token"])
    clock.advance(PAST_EXPIRY)

    with pytest.raises(LinkBroken) as raised:
        vault.fetch(CALENDAR, "acme", "alice")

    error = raised.value
    assert error.code == "link_broken"
    assert (error.connection, error.tenant, error.user) == (CALENDAR, "acme", "alice")
    assert "invalid_grant" in str(error) and "link it again at /connections/calendar/link" in str(
        error
    )
    assert isinstance(error.__cause__, ProviderError)
    assert vault.link_status(CALENDAR, "acme", "alice") == "broken"
    assert events[-1].event == "link_broken"

    # The provider is not asked again: the user must link again.
    with pytest.raises(LinkBroken):
        vault.fetch(CALENDAR, "acme", "alice")
    assert calls.refreshes == 1

    link(vault, peer)
    assert vault.link_status(CALENDAR, "acme", "alice") == "linked"
    assert vault.fetch(CALENDAR, "acme", "alice").secret


def test_unlink_revokes_at_the_provider(
    make_vault: Any, calendar: dict[str, Any], peer: Peer
) -> None:
    vault, _ = make_vault(calendar)
    link(vault, peer)
    refresh_token = stored_tokens(vault)["refresh_token"]

    unlinked = vault.unlink(CALENDAR, "acme", "alice")

    assert unlinked.was_linked and unlinked.revocation == "revoked"
    assert unlinked.revocation_error is None
    with pytest.raises(NotLinked):
        vault.fetch(CALENDAR, "acme", "alice")
    assert peer.refresh_directly(refresh_token).json()["error"] == "invalid_grant"

    again = vault.unlink(CALENDAR, "acme", "alice")
    assert not again.was_linked and again.revocation == "nothing_to_revoke"


def test_unlink_of_a_broken_link_removes_it(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    vault, _ = make_vault(calendar)
    link(vault, peer)
    peer.revoke_directly(stored_tokens(vault)["refresh_token"])
    clock.advance(PAST_EXPIRY)
    with pytest.raises(LinkBroken):
        vault.fetch(CALENDAR, "acme", "alice")

    unlinked = vault.unlink(CALENDAR, "acme", "alice")

    assert unlinked.was_linked and unlinked.revocation == "nothing_to_revoke"
    assert vault.link_status(CALENDAR, "acme", "alice") == "not_linked"


def test_unlink_without_a_revocation_endpoint(make_vault: Any, peer: Peer) -> None:
    explicit = oauth_connection(
        peer,
        provider={
            "authorization_endpoint": f"{peer.issuer}/auth",
            "token_endpoint": peer.token_endpoint,
        },
    )
    vault, _ = make_vault({CALENDAR: explicit})
    link(vault, peer)
    assert vault.fetch(CALENDAR, "acme", "alice").secret

    assert vault.unlink(CALENDAR, "acme", "alice").revocation == "not_offered"


def test_a_refresh_the_provider_fails_is_not_a_broken_link(
    make_vault: Any, calendar: dict[str, Any], peer: Peer, clock: MovableClock
) -> None:
    """A wrong client secret (invalid_client) is fleetid's problem, not the user's link."""
    vault, _ = make_vault(calendar)
    link(vault, peer)
    events: list[VaultEvent] = []
    misconfigured, _ = make_vault(calendar, client_secret="not-the-secret", on_event=events.append)

    # Within the margin: the token in hand is still good, and is served.
    clock.advance(250)
    credential = misconfigured.fetch(CALENDAR, "acme", "alice")
    assert not credential.refreshed and credential.expires_in
    assert (events[-1].event, events[-1].outcome) == ("refresh_failed", "served_stale")

    clock.advance(60)
    with pytest.raises(ProviderError) as raised:
        misconfigured.fetch(CALENDAR, "acme", "alice")

    assert raised.value.error == "invalid_client"
    assert raised.value.operation == "refresh"
    assert raised.value.user == "alice"
    assert misconfigured.link_status(CALENDAR, "acme", "alice") == "linked"
    assert vault.fetch(CALENDAR, "acme", "alice").refreshed


def test_an_unreachable_provider(make_vault: Any) -> None:
    from peerkit import free_port

    closed = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    connection = oauth_connection_for(closed)
    vault, _ = make_vault({CALENDAR: connection})

    with pytest.raises(ProviderUnreachable) as raised:
        vault.begin_link(CALENDAR, "acme", "alice")

    assert raised.value.operation == "discovery"
    assert raised.value.__cause__ is not None


def test_only_oauth_connections_are_linked(make_vault: Any, calendar: dict[str, Any]) -> None:
    from fleetid.fleet.model import ApiKeyConnection

    reporting = ApiKeyConnection.model_validate({"kind": "api_key", "key": {"env": "KEY"}})
    vault, _ = make_vault({**calendar, "reporting": reporting})

    with pytest.raises(UnknownConnection, match="not an oauth connection"):
        vault.begin_link("reporting", "acme", "alice")
    with pytest.raises(UnknownConnection, match="no connection 'crm'"):
        vault.fetch("crm", "acme", "alice")


def oauth_connection_for(discovery_url: str) -> Any:
    from fleetid.fleet.model import OAuthConnection

    return OAuthConnection.model_validate(
        {
            "kind": "oauth",
            "provider": {"discovery_url": discovery_url},
            "client_id": CLIENT_ID,
            "client_secret": {"env": "PEER_CLIENT_SECRET"},
            "scopes": ["calendar.read"],
        }
    )
