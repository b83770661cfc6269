"""Contract tests for envelope encryption, run against LocalEnvelope and KmsEnvelope (moto).

Each provider must open what it sealed under the same context only: a record moved to
another user, tenant, connection or fleet, or changed in any byte, fails with
`DecryptionFailed`. A master key rotation must leave every record readable, re-wrap records
without touching their ciphertext, and let the old key be retired once the walk is done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from vaultkit import FLEET, EnvelopeKit, KmsKit, LocalKit, MovableClock

from fleetid.store import SQLiteStore
from fleetid.vault import (
    Binding,
    DecryptionFailed,
    EnvelopeError,
    KmsEnvelope,
    Lease,
    LocalEnvelope,
    Sealed,
    SecretExposureRisk,
    VaultRecords,
)
from fleetid.vault.envelope import associated_data
from fleetid.vault.records import NAMESPACE

ALICE = Binding("oauth", "calendar", "acme", "alice")


def context(**changes: str) -> dict[str, str]:
    base = {
        "fleetid:purpose": "connection-tokens",
        "fleetid:fleet": FLEET,
        "fleetid:connection": "calendar",
        "fleetid:tenant": "acme",
        "fleetid:user": "alice",
    }
    return base | changes


def test_round_trip(kit: EnvelopeKit) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"refresh-token-value", context())

    assert envelope.open(sealed, context()) == b"refresh-token-value"
    assert b"refresh-token-value" not in sealed.ciphertext
    assert sealed.key_id == envelope.current_key_id()


def test_a_sealed_record_survives_its_json_form(kit: EnvelopeKit) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"payload", context())

    stored = json.loads(json.dumps(sealed.to_json()))

    assert kit.envelope().open(Sealed.from_json(stored), context()) == b"payload"


def test_each_record_has_its_own_data_key(kit: EnvelopeKit) -> None:
    envelope = kit.envelope()

    first, second = envelope.seal(b"same", context()), envelope.seal(b"same", context())

    assert first.wrapped_key != second.wrapped_key
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "moved",
    [
        {"fleetid:user": "mallory"},
        {"fleetid:tenant": "globex"},
        {"fleetid:connection": "crm"},
        {"fleetid:fleet": "other-fleet"},
        {"fleetid:purpose": "connection-api-key"},
    ],
    ids=["user", "tenant", "connection", "fleet", "purpose"],
)
def test_another_context_does_not_open(kit: EnvelopeKit, moved: dict[str, str]) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"secret", context())

    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, context(**moved))


def test_a_context_with_a_member_missing_or_added_does_not_open(kit: EnvelopeKit) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"secret", context())
    fewer = context()
    del fewer["fleetid:user"]

    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, fewer)
    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, context(extra="member"))


@pytest.mark.parametrize("part", ["ciphertext", "nonce", "wrapped_key"])
def test_a_changed_byte_does_not_open(kit: EnvelopeKit, part: str) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"secret", context())
    original: bytes = getattr(sealed, part)
    # The last byte: the tag, in every format (a KMS blob starts with its key id).
    changed = original[:-1] + bytes([original[-1] ^ 1])

    with pytest.raises(DecryptionFailed):
        envelope.open(dataclasses.replace(sealed, **{part: changed}), context())


def test_the_data_key_does_not_open_the_record_under_other_associated_data(
    kit: EnvelopeKit,
) -> None:
    """The AEAD associated data is the context; the same ciphertext under another context's
    associated data is refused by AES-GCM itself, not only by the provider's unwrap."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, b"secret", associated_data(context()))

    assert associated_data(context()) != associated_data(context(**{"fleetid:user": "bob"}))
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(nonce, ciphertext, associated_data(context(**{"fleetid:user": "bob"})))


def test_a_record_naming_an_unknown_master_key_does_not_open(kit: EnvelopeKit) -> None:
    envelope = kit.envelope()
    sealed = envelope.seal(b"secret", context())

    with pytest.raises(DecryptionFailed, match="does not"):
        envelope.open(dataclasses.replace(sealed, key_id=f"{sealed.key_id}-other"), context())


def test_rotation_rewraps_without_touching_the_ciphertext(kit: EnvelopeKit) -> None:
    old = kit.envelope()
    sealed = old.seal(b"secret", context())
    old_key = sealed.key_id

    new = kit.rotate()

    assert new.current_key_id() != old_key
    assert new.key_ids() == (new.current_key_id(), old_key)
    assert new.open(sealed, context()) == b"secret"
    assert new.needs_rewrap(sealed)

    rewrapped = new.rewrap(sealed, context())

    assert rewrapped.key_id == new.current_key_id()
    assert rewrapped.ciphertext == sealed.ciphertext
    assert not new.needs_rewrap(rewrapped)
    assert new.rewrap(rewrapped, context()) is rewrapped
    assert new.open(rewrapped, context()) == b"secret"


def test_rewrap_keeps_the_binding(kit: EnvelopeKit) -> None:
    old = kit.envelope()
    sealed = old.seal(b"secret", context())
    new = kit.rotate()

    with pytest.raises(DecryptionFailed):
        new.rewrap(sealed, context(**{"fleetid:user": "mallory"}))

    rewrapped = new.rewrap(sealed, context())
    with pytest.raises(DecryptionFailed):
        new.open(rewrapped, context(**{"fleetid:user": "mallory"}))


