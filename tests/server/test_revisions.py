"""A policy change lands atomically (DESIGN.md, principle 3).

A request is decided whole by the revision it started with, however the live revision
switches meanwhile; `RevisionWatcher.check` switches to a valid edit and keeps serving the
running revision, with the problems in the log, when the edit is invalid.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from serverkit import (
    CLIENT_CREDENTIALS,
    FINANCE,
    KEYED,
    POSTER,
    RECONCILER,
    TOOLS,
    Client,
    Server,
    claims_of,
    compile_fleet,
    fleet_document,
    write_fleet,
)

import fleetid.server.issuance
from fleetid.fleet.compile import Revision
from fleetid.keys import LocalKeyFile
from fleetid.keys.ring import JWKS_MAX_AGE
from fleetid.server.context import LiveRevision
from fleetid.server.local import LocalState, RevisionWatcher, fleet_marks

SHORTER = ("max_lifetime: 2m", "max_lifetime: 1m")


def _shorter_machine_tokens(fleet: Path) -> None:
    """Edit policies/crm.yaml so that machine tokens on the CRM live one minute, not two."""
    policy = fleet.parent / "policies" / "crm.yaml"
    text = policy.read_text()
    assert SHORTER[0] in text
    policy.write_text(text.replace(*SHORTER))


@pytest.fixture
def revision_b(server: Server, tmp_path: Path) -> Revision:
    """The server's fleet with machine CRM tokens capped at one minute."""
    fleet = write_fleet(tmp_path / "fleet-b", fleet_document(server.signer))
    _shorter_machine_tokens(fleet)
    revision = compile_fleet(fleet)
    assert revision.hash != server.revision.hash
    return revision


def _lifetime(token: str) -> int:
    claims = claims_of(token)
    return int(claims["exp"]) - int(claims["iat"])


# -- LiveRevision.switch ------------------------------------------------------------------


def test_switch_replaces_the_revision_and_refuses_the_live_one(
    server: Server, revision_b: Revision
) -> None:
    live = LiveRevision(server.revision)

    assert live.switch(server.revision) is False
    assert live.switch(revision_b) is True
    assert live.get() is revision_b
    assert live.switch(revision_b) is False


def test_a_switch_mid_request_does_not_change_that_requests_decision(
    server: Server, revision_b: Revision, monkeypatch: pytest.MonkeyPatch
) -> None:
    revision_a = server.revision
    decide: Callable[..., Any] = fleetid.server.issuance.decide

    def switch_then_decide(revision: Revision, request: Any) -> Any:
        server.context.live.switch(revision_b)
        return decide(revision, request)

    monkeypatch.setattr(fleetid.server.issuance, "decide", switch_then_decide)

    token = server.machine_token(RECONCILER)

    assert claims_of(token)["revision"] == revision_a.hash
    assert _lifetime(token) == 120
    assert server.revision is revision_b
    monkeypatch.undo()
    assert _lifetime(server.machine_token(RECONCILER)) == 60


def test_concurrent_requests_each_see_one_whole_revision(
    server: Server, revision_b: Revision
) -> None:
    revision_a = server.revision
    lifetimes = {revision_a.hash: 120, revision_b.hash: 60}
    stop = threading.Event()

    def switcher() -> None:
        while not stop.is_set():
            server.context.live.switch(revision_b)
            server.context.live.switch(revision_a)

    def issue(count: int) -> list[str]:
        client = Client(server.app)
        try:
            return [
                client.post(
                    "/token",
                    content=f"grant_type={CLIENT_CREDENTIALS}".encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                    auth=server.basic(RECONCILER),
                ).json()["access_token"]
                for _ in range(count)
            ]
        finally:
            client.close()

    switching = threading.Thread(target=switcher)
    switching.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            tokens = [token for batch in pool.map(issue, [25] * 4) for token in batch]
    finally:
        stop.set()
        switching.join()

    audited = {event["jti"]: event for event in server.audit() if event.get("jti")}
    for token in tokens:
        claims = claims_of(token)
        assert _lifetime(token) == lifetimes[claims["revision"]]
        assert audited[claims["jti"]]["revision"] == claims["revision"]
        assert audited[claims["jti"]]["lifetime"] == lifetimes[claims["revision"]]


class _SwitchesAfterFirstRead(LiveRevision):
    """A live revision that a watcher switches right after a request's first read."""

    def __init__(self, first: Revision, then: Revision) -> None:
        super().__init__(first)
        self._then: Revision | None = then

    def get(self) -> Revision:
        revision = super().get()
        if self._then is not None:
            self.switch(self._then)
            self._then = None
        return revision


def test_client_authentication_uses_the_revision_the_request_started_with(
    server: Server, tmp_path: Path
) -> None:
    # In revision B, post-agent authenticates with client_secret_basic instead of post.
    document = fleet_document(server.signer)
    document["agents"][POSTER]["token_endpoint_auth_method"] = "client_secret_basic"
    revision_b = compile_fleet(write_fleet(tmp_path / "fleet-b", document))
    server.context.live = _SwitchesAfterFirstRead(server.revision, revision_b)

    # Under the revision this request started with, post-agent may not use Basic.
    response = server.token({"grant_type": CLIENT_CREDENTIALS}, agent=POSTER)

    assert response.status_code == 401, claims_of(response.json()["access_token"])


# -- RevisionWatcher.check ----------------------------------------------------------------


