"""Secrets that fleet.yaml names as Pulumi config secrets, as the deployed server reads them.

fleet.yaml says where a secret lives, never what it is: ``{config: reporting-api-key}``. The
Pulumi program reads that config secret and encrypts it with KMS ``Encrypt`` under the
vault's key, with `provisioned_secret_context` as the encryption context, then writes only
the ciphertext into the store as ``provisioned_secret/<reference>``. No plaintext reaches the
function's environment, its logs or a stack output.

`ProvisionedSecrets` is the deployed server's resolver of such references (the vault's
`SecretResolver` shape: a reference in, the value or None out). It decrypts on each call;
the vault stores what it needs under its own envelope encryption at start.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from fleetid.deploy.records import PROVISIONED_SECRET_NAMESPACE, provisioned_secret_context
from fleetid.fleet.model import SecretRef
from fleetid.keys import refuse_if_kms_bodies_are_logged
from fleetid.store import Store

__all__ = ["CIPHERTEXT_FORMAT", "ProvisionedSecretError", "ProvisionedSecrets"]

logger = logging.getLogger(__name__)

CIPHERTEXT_FORMAT: Final = "kms-ciphertext"


class ProvisionedSecretError(Exception):
    """A provisioned secret exists but could not be decrypted; the message names only the
    reference and the AWS error code."""


class ProvisionedSecrets:
    """Resolves ``{config: NAME}`` references from the store, decrypting with KMS."""

    def __init__(self, store: Store, kms_client: Any, *, fleet: str) -> None:
        self._store = store
        self._kms = kms_client
        self._fleet = fleet

    def __call__(self, reference: SecretRef) -> str | None:
        """The secret `reference` names, or None when provisioning stored none for it."""
        if reference.config is None:
            return None

        record = self._store.get(PROVISIONED_SECRET_NAMESPACE, reference.config)
        if record is None:
            return None

        encoded = record.value.get("ciphertext")
        if record.value.get("format") != CIPHERTEXT_FORMAT or not isinstance(encoded, str):
            raise ProvisionedSecretError(
                f"provisioned secret {reference.config!r} is not a {CIPHERTEXT_FORMAT} record"
            )

        try:
            ciphertext = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ProvisionedSecretError(
                f"provisioned secret {reference.config!r} is not base64"
            ) from exc

        # The response carries the plaintext, which botocore's DEBUG logging would record.
        refuse_if_kms_bodies_are_logged()
        try:
            response = self._kms.decrypt(
                CiphertextBlob=ciphertext,
                EncryptionContext=provisioned_secret_context(self._fleet, reference.config),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise ProvisionedSecretError(
                f"KMS would not decrypt provisioned secret {reference.config!r} ({code})"
            ) from exc
        except BotoCoreError as exc:
            raise ProvisionedSecretError(
                f"KMS could not be reached for provisioned secret {reference.config!r} "
                f"({type(exc).__name__})"
            ) from exc

        plaintext: bytes = response["Plaintext"]
        logger.debug("provisioned secret %s decrypted", reference.config)

        return plaintext.decode("utf-8")
