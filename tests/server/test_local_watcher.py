"""`RevisionWatcher` beyond compiling: a revision that cannot be switched in is refused as a
whole while the running one keeps serving, a later fix is picked up, the watcher outlives
any failure, and an agent removed from the fleet loses its sign-ins for good."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from serverkit import (
    CRM,
    POSTER,
    RECONCILER,
    SUPPORT,
    Server,
    claims_of,
    compile_fleet,
    fleet_document,
    oauth_error,
    write_fleet,
)

from fleetid.fleet.compile import Revision
from fleetid.server.clients import LocalClientSecrets
from fleetid.server.local import LocalState, RevisionWatcher
from fleetid.store import StoreUnavailableError

NEWCOMER = "ledger-sync"


def _watcher(server: Server, **options: Any) -> RevisionWatcher:
    """A watcher as `fleetid serve` makes it: new agents get their secrets on a switch."""
    secrets = server.secrets

    def on_switch(revision: Revision) -> None:
        secrets.ensure(sorted(revision.fleet.agents))

    return RevisionWatcher(
        server.fleet,
        server.context,
        on_switch=on_switch,
        state=LocalState(server.state),
        **options,
    )


def _rewrite(server: Server, change: Callable[[dict[str, Any]], None]) -> None:
    document = fleet_document(server.signer)
    change(document)
    write_fleet(server.fleet.parent, document)


def _es256_tools(document: dict[str, Any]) -> None:
    document["resources"]["tools"]["signing_algorithm"] = "ES256"


def _with_newcomer(document: dict[str, Any]) -> None:
    document["agents"][NEWCOMER] = {**document["agents"][POSTER], "description": "Syncs ledgers"}


def _without_support(document: dict[str, Any]) -> None:
    del document["agents"][SUPPORT]


def _published(server: Server) -> dict[str, str]:
    return {key["kid"]: key["alg"] for key in server.context.tokens.jwks()["keys"]}


def _serve_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "fleetid.serve"]


def _errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in _serve_log(caplog) if record.levelno >= logging.ERROR]


# -- a switch that fails -------------------------------------------------------------------


def test_a_key_ring_that_cannot_be_used_refuses_the_revision_until_it_is_fixed(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    before = server.revision
    published = _published(server)
    watcher = _watcher(server)
    ring = server.state / "keys-ES256.json"
    ring.write_text("{}")
    ring.chmod(0o644)
    _rewrite(server, _es256_tools)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is False
        assert watcher.check() is False

    (error,) = _errors(caplog)
    message = error.getMessage()
    assert f"key ring file {ring} is open to other users (mode 0644)" in message
    assert f"revision {before.short} keeps serving" in message
    assert error.exc_info is None
    assert server.revision is before
    assert _published(server) == published
    assert claims_of(server.machine_token(RECONCILER))["revision"] == before.hash

    # Half a fix is a new reason, said once more; the whole fix switches the revision in.
    ring.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is False
    (error,) = _errors(caplog)
    assert f"key ring file {ring}: a key ring document must have format" in error.getMessage()
    assert _published(server) == published

    ring.unlink()
    assert watcher.check() is True

    assert server.revision.hash != before.hash
    now_published = _published(server)
    assert set(published) < set(now_published)
    assert "ES256" in now_published.values()


def test_a_file_in_the_way_of_new_secrets_refuses_the_revision(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    before = server.revision
    on_file = (server.state / "clients.json").read_text()
    blocker = server.state / "clients.tmp"
    blocker.mkdir()
    watcher = _watcher(server)
    _rewrite(server, _with_newcomer)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is False

    (error,) = _errors(caplog)
    assert f"{blocker}: Is a directory" in error.getMessage()
    assert error.exc_info is None
    assert server.revision is before
    assert NEWCOMER not in server.revision.fleet.agents
    assert (server.state / "clients.json").read_text() == on_file
    refused = server.token({"grant_type": "client_credentials", "client_id": NEWCOMER})
    assert refused.status_code == 401
    assert oauth_error(refused) == "invalid_client"


def test_new_secrets_are_written_before_the_revision_that_needs_them_goes_live(
    server: Server,
) -> None:
    blocker = server.state / "clients.tmp"
    blocker.mkdir()
    watcher = _watcher(server)
    _rewrite(server, _with_newcomer)
    assert watcher.check() is False

    # Still in the way at the next poll: still refused.
    assert watcher.check() is False

    blocker.rmdir()
    assert watcher.check() is True
    # What `fleetid credentials` reads is the secret the server checks.
    on_file = LocalClientSecrets(server.state / "clients.json").secret(NEWCOMER)
    assert on_file is not None
    assert on_file == server.secrets.secret(NEWCOMER)


def test_an_unexpected_failure_refuses_the_revision_with_its_traceback_once(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = server.revision
    watcher = _watcher(server)

    def broken(algorithms: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.context.tokens, "prepare", broken)
    _rewrite(server, _es256_tools)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is False
        assert watcher.check() is False

    (error,) = _errors(caplog)
    assert "unexpected RuntimeError" in error.getMessage()
    assert error.exc_info is not None
    assert server.revision is before

    monkeypatch.undo()
    assert watcher.check() is True


def test_the_watcher_keeps_watching_after_any_failure(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = _watcher(server, interval=0.01)
    polls: list[int] = []
    polled = threading.Event()

    def fails_at_first() -> bool:
        polls.append(len(polls))
        if len(polls) == 1:
            raise OSError("the disk went away")
        if len(polls) >= 3:
            polled.set()
        return False

    monkeypatch.setattr(watcher, "check", fails_at_first)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        watcher.start()
        try:
            assert polled.wait(timeout=5)
            assert watcher._thread.is_alive()
        finally:
            watcher.stop()

    (error,) = _errors(caplog)
    assert "keeps watching" in error.getMessage()


def test_a_watcher_thread_picks_up_a_fix_after_a_refused_switch(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    before = server.revision
    ring = server.state / "keys-ES256.json"
    ring.write_text("{}")
    ring.chmod(0o644)
    watcher = _watcher(server, interval=0.01)
    _rewrite(server, _es256_tools)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        watcher.start()
        try:
            deadline = time.monotonic() + 5
            while not _errors(caplog) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.revision is before
            ring.unlink()
            while server.revision is before and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            watcher.stop()

    assert server.revision.hash != before.hash
    assert len(_errors(caplog)) == 1


def test_a_key_ring_that_cannot_be_reloaded_is_said_plainly_and_retried_once_fixed(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = _watcher(server)
    ring = server.state / "keys.json"
    signing = server.context.tokens.custody("RS256").active_key()
    ring.chmod(0o644)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check_keys() is False

    (error,) = _errors(caplog)
    assert f"key ring file {ring} is open to other users (mode 0644)" in error.getMessage()
    assert error.exc_info is None
    assert server.context.tokens.custody("RS256").active_key() == signing

    # A chmod changes neither the contents nor the modification time of the file.
    ring.chmod(0o600)
    assert watcher.check_keys() is True


# -- agents removed from the fleet ---------------------------------------------------------


def _support_sign_in(server: Server) -> dict[str, Any]:
    return server.tokens_for(SUPPORT, "carol", scope="openid crm:read", resources=[CRM])


def test_removing_an_agent_revokes_its_sign_ins_and_bringing_it_back_restores_none(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = _support_sign_in(server)
    refreshed = server.refresh(SUPPORT, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    refresh_token = refreshed.json()["refresh_token"]
    access_token = refreshed.json()["access_token"]
    watcher = _watcher(server)

    _rewrite(server, _without_support)
    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is True
    assert oauth_error(server.refresh(SUPPORT, refresh_token)) == "invalid_client"

    _rewrite(server, lambda document: None)
    assert watcher.check() is True

    assert SUPPORT in server.revision.fleet.agents
    again = server.refresh(SUPPORT, refresh_token)
    assert again.status_code == 400, again.text
    assert oauth_error(again) == "invalid_grant"
    introspected = server.post_form("/introspect", {"token": access_token}, agent=SUPPORT)
    assert introspected.json()["active"] is False
    # A new sign-in of the agent that came back works as usual.
    assert server.refresh(SUPPORT, _support_sign_in(server)["refresh_token"]).status_code == 200

    (warning,) = [record for record in _serve_log(caplog) if record.levelno == logging.WARNING]
    message = warning.getMessage()
    assert SUPPORT in message
    assert "revoked (1)" in message
    assert "access tokens already issued to them stay valid until they expire" in message
    ended = [event for event in server.audit() if event.get("event") == "sign_ins_ended"]
    assert [(event["agent"], event["outcome"]) for event in ended] == [
        (SUPPORT, "1 sign-in revoked")
    ]


def test_removing_an_agent_leaves_the_sign_ins_of_others(server: Server) -> None:
    others = server.tokens_for("sales-assistant", "bob", scope="openid crm:read", resources=[CRM])
    watcher = _watcher(server)

    _rewrite(server, _without_support)
    assert watcher.check() is True

    assert server.refresh("sales-assistant", others["refresh_token"]).status_code == 200


def test_an_agent_coming_back_loses_sign_ins_left_from_before_its_removal(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = _support_sign_in(server)
    interaction, _ = server.start(SUPPORT, scope="openid crm:read", resources=[CRM])
    # Removed without the watcher seeing it, as when the server was stopped meanwhile.
    _rewrite(server, _without_support)
    server.context.live.switch(compile_fleet(server.fleet))
    watcher = _watcher(server)

    _rewrite(server, lambda document: None)
    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is True

    assert oauth_error(server.refresh(SUPPORT, tokens["refresh_token"])) == "invalid_grant"
    # The sign-in that was in progress is gone with them.
    assert server.consent(interaction).status_code != 303
    (warning,) = [record for record in _serve_log(caplog) if record.levelno == logging.WARNING]
    assert f"{SUPPORT} (1)" in warning.getMessage()


def test_a_store_that_fails_while_revoking_refuses_the_removal(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = server.revision
    tokens = _support_sign_in(server)
    watcher = _watcher(server)

    def busy(namespace: str) -> Any:
        raise StoreUnavailableError("SQLite store was busy during scan")

    monkeypatch.setattr(server.context.store, "scan", busy)
    _rewrite(server, _without_support)

    with caplog.at_level(logging.INFO, logger="fleetid.serve"):
        assert watcher.check() is False

    (error,) = _errors(caplog)
    assert "SQLite store was busy during scan" in error.getMessage()
    assert server.revision is before
    refreshed = server.refresh(SUPPORT, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text

    monkeypatch.undo()
    assert watcher.check() is True
    assert oauth_error(server.refresh(SUPPORT, refreshed.json()["refresh_token"])) == (
        "invalid_client"
    )
