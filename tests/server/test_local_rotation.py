"""`fleetid keys rotate` on the state of `fleetid serve`: a next key that verifiers with a
cached JWKS may not have yet is not made active."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from serverkit import ISSUER, fleet_document, write_fleet

from fleetid.cli import main
from fleetid.keys import LocalKeyFile
from fleetid.keys.ring import JWKS_MAX_AGE, RotationTooSoon
from fleetid.server.audit import JsonlAudit
from fleetid.server.local import LocalState, open_local


def _started(tmp_path: Path, signer: rsa.RSAPrivateKey) -> tuple[Path, LocalState]:
    """A fleet and a state folder that `fleetid serve` has just started on."""
    fleet = write_fleet(tmp_path / "fleet", fleet_document(signer))
    state = LocalState(tmp_path / "state")
    context = open_local(fleet, state, ISSUER)
    context.store.close()
    if isinstance(context.audit, JsonlAudit):
        context.audit.close()
    return fleet, state


def test_rotating_right_after_the_first_start_is_refused_and_says_when_it_can_be_done(
    tmp_path: Path, signer: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet, state = _started(tmp_path, signer)
    ring = state.keys.read_bytes()

    with pytest.raises(SystemExit) as exited:
        main(["keys", "rotate", "--fleet", str(fleet), "--state", str(state.folder)])

    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("fleetid: rotation failed: ")
    assert "the next key " in error
    assert "seconds ago" in error
    assert "can become active from" in error
    assert "unexpected" not in error
    assert state.keys.read_bytes() == ring


def test_rotating_twice_in_a_row_is_refused_the_second_time(
    tmp_path: Path, signer: rsa.RSAPrivateKey
) -> None:
    _, state = _started(tmp_path, signer)
    # One moment for both rotations: a real clock could tick past a second between them.
    moment = time.time() + JWKS_MAX_AGE
    later = LocalKeyFile(state.keys, clock=lambda: moment)
    later.rotate(max_token_lifetime=3600)
    active, _ = later.active_key()

    with pytest.raises(RotationTooSoon, match="published 0 seconds ago"):
        later.rotate(max_token_lifetime=3600)

    assert LocalKeyFile(state.keys).active_key()[0] == active