def test_a_retired_master_key_opens_nothing(kit: EnvelopeKit) -> None:
    old = kit.envelope()
    kept = old.seal(b"re-wrapped", context())
    left = old.seal(b"left behind", context())
    old_key = kept.key_id
    new = kit.rotate()
    rewrapped = new.rewrap(kept, context())

    retired = kit.retire(old_key)

    assert retired.open(rewrapped, context()) == b"re-wrapped"
    with pytest.raises(DecryptionFailed):
        retired.open(left, context())


# Records in the store: the binding decides both the row and the context.


@pytest.fixture
def records(kit: EnvelopeKit, store: SQLiteStore, clock: MovableClock) -> VaultRecords:
    return VaultRecords(store, kit.envelope(), fleet=FLEET, clock=clock)


def tokens(user: str = "alice") -> dict[str, Any]:
    return {"access_token": f"at-{user}", "refresh_token": f"rt-{user}", "expires_at": 1}


@pytest.mark.parametrize(
    "target",
    [
        Binding("oauth", "calendar", "acme", "mallory"),
        Binding("oauth", "calendar", "globex", "alice"),
        Binding("oauth", "crm", "acme", "alice"),
    ],
    ids=["user", "tenant", "connection"],
)
@pytest.mark.parametrize("edit_binding", [False, True], ids=["as-is", "binding-edited"])
def test_a_record_copied_to_another_row_does_not_open(
    records: VaultRecords, store: SQLiteStore, target: Binding, edit_binding: bool
) -> None:
    """Moved as it is, the clear-text binding gives it away; with the binding edited to
    match its new row, the encryption context still does."""
    assert records.create(ALICE, tokens())
    stolen = dict(store.get(NAMESPACE, ALICE.key).value)  # type: ignore[union-attr]
    if edit_binding:
        stolen["binding"] = target.to_json()
    assert store.create(NAMESPACE, target.key, stolen, expires_at=None)

    with pytest.raises(DecryptionFailed):
        record = records.read(target)
        assert record is not None
        records.open(record)

    original = records.read(ALICE)
    assert original is not None
    assert records.open(original) == tokens()


def test_records_of_another_fleet_do_not_open(
    kit: EnvelopeKit, store: SQLiteStore, records: VaultRecords
) -> None:
    assert records.create(ALICE, tokens())
    other_fleet = VaultRecords(store, kit.envelope(), fleet="other-fleet")

    record = other_fleet.read(ALICE)
    assert record is not None
    with pytest.raises(DecryptionFailed):
        other_fleet.open(record)


def test_the_store_holds_no_credential_in_the_clear(
    records: VaultRecords, tmp_path: Path, store: SQLiteStore
) -> None:
    records.create(ALICE, {"access_token": "plain-access-0123456789", "key": "plain-key-012345"})
    store.close()

    raw = b"".join(path.read_bytes() for path in tmp_path.glob("store.sqlite3*"))
    assert b"plain-access-0123456789" not in raw
    assert b"plain-key-012345" not in raw


def test_the_rotation_walk_rewraps_every_record(
    kit: EnvelopeKit, store: SQLiteStore, clock: MovableClock
) -> None:
    before = VaultRecords(store, kit.envelope(), fleet=FLEET, clock=clock)
    bindings = [Binding("oauth", "calendar", "acme", f"user-{n}") for n in range(12)]
    bindings.append(Binding("api_key", "reporting"))
    for binding in bindings:
        assert before.create(binding, tokens(binding.user or "key"))

    old_key = before.envelope.current_key_id()
    after = VaultRecords(store, kit.rotate(), fleet=FLEET, clock=clock)
    report = after.rewrap_all()

    assert (report.examined, report.rewrapped, report.current) == (13, 13, 0)
    assert report.complete and not report.failed
    assert after.rewrap_all().current == 13

    retired = VaultRecords(store, kit.retire(old_key), fleet=FLEET)
    for binding in bindings:
        record = retired.read(binding)
        assert record is not None
        assert retired.open(record) == tokens(binding.user or "key")


def test_the_walk_leaves_a_record_whose_refresh_is_in_flight(
    kit: EnvelopeKit, store: SQLiteStore, clock: MovableClock
) -> None:
    before = VaultRecords(store, kit.envelope(), fleet=FLEET, clock=clock)
    before.create(ALICE, tokens())
    record = before.read(ALICE)
    assert record is not None
    assert before.replace(record, lease=Lease("another-fetch", int(clock()) + 30))

    after = VaultRecords(store, kit.rotate(), fleet=FLEET, clock=clock)
    report = after.rewrap_all()

    assert (report.leased, report.rewrapped) == (1, 0)
    assert not report.complete

    clock.advance(31)
    assert after.rewrap_all().rewrapped == 1


