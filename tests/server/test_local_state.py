"""The state folder of `fleetid serve`: closed to other users, and one key ring per signing
algorithm, so that tokens are signed with the algorithm discovery announces."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverkit import (
    CLIENT_CREDENTIALS,
    ISSUER,
    RECONCILER,
    Client,
    fleet_document,
    write_fleet,
)

from fleetid.keys import KeyRingInvalid
from fleetid.server.app import create_app
from fleetid.server.audit import JsonlAudit
from fleetid.server.clients import LocalClientSecrets
from fleetid.server.context import ServerContext
from fleetid.server.local import LocalState, LocalStateError, open_local


@pytest.fixture
def owner_umask() -> Iterator[None]:
    """The usual umask, under which new files are readable by everyone unless made 0600."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def opened() -> Iterator[list[ServerContext]]:
    """Contexts a test opens, closed after it."""
    contexts: list[ServerContext] = []
    yield contexts
    for context in contexts:
        context.store.close()
        if isinstance(context.audit, JsonlAudit):
            context.audit.close()


def _fleet(folder: Path, signer: rsa.RSAPrivateKey, algorithm: str = "RS256") -> Path:
    document = fleet_document(signer)
    document["identity"]["signing"]["algorithm"] = algorithm
    return write_fleet(folder, document)


