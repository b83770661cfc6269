"""`KmsWrappedKeys`: private keys wrapped by AWS KMS at rest, held in memory to sign.

The default custody on AWS. The server generates each private key itself and encrypts its
PKCS#8 DER at once with KMS `Encrypt`; only that ciphertext is stored, beside the public key,
state and timestamps. A cold start calls KMS `Decrypt` once per key that can sign and keeps
the keys in memory, so a token costs no KMS call and issuance is not bound by the KMS
asymmetric request quota. (KMS `GenerateDataKeyPair` would do the first two steps in one
call; generating locally keeps the custody testable with moto, which lacks that operation.)

Each ciphertext is bound by its encryption context to its purpose, its fleet and its `kid`.
KMS refuses to decrypt it under any other context, so a stored key can't be moved to another
fleet, or to another slot in the ring, without failing to load.

NOTE: the plaintext key exists only in this process's memory. It is never stored, logged or
put in an exception message, and KMS calls that carry it are refused while botocore's own
DEBUG logging, which records request and response bodies, is on.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from botocore.exceptions import ClientError, ParamValidationError
from cryptography.hazmat.primitives.serialization import Encoding

from fleetid.aws import AWS_ERRORS, aws_error_code, body_logger_at_debug
from fleetid.keys.algorithms import Algorithm, PrivateKey
from fleetid.keys.custody import Clock
from fleetid.keys.errors import KeyExposureRisk, KeyRingInvalid, KeyUnwrapFailed, KmsFailure
from fleetid.keys.persistence import RingPersistence
from fleetid.keys.ring import KeyRecord
from fleetid.keys.ring_custody import RingCustody, decode_pkcs8, encode_pkcs8

__all__ = ["KmsWrappedKeys", "refuse_if_kms_bodies_are_logged"]

logger = logging.getLogger(__name__)

WRAPPED_FORMAT: Final = "kms-encrypted-pkcs8-der"

# Decrypt errors that mean "this ciphertext does not open under this key and context", as
# opposed to KMS being unreachable, throttled or denied.
UNWRAP_REFUSED: Final = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


class KmsWrappedKeys(RingCustody):
    """A key ring whose private keys are stored encrypted under the KMS key `kms_key_id`.

    `kms_client` is a boto3 KMS client; `fleet` names the fleet the keys sign for and is
    bound into every encryption context, so it must stay the same for the ring's lifetime.
    """

    def __init__(
        self,
        kms_client: Any,
        kms_key_id: str,
        persistence: RingPersistence,
        *,
        fleet: str,
        algorithm: Algorithm = "RS256",
        clock: Clock = time.time,
    ) -> None:
        if not fleet:
            raise ValueError("fleet names the fleet the keys sign for; it can't be empty")

        super().__init__(persistence, algorithm=algorithm, clock=clock)
        self._kms = kms_client
        self._kms_key_id = kms_key_id
        self._fleet = fleet

    def encryption_context(self, kid: str) -> dict[str, str]:
        """The KMS encryption context that binds the private key `kid` to this fleet."""
        return {"fleetid:purpose": "signing-key", "fleetid:fleet": self._fleet, "fleetid:kid": kid}

    def _store_private_key(self, record: KeyRecord, key: PrivateKey) -> dict[str, Any]:
        context = self.encryption_context(record.kid)
        refuse_if_kms_bodies_are_logged()

        try:
            response = self._kms.encrypt(
                KeyId=self._kms_key_id,
                Plaintext=encode_pkcs8(key, Encoding.DER),
                EncryptionContext=context,
            )
        except ParamValidationError:
            # botocore quotes the offending parameter's value in this error, and the value
            # may be the plaintext key; so neither the message nor the error travels on.
            raise KmsFailure("Encrypt", self._kms_key_id, "ParamValidationError") from None
        except AWS_ERRORS as exc:
            raise KmsFailure("Encrypt", self._kms_key_id, aws_error_code(exc)) from exc

        return {
            "format": WRAPPED_FORMAT,
            "ciphertext": base64.b64encode(response["CiphertextBlob"]).decode("ascii"),
            "encryption_context": context,
        }

    def _load_private_key(self, record: KeyRecord, slot: Mapping[str, Any]) -> PrivateKey:
        ciphertext = self._ciphertext(record, slot)
        context = self.encryption_context(record.kid)

        # The stored context is not used to decrypt, only compared with the one this custody
        # derives: a mismatch names the likely cause, where KMS would only say "invalid".
        if slot.get("encryption_context") != context:
            raise KeyRingInvalid(
                f"key {record.kid!r} is stored with the encryption context of another fleet "
                f"or kid; this custody serves fleet {self._fleet!r}"
            )

        refuse_if_kms_bodies_are_logged()
        try:
            response = self._kms.decrypt(
                KeyId=self._kms_key_id, CiphertextBlob=ciphertext, EncryptionContext=context
            )
        except ClientError as exc:
            code = aws_error_code(exc)
            if code in UNWRAP_REFUSED:
                raise KeyUnwrapFailed(record.kid, self._kms_key_id, code) from exc

            raise KmsFailure("Decrypt", self._kms_key_id, code) from exc
        except AWS_ERRORS as exc:
            raise KmsFailure("Decrypt", self._kms_key_id, aws_error_code(exc)) from exc

        logger.debug("signing key %s unwrapped", record.kid)

        return decode_pkcs8(record.kid, response["Plaintext"], Encoding.DER)

    def _ciphertext(self, record: KeyRecord, slot: Mapping[str, Any]) -> bytes:
        encoded = slot.get("ciphertext")
        if slot.get("format") != WRAPPED_FORMAT or not isinstance(encoded, str):
            raise KeyRingInvalid(
                f"key {record.kid!r} is not stored as {WRAPPED_FORMAT!r}; the ring was "
                "written by another kind of key custody"
            )

        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise KeyRingInvalid(f"the wrapped key {record.kid!r} is not base64") from exc


def refuse_if_kms_bodies_are_logged() -> None:
    """Raise `KeyExposureRisk` if botocore would log a KMS call that carries a private key."""
    name = body_logger_at_debug()
    if name is not None:
        raise KeyExposureRisk(
            f"logger {name!r} is at DEBUG, where botocore logs KMS request and response "
            "bodies, and these would hold a private key; set it to INFO or above"
        )