def test_the_walk_reports_a_record_it_cannot_open(
    kit: EnvelopeKit, store: SQLiteStore, records: VaultRecords
) -> None:
    records.create(ALICE, tokens())
    bob = Binding("oauth", "calendar", "acme", "bob")
    records.create(bob, tokens("bob"))
    # Alice's record is overwritten with Bob's ciphertext under Alice's binding.
    forged = dict(store.get(NAMESPACE, bob.key).value)  # type: ignore[union-attr]
    forged["binding"] = ALICE.to_json()
    stored = store.get(NAMESPACE, ALICE.key)
    assert stored is not None
    store.replace(NAMESPACE, ALICE.key, forged, version=stored.version, expires_at=None)

    report = VaultRecords(store, kit.rotate(), fleet=FLEET).rewrap_all()

    assert report.rewrapped == 1
    assert [failure.code for failure in report.failed] == ["decryption_failed"]


# LocalEnvelope on disk.


def test_the_local_key_file_is_created_owner_only_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vault.key"
    envelope = LocalEnvelope(path)
    assert not path.exists()

    envelope.seal(b"x", context())

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert len(document["keys"]) == 1
    assert len(__import__("base64").b64decode(document["keys"][0]["key"])) == 32


def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    LocalEnvelope(path).seal(b"x", context())
    path.chmod(0o644)

    with pytest.raises(SecretExposureRisk, match="0600"):
        LocalEnvelope(path).seal(b"x", context())


def test_concurrent_first_uses_make_one_master_key(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    envelopes = [LocalEnvelope(path) for _ in range(8)]
    barrier = threading.Barrier(len(envelopes))
    key_ids: list[str] = []

    def first_use(envelope: LocalEnvelope) -> None:
        barrier.wait()
        key_ids.append(envelope.current_key_id())

    threads = [threading.Thread(target=first_use, args=(e,)) for e in envelopes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(key_ids)) == 1
    assert len(json.loads(path.read_text())["keys"]) == 1


def test_another_process_sees_a_rotation_without_restarting(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    worker = LocalEnvelope(path)
    old = worker.seal(b"old", context())
    operator = LocalEnvelope(path)

    new_key = operator.rotate_master_key()
    rewrapped = operator.rewrap(old, context())

    # The worker loaded the file before the rotation: it still opens the re-wrapped record
    # and seals new ones under the new key.
    assert worker.open(rewrapped, context()) == b"old"
    assert worker.seal(b"new", context()).key_id == new_key


def test_the_current_master_key_cannot_be_retired(tmp_path: Path) -> None:
    envelope = LocalEnvelope(tmp_path / "vault.key")

    with pytest.raises(ValueError, match="rotate first"):
        envelope.retire_master_key(envelope.current_key_id())


# KmsEnvelope specifics.


def test_kms_calls_carrying_a_data_key_are_refused_while_botocore_logs_bodies(
    kms: Any,
) -> None:
    kit = KmsKit(kms)
    envelope = kit.envelope()
    sealed = envelope.seal(b"x", context())
    logger = logging.getLogger("botocore.endpoint")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with pytest.raises(SecretExposureRisk, match="botocore"):
            envelope.seal(b"x", context())
        with pytest.raises(SecretExposureRisk):
            envelope.open(sealed, context())
    finally:
        logger.setLevel(previous)


def test_a_kms_failure_becomes_an_envelope_error(kms: Any) -> None:
    kit = KmsKit(kms)
    sealed = kit.envelope().seal(b"x", context())
    kms = boto3.client("kms", region_name="us-east-1")
    envelope = KmsEnvelope(kms, kit.keys[-1])
    envelope.current_key_id()
    with Stubber(kms) as stubber:
        stubber.add_client_error("decrypt", service_error_code="ThrottlingException")

        with pytest.raises(EnvelopeError) as raised:
            envelope.open(sealed, context())

    assert raised.value.aws_code == "ThrottlingException"
    assert isinstance(raised.value.__cause__, ClientError)


def test_a_kms_alias_is_resolved_to_its_key(kms: Any) -> None:
    kit = KmsKit(kms)
    kit.kms.create_alias(AliasName="alias/fleetid-vault", TargetKeyId=kit.keys[-1])

    envelope = KmsEnvelope(kit.kms, "alias/fleetid-vault")

    assert envelope.current_key_id() == kit.keys[-1]
    assert envelope.seal(b"x", context()).key_id == kit.keys[-1]


def test_a_record_naming_a_foreign_kms_key_is_refused_before_kms_is_asked(
    kms: Any,
) -> None:
    kit = KmsKit(kms)
    foreign = kit.kms.create_key(Description="someone else's")["KeyMetadata"]["Arn"]
    sealed = KmsEnvelope(kit.kms, foreign).seal(b"forged tokens", context())

    with pytest.raises(DecryptionFailed, match="does not accept"):
        kit.envelope().open(sealed, context())


def test_the_providers_are_not_interchangeable(tmp_path: Path) -> None:
    """A record sealed by one vault's local key is refused by another's."""
    sealed = LocalKit(tmp_path / "a.key").envelope().seal(b"x", context())

    with pytest.raises(DecryptionFailed):
        LocalKit(tmp_path / "b.key").envelope().open(sealed, context())