def _open(fleet: Path, state: Path, opened: list[ServerContext]) -> ServerContext:
    context = open_local(fleet, LocalState(state), ISSUER)
    opened.append(context)
    return context


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _machine_token(context: ServerContext) -> str:
    secrets = context.secrets
    assert isinstance(secrets, LocalClientSecrets)
    secret = secrets.secret(RECONCILER)
    assert secret is not None
    client = Client(create_app(context))
    try:
        response = client.post(
            "/token",
            content=urlencode({"grant_type": CLIENT_CREDENTIALS}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=(RECONCILER, secret),
        )
        discovery = client.get("/.well-known/openid-configuration").json()
        jwks = client.get("/jwks.json").json()
    finally:
        client.close()
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    header = jwt.get_unverified_header(token)
    # What discovery announces and what the JWKS publishes, the token must agree with.
    assert discovery["id_token_signing_alg_values_supported"] == [header["alg"]]
    published = {key["kid"]: key["alg"] for key in jwks["keys"]}
    assert published[header["kid"]] == header["alg"]
    return token


def _ring_algorithms(path: Path) -> set[Any]:
    return {key["alg"] for key in json.loads(path.read_text())["keys"]}


# -- the folder and the store ----------------------------------------------------------------


def test_an_existing_state_folder_and_the_store_are_closed_to_other_users(
    tmp_path: Path, signer: rsa.RSAPrivateKey, owner_umask: None, opened: list[ServerContext]
) -> None:
    fleet = _fleet(tmp_path / "fleet", signer)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    assert _mode(state) == 0o755

    context = _open(fleet, state, opened)
    _machine_token(context)

    assert _mode(state) == 0o700
    for name in ("store.sqlite3", "store.sqlite3-wal", "store.sqlite3-shm"):
        assert _mode(state / name) == 0o600, name
    assert all(not _mode(path) & 0o077 for path in state.iterdir())


def test_a_state_folder_open_to_others_that_is_not_ours_is_refused(
    tmp_path: Path, signer: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _fleet(tmp_path / "fleet", signer)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    owner = state.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)

    with pytest.raises(LocalStateError) as refused:
        open_local(fleet, LocalState(state), ISSUER)

    assert str(state) in str(refused.value)
    assert "0755" in str(refused.value)
    assert "another user" in str(refused.value)
    assert list(state.iterdir()) == []


def test_a_state_folder_whose_mode_cannot_be_changed_is_refused(
    tmp_path: Path, signer: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _fleet(tmp_path / "fleet", signer)
    state = tmp_path / "state"
    state.mkdir(mode=0o750)

    def read_only(path: Any, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(os, "chmod", read_only)

    with pytest.raises(LocalStateError, match="could not be made 0700: Operation not permitted"):
        open_local(fleet, LocalState(state), ISSUER)

    assert list(state.iterdir()) == []


# -- one key ring per algorithm --------------------------------------------------------------


def test_a_new_signing_algorithm_signs_with_its_own_ring(
    tmp_path: Path, signer: rsa.RSAPrivateKey, opened: list[ServerContext]
) -> None:
    state = tmp_path / "state"
    first = _open(_fleet(tmp_path / "rs256", signer), state, opened)
    rs256_kid = jwt.get_unverified_header(_machine_token(first))["kid"]
    rs256_ring = (state / "keys.json").read_bytes()

    # The same state folder, after identity.signing.algorithm changed to ES256.
    second = _open(_fleet(tmp_path / "es256", signer, "ES256"), state, opened)
    header = jwt.get_unverified_header(_machine_token(second))

    assert header["alg"] == "ES256"
    assert (state / "keys.json").read_bytes() == rs256_ring
    assert _ring_algorithms(state / "keys-ES256.json") == {"ES256"}

    # And back: the RS256 ring of the first start signs again, with the same key.
    third = _open(_fleet(tmp_path / "rs256-again", signer), state, opened)
    assert jwt.get_unverified_header(_machine_token(third)) == {
        "alg": "RS256",
        "kid": rs256_kid,
        "typ": "at+jwt",
    }


def test_a_state_folder_started_with_es256_keeps_that_ring_in_keys_json(
    tmp_path: Path, signer: rsa.RSAPrivateKey, opened: list[ServerContext]
) -> None:
    state = tmp_path / "state"
    es256 = _fleet(tmp_path / "es256", signer, "ES256")
    es256_kid = jwt.get_unverified_header(_machine_token(_open(es256, state, opened)))["kid"]
    assert _ring_algorithms(state / "keys.json") == {"ES256"}

    rs256 = _open(_fleet(tmp_path / "rs256", signer), state, opened)
    assert jwt.get_unverified_header(_machine_token(rs256))["alg"] == "RS256"
    assert _ring_algorithms(state / "keys-RS256.json") == {"RS256"}

    again = _open(es256, state, opened)
    assert jwt.get_unverified_header(_machine_token(again))["kid"] == es256_kid


def test_after_the_algorithm_changes_a_restart_still_publishes_the_earlier_ring(
    tmp_path: Path, signer: rsa.RSAPrivateKey, opened: list[ServerContext]
) -> None:
    state = tmp_path / "state"
    earlier = _machine_token(_open(_fleet(tmp_path / "rs256", signer), state, opened))
    earlier_kid = jwt.get_unverified_header(earlier)["kid"]
    es256 = _fleet(tmp_path / "es256", signer, "ES256")
    _open(es256, state, opened)

    # A restart on the ES256 fleet: the RS256 token it signed before is still unexpired.
    restarted = _open(es256, state, opened)

    published = {key["kid"] for key in restarted.tokens.jwks()["keys"]}
    assert earlier_kid in published
    assert restarted.tokens.verify(earlier, now=restarted.clock()) is not None
    assert jwt.get_unverified_header(_machine_token(restarted))["alg"] == "ES256"


def test_a_ring_file_of_another_algorithm_is_refused_with_what_to_do(
    tmp_path: Path, signer: rsa.RSAPrivateKey, opened: list[ServerContext]
) -> None:
    state = tmp_path / "state"
    _open(_fleet(tmp_path / "rs256", signer), state, opened)
    shutil.copy(state / "keys.json", state / "keys-ES256.json")

    with pytest.raises(KeyRingInvalid) as refused:
        open_local(_fleet(tmp_path / "es256", signer, "ES256"), LocalState(state), ISSUER)

    message = str(refused.value)
    assert str(state / "keys-ES256.json") in message
    assert "RS256" in message
    assert "ES256" in message
    assert "move it aside" in message
