"""Fixtures for the vault's tests: both envelope providers, a movable clock, the OAuth peer.

Nothing here reaches beyond 127.0.0.1: AWS credentials are fake and KMS is moto in-process,
the OAuth provider is node-oidc-provider on a loopback port, and a guard fails any other
connection or name lookup.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from isolation import fake_aws_environment, loopback_only
from moto import mock_aws
from peerkit import CLIENT_SECRET, Peer, install_peer
from vaultkit import (
    FLEET,
    REDIRECT_URI,
    SECRET_VARIABLE,
    EnvelopeKit,
    KmsKit,
    LocalKit,
    MovableClock,
    TokenCalls,
)

from fleetid.store import SQLiteStore
from fleetid.vault import EnvironmentSecrets, LocalEnvelope, Vault


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> Iterator[None]:
    with fake_aws_environment():
        yield


@pytest.fixture(scope="session", autouse=True)
def loopback_only_here() -> Iterator[None]:
    with loopback_only("vault tests"):
        yield


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture(scope="module")
def kms() -> Iterator[Any]:
    """A KMS client on moto, one per module: starting moto costs more than most tests. Each
    test makes its own keys, so none sees another's."""
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1")


@pytest.fixture(params=["local", "kms"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> EnvelopeKit:
    if request.param == "local":
        return LocalKit(tmp_path / "vault.key")

    return KmsKit(request.getfixturevalue("kms"))


@pytest.fixture
def store(tmp_path: Path, clock: MovableClock) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "store.sqlite3", clock=clock)
    yield opened
    opened.close()


# The OAuth peer.


@pytest.fixture(scope="session")
def peer_folder() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the OAuth peer needs Node.js and npm")

    return install_peer()


@pytest.fixture(scope="module")
def peer(peer_folder: Path) -> Iterator[Peer]:
    """A provider that keeps a refresh token across refreshes."""
    started = Peer.start(peer_folder, redirect_uri=REDIRECT_URI)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def rotating_peer(peer_folder: Path) -> Iterator[Peer]:
    """A provider that issues a new refresh token on every refresh."""
    started = Peer.start(peer_folder, redirect_uri=REDIRECT_URI, rotating=True)
    yield started
    started.stop()


MakeVault = Callable[..., tuple[Vault, TokenCalls]]


@pytest.fixture
def make_vault(tmp_path: Path, store: SQLiteStore, clock: MovableClock) -> Iterator[MakeVault]:
    """A vault on the test's store, local master key and clock, for the given connections.

    Each call makes another instance, as another server process would be, sharing the store
    and the master key file. The token endpoint calls of each are counted.
    """
    made: list[Vault] = []
    clients: list[httpx.Client] = []

    def make(
        connections: dict[str, Any],
        *,
        client_secret: str = CLIENT_SECRET,
        environ: dict[str, str] | None = None,
        request_hooks: tuple[Callable[[httpx.Request], None], ...] = (),
        **options: Any,
    ) -> tuple[Vault, TokenCalls]:
        calls = TokenCalls()
        http = httpx.Client(timeout=10, event_hooks={"request": [calls, *request_hooks]})
        clients.append(http)
        vault = Vault(
            store,
            LocalEnvelope(tmp_path / "vault.key"),
            fleet=FLEET,
            connections=lambda: connections,
            redirect_uri=REDIRECT_URI,
            secrets=EnvironmentSecrets({SECRET_VARIABLE: client_secret, **(environ or {})}),
            http=http,
            clock=clock,
            **options,
        )
        made.append(vault)
        return vault, calls

    yield make
    for vault in made:
        vault.close()
    for http in clients:
        http.close()
