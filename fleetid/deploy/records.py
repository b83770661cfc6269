"""Store records that the Pulumi program writes into the server's DynamoDB table.

Some state has to be in the table before the server first reads it: the SHA-256 digest of
each agent's client secret (``client_secret/<agent>``, read by `StoredClientSecrets`), and
each secret that fleet.yaml names as a Pulumi config secret (a connection's API key or client
secret), encrypted under the vault's KMS key (``provisioned_secret/<config key>``, read by
`fleetid.deploy.secrets.ProvisionedSecrets`). The
program writes them as ``aws.dynamodb.TableItem`` resources, which take a whole item in the
DynamoDB attribute-value format; this module builds that item exactly as `DynamoDBStore`
would write the record (version 1, no expiry), so that `DynamoDBStore.get` reads it back.
A test holds the two to the same layout against moto.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from fleetid.store.base import encode_value, validate_address
from fleetid.store.dynamodb import HASH_KEY, RANGE_KEY

__all__ = [
    "CLIENT_SECRET_NAMESPACE",
    "PROVISIONED_SECRET_NAMESPACE",
    "provisioned_secret_context",
    "record_item",
    "record_item_json",
]

# `fleetid.server.clients.StoredClientSecrets.namespace`; repeated so that this module stays
# free of the server's imports, and held equal to it by a test.
CLIENT_SECRET_NAMESPACE: Final = "client_secret"
PROVISIONED_SECRET_NAMESPACE: Final = "provisioned_secret"

# The sort key of every record item, as `DynamoDBStore` lays records out.
_RECORD_SORT_KEY: Final = "record"


def record_item(namespace: str, key: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """The DynamoDB item of record (`namespace`, `key`) holding `value`, version 1."""
    validate_address(namespace, key)
    # Checked as the store checks a value, then written with sorted keys, so that the same
    # record is always the same item and a preview shows no change where there is none.
    encoded = json.dumps(json.loads(encode_value(value)), sort_keys=True, separators=(",", ":"))

    return {
        HASH_KEY: {"S": f"{namespace}#{key}"},
        RANGE_KEY: {"S": _RECORD_SORT_KEY},
        "value": {"S": encoded},
        "version": {"N": "1"},
    }


def record_item_json(namespace: str, key: str, value: Mapping[str, Any]) -> str:
    """`record_item` as the JSON text ``aws.dynamodb.TableItem`` takes, always the same."""
    return json.dumps(record_item(namespace, key, value), sort_keys=True, separators=(",", ":"))


def provisioned_secret_context(fleet: str, reference: str) -> dict[str, str]:
    """The KMS encryption context of the secret a config reference names.

    KMS decrypts the ciphertext only under this fleet and this reference, so a ciphertext
    copied onto another reference's record does not open.
    """
    return {
        "fleetid:purpose": "provisioned-secret",
        "fleetid:fleet": fleet,
        "fleetid:config": reference,
    }