def test_a_rotation_by_another_process_is_adopted_by_the_running_server(server: Server) -> None:
    state = LocalState(server.state)
    watcher = RevisionWatcher(server.fleet, server.context, state=state)
    before = _kid(server.machine_token(RECONCILER))
    published = {key["kid"] for key in server.context.tokens.jwks()["keys"]}
    old_token = server.machine_token(RECONCILER)
    assert watcher.check_keys() is False

    # What `fleetid keys rotate` does, from its own process: its own custody of the file,
    # once the next key has been published as long as verifiers cache the JWKS.
    later = LocalKeyFile(state.keys, clock=lambda: time.time() + JWKS_MAX_AGE)
    later.rotate(max_token_lifetime=3600)

    assert watcher.check_keys() is True
    after = _kid(server.machine_token(RECONCILER))
    assert after != before
    assert after in published, "the new active key was published as next before it signed"
    now_published = {key["kid"] for key in server.context.tokens.jwks()["keys"]}
    assert {before, after} <= now_published
    introspected = server.post_form("/introspect", {"token": old_token}, agent=RECONCILER)
    assert introspected.json()["active"] is True
    assert watcher.check_keys() is False


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_an_unchanged_fleet_is_not_reloaded(server: Server) -> None:
    watcher = RevisionWatcher(server.fleet, server.context)

    assert watcher.check() is False


def test_a_valid_edit_switches_the_live_revision(server: Server) -> None:
    before = server.revision
    switched: list[Revision] = []
    watcher = RevisionWatcher(server.fleet, server.context, on_switch=switched.append)
    assert _lifetime(server.machine_token(RECONCILER)) == 120

    _shorter_machine_tokens(server.fleet)

    assert watcher.check() is True
    assert server.revision.hash != before.hash
    assert [revision.hash for revision in switched] == [server.revision.hash]
    token = server.machine_token(RECONCILER)
    assert claims_of(token)["revision"] == server.revision.hash
    assert _lifetime(token) == 60
    assert watcher.check() is False


def test_an_edit_made_while_the_server_started_is_switched_in(server: Server) -> None:
    # `fleetid serve` takes the marks before it reads the fleet, and starts the watcher once
    # the rest of the state is open: an edit in between is the watcher's first change.
    marks = fleet_marks(server.fleet)
    before = server.revision
    _shorter_machine_tokens(server.fleet)

    unaware = RevisionWatcher(server.fleet, server.context)
    watcher = RevisionWatcher(server.fleet, server.context, seen=marks)

    assert unaware.check() is False
    assert watcher.check() is True
    assert server.revision.hash != before.hash
    assert _lifetime(server.machine_token(RECONCILER)) == 60


def test_an_edit_that_changes_no_meaning_switches_nothing(server: Server) -> None:
    before = server.revision
    watcher = RevisionWatcher(server.fleet, server.context)

    server.fleet.write_text(server.fleet.read_text() + "\n# a comment changes no meaning\n")

    assert watcher.check() is False
    assert server.revision is before


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("fleet.yaml", "- tools:search\n", "- tools:nothing\n"),
        ("fleet.yaml", "version: 1", "version: [1"),
        ("policies/crm.yaml", "effect: cap_lifetime", "effect: grant_everything"),
    ],
    ids=["unknown-scope", "broken-yaml", "bad-policy"],
)
def test_an_invalid_edit_keeps_the_running_revision_and_logs_the_problems(
    server: Server, caplog: pytest.LogCaptureFixture, file: str, old: str, new: str
) -> None:
    before = server.revision
    watcher = RevisionWatcher(server.fleet, server.context)
    edited = server.fleet.parent / file
    text = edited.read_text()
    assert old in text
    edited.write_text(text.replace(old, new, 1))

    with caplog.at_level(logging.WARNING, logger="fleetid.serve"):
        switched = watcher.check()

    assert switched is False
    assert server.revision is before
    assert claims_of(server.machine_token(RECONCILER))["revision"] == before.hash
    warnings = [record for record in caplog.records if record.name == "fleetid.serve"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert before.short in message
    assert "keeps serving" in message
    # Each problem is reported where it is: file:line:column.
    assert f"{edited}:" in message
    assert ": error: " in message


def test_a_fixed_edit_after_an_invalid_one_switches(server: Server) -> None:
    before = server.revision
    watcher = RevisionWatcher(server.fleet, server.context)
    original = server.fleet.read_text()
    server.fleet.write_text(original.replace("version: 1", "version: [1", 1))
    assert watcher.check() is False

    server.fleet.write_text(original)
    _shorter_machine_tokens(server.fleet)

    assert watcher.check() is True
    assert server.revision.hash != before.hash


def test_an_agent_removed_during_its_sign_in_ends_it_with_an_error_page(
    server: Server, tmp_path: Path
) -> None:
    interaction, _ = server.start(FINANCE, scope="openid tools:search", resources=[TOOLS])
    server.sign_in(interaction, "dan")
    document = fleet_document(server.signer)
    del document["agents"][FINANCE]
    document["connections"]["reporting"]["allowed"]["agents"] = [KEYED]
    server.context.live.switch(compile_fleet(write_fleet(tmp_path / "fleet-b", document)))

    response = server.consent(interaction)

    assert response.status_code == 400


def test_a_kid_this_server_never_had_leaves_remembered_verifications(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = server.context.tokens
    genuine = server.machine_token(RECONCILER)
    assert tokens.verify(genuine, now=server.clock()) is not None
    forged = jwt.encode(
        {**claims_of(genuine), "sub": "someone-else"},
        server.signer,
        algorithm="RS256",
        headers={"kid": "a-kid-never-published", "typ": "at+jwt"},
    )
    checked: list[str] = []
    check_signature = tokens._check_signature

    def counting(token: str) -> Any:
        checked.append(token)
        return check_signature(token)

    monkeypatch.setattr(tokens, "_check_signature", counting)

    assert tokens.verify(forged, now=server.clock()) is None
    assert tokens.verify(genuine, now=server.clock()) is not None
    # The genuine token's signature was not checked again.
    assert checked == [forged]
