"""State the deployment keeps in the store: records the Pulumi program writes, the signing key
ring, and provisioned secrets, each read back the way the server reads it (DynamoDB in moto).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fleetid.deploy.records import (
    CLIENT_SECRET_NAMESPACE,
    PROVISIONED_SECRET_NAMESPACE,
    provisioned_secret_context,
    record_item,
    record_item_json,
)
from fleetid.deploy.ring import RING_NAMESPACE, StoreRingPersistence
from fleetid.deploy.secrets import CIPHERTEXT_FORMAT, ProvisionedSecretError, ProvisionedSecrets
from fleetid.deploy.settings import LambdaSettings, SettingsError
from fleetid.fleet.model import SecretRef
from fleetid.keys import KeyRingConflict, KmsWrappedKeys
from fleetid.server.clients import StoredClientSecrets
from fleetid.store import DynamoDBStore, SQLiteStore

TABLE = "fleetid-state"


@dataclass
class Aws:
    dynamodb: Any
    kms: Any
    key_id: str
    store: DynamoDBStore


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    with mock_aws():
        dynamodb, kms = boto3.client("dynamodb"), boto3.client("kms")
        DynamoDBStore.create_table(dynamodb, TABLE)
        key_id = kms.create_key()["KeyMetadata"]["Arn"]
        yield Aws(dynamodb, kms, key_id, DynamoDBStore(TABLE, client=dynamodb))


# --- records written by the Pulumi program ---------------------------------------------------


def test_a_record_item_reads_back_through_the_store(aws: Aws) -> None:
    item = record_item(CLIENT_SECRET_NAMESPACE, "crm-reconciler", {"sha256": "ab" * 32})
    aws.dynamodb.put_item(TableName=TABLE, Item=item)

    record = aws.store.get(CLIENT_SECRET_NAMESPACE, "crm-reconciler")

    assert record is not None
    assert record.value == {"sha256": "ab" * 32}
    assert record.version == 1
    assert record.expires_at is None
    assert StoredClientSecrets(aws.store).digest("crm-reconciler") == "ab" * 32


def test_the_namespace_is_the_one_the_server_reads() -> None:
    assert StoredClientSecrets.namespace == CLIENT_SECRET_NAMESPACE


def test_the_item_text_is_stable() -> None:
    first = record_item_json("client_secret", "a", {"sha256": "1", "z": 2})

    assert first == record_item_json("client_secret", "a", {"z": 2, "sha256": "1"})
    assert json.loads(first)["pk"] == {"S": "client_secret#a"}


# --- the signing key ring ---------------------------------------------------------------------


def test_the_first_ring_lands_once(tmp_path: Path) -> None:
    persistence = StoreRingPersistence(SQLiteStore(tmp_path / "store.sqlite3"), "fleet/RS256")

    assert persistence.load() is None
    assert persistence.save({"keys": [1]}, expected_version=None) == "1"
    with pytest.raises(KeyRingConflict):
        persistence.save({"keys": [2]}, expected_version=None)

    stored = persistence.load()
    assert stored is not None
    assert (stored.document, stored.version) == ({"keys": [1]}, "1")


def test_a_rotation_lands_only_on_the_ring_it_read(tmp_path: Path) -> None:
    persistence = StoreRingPersistence(SQLiteStore(tmp_path / "store.sqlite3"), "fleet/RS256")
    persistence.save({"keys": [1]}, expected_version=None)

    assert persistence.save({"keys": [2]}, expected_version="1") == "2"
    with pytest.raises(KeyRingConflict):
        persistence.save({"keys": [3]}, expected_version="1")


def test_two_cold_starts_on_an_empty_table_share_one_ring(aws: Aws) -> None:
    def custody() -> KmsWrappedKeys:
        persistence = StoreRingPersistence(aws.store, "race/RS256")
        return KmsWrappedKeys(aws.kms, aws.key_id, persistence, fleet="race")

    first, second = custody(), custody()
    # The second builds its own ring, loses the conditional write, and adopts the first's.
    first_keys = first.jwks()["keys"]
    second_keys = second.jwks()["keys"]

    assert first_keys == second_keys
    assert aws.store.get(RING_NAMESPACE, "race/RS256") is not None


# --- provisioned secrets ----------------------------------------------------------------------


def provision(aws: Aws, reference: str, value: str, *, fleet: str = "acme-agents") -> None:
    """What the Vault component does: KMS Encrypt under the context, then the item."""
    ciphertext = aws.kms.encrypt(
        KeyId=aws.key_id,
        Plaintext=value.encode(),
        EncryptionContext=provisioned_secret_context(fleet, reference),
    )["CiphertextBlob"]
    aws.dynamodb.put_item(
        TableName=TABLE,
        Item=record_item(
            PROVISIONED_SECRET_NAMESPACE,
            reference,
            {
                "format": CIPHERTEXT_FORMAT,
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "key_id": aws.key_id,
            },
        ),
    )


def test_a_provisioned_secret_resolves(aws: Aws) -> None:
    provision(aws, "reporting-api-key", "rk_live_123")
    resolve = ProvisionedSecrets(aws.store, aws.kms, fleet="acme-agents")

    assert resolve(SecretRef(config="reporting-api-key")) == "rk_live_123"
    assert resolve(SecretRef(config="never-provisioned")) is None
    assert resolve(SecretRef(env="REPORTING_API_KEY")) is None


def test_a_secret_provisioned_for_another_fleet_does_not_open(aws: Aws) -> None:
    provision(aws, "moved-key", "value", fleet="another-fleet")
    resolve = ProvisionedSecrets(aws.store, aws.kms, fleet="acme-agents")

    with pytest.raises(ProvisionedSecretError, match="moved-key") as raised:
        resolve(SecretRef(config="moved-key"))
    assert "value" not in str(raised.value)


# --- the function's settings ------------------------------------------------------------------

BASE = {"FLEETID_TABLE": "t", "FLEETID_BUCKET": "b", "FLEETID_FLEET": "f"}


def test_settings_default_to_kms_wrapped() -> None:
    chosen = LambdaSettings.from_environment({**BASE, "FLEETID_WRAPPING_KEY": "k"})

    assert chosen.custody == "kms-wrapped"
    assert chosen.issuer is None
    assert chosen.revision_check_seconds == 30


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"FLEETID_BUCKET": "b", "FLEETID_FLEET": "f"}, "FLEETID_TABLE"),
        (BASE, "FLEETID_WRAPPING_KEY"),
        ({**BASE, "FLEETID_KEY_CUSTODY": "kms-sign"}, "FLEETID_SIGNING_KEYS"),
        ({**BASE, "FLEETID_KEY_CUSTODY": "local"}, "FLEETID_KEY_CUSTODY"),
        (
            {**BASE, "FLEETID_KEY_CUSTODY": "kms-sign", "FLEETID_SIGNING_KEYS": '{"HS256": "k"}'},
            "FLEETID_SIGNING_KEYS",
        ),
        (
            {**BASE, "FLEETID_WRAPPING_KEY": "k", "FLEETID_REVISION_CHECK_SECONDS": "-1"},
            "FLEETID_REVISION_CHECK_SECONDS",
        ),
    ],
)
def test_a_bad_setting_names_its_variable(environment: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        LambdaSettings.from_environment(environment)
