"""API-key connections: one static key per connection, read from its reference at start,
stored sealed, returned with its header and prefix. Run against both envelope providers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vaultkit import FLEET, REDIRECT_URI, EnvelopeKit, MovableClock

from fleetid.fleet.model import ApiKeyConnection
from fleetid.store import SQLiteStore
from fleetid.vault import (
    API_KEY_TOKEN_TYPE,
    ApiKeyMissing,
    EnvironmentSecrets,
    UnknownConnection,
    Vault,
)

KEY = "rk_live_0123456789abcdefghijklmnopqrstuv"


def api_key(**changes: Any) -> ApiKeyConnection:
    document = {
        "kind": "api_key",
        "header": "X-Reporting-Key",
        "key": {"config": "reporting-api-key", "env": "REPORTING_API_KEY"},
    }
    return ApiKeyConnection.model_validate(document | changes)


@pytest.fixture
def environ() -> dict[str, str]:
    return {"REPORTING_API_KEY": KEY}


@pytest.fixture
def connections() -> dict[str, Any]:
    return {
        "reporting": api_key(),
        "billing": api_key(header="Authorization", prefix="Token ", key={"env": "BILLING_KEY"}),
        "ledger": api_key(key={"config": "ledger-api-key"}),
    }


@pytest.fixture
def vault(
    kit: EnvelopeKit,
    store: SQLiteStore,
    clock: MovableClock,
    environ: dict[str, str],
    connections: dict[str, Any],
) -> Iterator[Vault]:
    opened = Vault(
        store,
        kit.envelope(),
        fleet=FLEET,
        connections=lambda: connections,
        redirect_uri=REDIRECT_URI,
        secrets=EnvironmentSecrets(environ),
        clock=clock,
    )
    yield opened
    opened.close()


def test_a_key_is_loaded_at_start_and_fetched(vault: Vault) -> None:
    loaded = vault.load_api_keys()

    assert loaded.stored == ("reporting",)
    assert loaded.missing == ("billing", "ledger")
    credential = vault.fetch("reporting", "acme", "alice")
    assert credential.kind == "api_key"
    assert (credential.header, credential.prefix, credential.secret) == (
        "X-Reporting-Key",
        "",
        KEY,
    )
    assert credential.header_value() == KEY
    assert credential.expires_in is None and not credential.refreshed
    assert KEY not in repr(credential)
    assert credential.token_response() == {
        "access_token": KEY,
        "issued_token_type": API_KEY_TOKEN_TYPE,
        "token_type": "N_A",
        "header": "X-Reporting-Key",
        "prefix": "",
    }


def test_the_key_is_the_same_for_every_user(vault: Vault) -> None:
    vault.load_api_keys()

    assert vault.fetch("reporting", "acme", "alice") == vault.fetch("reporting", "globex", "bob")


def test_a_prefix_is_sent_before_the_key(vault: Vault, environ: dict[str, str]) -> None:
    environ["BILLING_KEY"] = "bk_0123456789"
    vault.load_api_keys()

    assert vault.fetch("billing", "acme", "alice").header_value() == "Token bk_0123456789"


def test_loading_again_stores_only_what_changed(vault: Vault, environ: dict[str, str]) -> None:
    vault.load_api_keys()
    assert vault.load_api_keys().unchanged == ("reporting",)

    environ["REPORTING_API_KEY"] = "rk_live_rotated_0123456789"
    assert vault.load_api_keys().stored == ("reporting",)
    assert vault.fetch("reporting", "acme", "alice").secret == "rk_live_rotated_0123456789"


def test_a_key_stored_earlier_is_kept_when_the_reference_is_empty(
    vault: Vault, environ: dict[str, str]
) -> None:
    vault.load_api_keys()
    del environ["REPORTING_API_KEY"]

    assert vault.load_api_keys().kept == ("reporting",)
    assert vault.fetch("reporting", "acme", "alice").secret == KEY


def test_a_missing_key_names_its_reference_only(vault: Vault) -> None:
    vault.load_api_keys()

    with pytest.raises(ApiKeyMissing) as raised:
        vault.fetch("ledger", "acme", "alice")

    assert raised.value.code == "api_key_missing"
    assert raised.value.connection == "ledger"
    assert "'ledger-api-key'" in str(raised.value)


def test_provisioning_puts_a_config_secret(vault: Vault) -> None:
    assert vault.put_api_key("ledger", "lk_from_provisioning_0123")
    assert not vault.put_api_key("ledger", "lk_from_provisioning_0123")

    assert vault.load_api_keys().kept == ("ledger",)
    assert vault.fetch("ledger", "acme", "alice").secret == "lk_from_provisioning_0123"


def test_the_key_is_stored_sealed(vault: Vault, tmp_path: Path, store: SQLiteStore) -> None:
    vault.load_api_keys()
    store.close()

    raw = b"".join(path.read_bytes() for path in tmp_path.glob("store.sqlite3*"))
    assert KEY.encode() not in raw


def test_only_api_key_connections_take_a_key(vault: Vault) -> None:
    with pytest.raises(UnknownConnection):
        vault.put_api_key("crm", "key")
    with pytest.raises(UnknownConnection):
        vault.fetch("crm", "acme", "alice")
