"""No token, code, verifier, client secret, API key or master key in any log line, exception
message, repr or stored value.

Every path runs with every logger at DEBUG (botocore's two body loggers excepted: the KMS
envelope refuses to run while they are at DEBUG, which its own test checks), and each secret
the test sees pass through the vault is searched for in everything it could leak into.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from peerkit import CLIENT_SECRET, Peer
from vaultkit import FLEET, REDIRECT_URI, MovableClock, oauth_connection

from fleetid.fleet.model import ApiKeyConnection
from fleetid.store import SQLiteStore
from fleetid.vault import (
    LINK_NAMESPACE,
    Binding,
    DecryptionFailed,
    EnvironmentSecrets,
    KmsEnvelope,
    LinkBroken,
    LinkDenied,
    LinkRejected,
    NotLinked,
    ProviderError,
    SecretUnavailable,
    Vault,
    VaultError,
)
from fleetid.vault.records import NAMESPACE
from fleetid.vault.vault import _digest

CALENDAR = "calendar"
API_KEY = "rk_live_hygiene_0123456789abcdef"


class Evidence:
    """Secrets seen, and every text they must not appear in."""

    def __init__(self) -> None:
        self.secrets: set[str] = {CLIENT_SECRET, API_KEY}
        self.texts: list[str] = []

    def secret(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.secrets.add(value)

    def tokens(self, vault: Vault, user: str = "alice") -> None:
        record = vault.records.read(Binding("oauth", CALENDAR, "acme", user))
        if record is not None and record.sealed is not None:
            payload = vault.records.open(record)
            self.secret(payload.get("access_token"))
            self.secret(payload.get("refresh_token"))

    def text(self, *values: Any) -> None:
        self.texts.extend(repr(value) for value in values)
        self.texts.extend(str(value) for value in values)

    def error(self, error: BaseException) -> None:
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.text(current)
            self.texts.extend(str(arg) for arg in current.args)
            current = current.__cause__ or current.__context__

    def raised(self, error_type: type[BaseException], call: Any, *args: Any) -> None:
        with pytest.raises(error_type) as raised:
            call(*args)
        self.error(raised.value)

    def assert_clean(self) -> None:
        assert self.texts
        # Not an assert on the strings: its failure message would print the secret.
        leaks = sum(secret in text for secret in self.secrets for text in self.texts)
        if leaks:
            pytest.fail(f"a secret appears {leaks} times in logs, errors, reprs or the store")


@pytest.fixture
def evidence() -> Evidence:
    return Evidence()


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # caplog.set_level also sets its handler's level, so the body loggers are set directly:
    # the last set_level call would otherwise make the handler drop every DEBUG line.
    body_loggers = [logging.getLogger(name) for name in ("botocore.endpoint", "botocore.parsers")]
    previous = [logger.level for logger in body_loggers]
    for name in ("httpx", "httpcore", "fleetid", "botocore", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    for logger in body_loggers:
        logger.setLevel(logging.INFO)
    yield caplog
    for logger, level in zip(body_loggers, previous, strict=True):
        logger.setLevel(level)


def test_the_oauth_paths_leak_nothing(
    make_vault: Any,
    peer: Peer,
    clock: MovableClock,
    tmp_path: Path,
    store: SQLiteStore,
    evidence: Evidence,
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    connections = {CALENDAR: oauth_connection(peer)}
    vault, _ = make_vault(connections)

    # Link, noting the state, the code and the PKCE verifier on the way.
    start = vault.begin_link(CALENDAR, "acme", "alice")
    state = parse_qs(urlsplit(start.authorization_url).query)["state"][0]
    stored = store.get(LINK_NAMESPACE, _digest(state))
    assert stored is not None
    pending = vault.records.open_value(Binding("link", CALENDAR, "acme", "alice"), stored.value)
    evidence.secret(state)
    evidence.secret(pending["code_verifier"])
    callback = peer.authorize(start.authorization_url)
    evidence.secret(parse_qs(urlsplit(callback).query)["code"][0])
    evidence.text(start, vault.complete_link(callback, "acme", "alice"))
    evidence.tokens(vault)

    # A replayed callback, a refused authorization, a user who never linked.
    evidence.raised(LinkRejected, vault.complete_link, callback, "acme", "alice")
    denied = vault.begin_link(CALENDAR, "acme", "alice")
    denied_state = parse_qs(urlsplit(denied.authorization_url).query)["state"][0]
    evidence.secret(denied_state)
    evidence.raised(
        LinkDenied,
        vault.complete_link,
        {"state": denied_state, "error": "access_denied", "iss": peer.issuer},
        "acme",
        "alice",
    )
    evidence.raised(NotLinked, vault.fetch, CALENDAR, "acme", "nobody")

    # Fetch, refresh, and a refresh with the wrong client secret or none at all.
    evidence.text(vault.fetch(CALENDAR, "acme", "alice"))
    clock.advance(301)
    evidence.text(vault.fetch(CALENDAR, "acme", "alice"))
    evidence.tokens(vault)
    clock.advance(301)
    wrong, _ = make_vault(connections, client_secret="wrong-secret-0123456789abcdef")
    evidence.secret("wrong-secret-0123456789abcdef")
    evidence.raised(ProviderError, wrong.fetch, CALENDAR, "acme", "alice")
    absent = Vault(
        store,
        vault.records.envelope,
        fleet=FLEET,
        connections=lambda: connections,
        redirect_uri=REDIRECT_URI,
        secrets=EnvironmentSecrets({}),
        clock=clock,
    )
    evidence.raised(SecretUnavailable, absent.fetch, CALENDAR, "acme", "alice")
    absent.close()

    # A record moved onto another user's row.
    record = store.get(NAMESPACE, Binding("oauth", CALENDAR, "acme", "alice").key)
    assert record is not None
    moved = dict(record.value) | {"binding": Binding("oauth", CALENDAR, "acme", "eve").to_json()}
    store.create(NAMESPACE, Binding("oauth", CALENDAR, "acme", "eve").key, moved, expires_at=None)
    evidence.raised(DecryptionFailed, vault.fetch, CALENDAR, "acme", "eve")

    # Revoked at the provider, so the link breaks; then unlinked.
    evidence.text(vault.fetch(CALENDAR, "acme", "alice"))
    evidence.tokens(vault)
    peer.revoke_directly(
        vault.records.open(
            vault.records.read(
                Binding(  # type: ignore[arg-type]
                    "oauth", CALENDAR, "acme", "alice"
                )
            )
        )["refresh_token"]
    )
    clock.advance(301)
    evidence.raised(LinkBroken, vault.fetch, CALENDAR, "acme", "alice")
    link_again = vault.begin_link(CALENDAR, "acme", "alice")
    evidence.secret(parse_qs(urlsplit(link_again.authorization_url).query)["state"][0])
    evidence.text(
        vault.complete_link(peer.authorize(link_again.authorization_url), "acme", "alice")
    )
    evidence.tokens(vault)
    evidence.text(vault.unlink(CALENDAR, "acme", "alice"))

    master_keys = json.loads((tmp_path / "vault.key").read_text())["keys"]
    evidence.secrets.update(key["key"] for key in master_keys)
    evidence.texts.extend(record.getMessage() for record in everything_logged.records)
    evidence.texts.append(everything_logged.text)
    store.close()
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("store.sqlite3*"))
    evidence.texts.append(raw.decode("latin-1"))
    assert len(evidence.secrets) >= 10
    logged = everything_logged.text
    assert "HTTP Request: POST" in logged and "vault refreshed" in logged
    assert "receive_response_body" in logged, "httpcore's DEBUG lines were not captured"
    evidence.assert_clean()


def test_the_api_key_path_leaks_nothing_under_kms(
    kms: Any,
    tmp_path: Path,
    clock: MovableClock,
    evidence: Evidence,
    everything_logged: pytest.LogCaptureFixture,
) -> None:
    connections = {
        "reporting": ApiKeyConnection.model_validate(
            {"kind": "api_key", "header": "X-Key", "key": {"env": "REPORTING_API_KEY"}}
        )
    }
    # A client of its own, since one of its methods is wrapped; the fixture's runs moto.
    kms = boto3.client("kms", region_name=kms.meta.region_name)
    with SQLiteStore(tmp_path / "store.sqlite3", clock=clock) as store:
        key_id = kms.create_key()["KeyMetadata"]["Arn"]
        data_keys: list[bytes] = []
        generate = kms.generate_data_key

        def spy(**kwargs: Any) -> Any:
            response = generate(**kwargs)
            data_keys.append(response["Plaintext"])
            return response

        kms.generate_data_key = spy
        vault = Vault(
            store,
            KmsEnvelope(kms, key_id),
            fleet=FLEET,
            connections=lambda: connections,
            redirect_uri=REDIRECT_URI,
            secrets=EnvironmentSecrets({"REPORTING_API_KEY": API_KEY}),
            clock=clock,
        )
        evidence.text(vault.load_api_keys())
        evidence.text(vault.fetch("reporting", "acme", "alice"))
        record = store.get(NAMESPACE, Binding("api_key", "reporting").key)
        assert record is not None
        evidence.texts.append(json.dumps(dict(record.value)))
        vault.close()

    assert data_keys
    for data_key in data_keys:
        evidence.secrets.add(base64.b64encode(data_key).decode())
        evidence.secrets.add(data_key.hex())
    evidence.texts.extend(record.getMessage() for record in everything_logged.records)
    assert any("kms" in text.lower() for text in evidence.texts), "nothing was logged"
    evidence.assert_clean()


def test_every_vault_error_has_a_code() -> None:
    from fleetid.vault import errors

    classes = [getattr(errors, name) for name in errors.__all__]
    codes = [cls.code for cls in classes]

    assert all(issubclass(cls, VaultError) for cls in classes)
    assert len(set(codes)) == len(codes)
