"""Envelope encryption: the contract every master-key provider of the vault implements.

Each record is encrypted with AES-256-GCM under a data key of its own. The data key is kept
only wrapped by a master key: a KMS key (`KmsEnvelope`) or a key in the state folder
(`LocalEnvelope`). The provider differs in three steps (make a data key, unwrap it, re-wrap
it under the newest master key); `Envelope` owns the rest and the rules both obey:

- the encryption context names what the record is for (its purpose, fleet, connection, and
  for a user's tokens the tenant and user). It is the KMS encryption context of the data key
  and, encoded canonically, the AEAD associated data of the record, so a record copied onto
  another row fails to decrypt, whichever provider sealed it;
- the context is also sealed inside the plaintext and compared again after decryption;
- each sealed record names the master key that wrapped its data key (`key_id`). A provider
  decrypts under any master key it holds and encrypts under the newest; `rewrap` moves a
  record to the newest without touching its ciphertext, so a master key is rotated while
  every record stays readable.

NOTE: a plaintext data key lives in Python memory for the duration of one call. Python gives
no way to wipe it afterwards; it is never stored, logged or put in an exception.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fleetid.vault.errors import DecryptionFailed, EnvelopeError

__all__ = ["ALGORITHM", "Envelope", "Sealed", "associated_data", "validate_context"]

ALGORITHM: Final = "AES-256-GCM"
DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
# KMS allows 8,192 bytes of encryption context; the same bound holds for the local provider.
MAX_CONTEXT_BYTES: Final = 8192
_AAD_PREFIX: Final = b"fleetid-vault-record/1\n"
_LENGTH_BYTES: Final = 4


@dataclass(frozen=True, slots=True)
class Sealed:
    """One encrypted record: its ciphertext and the wrapped data key that opens it.

    None of these bytes is secret, but they are long and say nothing to a reader of a log, so
    they are left out of the repr.
    """

    key_id: str
    wrapped_key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    algorithm: str = ALGORITHM

    def to_json(self) -> dict[str, str]:
        """The form kept in the store."""
        return {
            "alg": self.algorithm,
            "kid": self.key_id,
            "wrapped_key": _b64(self.wrapped_key),
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }

    @classmethod
    def from_json(cls, value: Any) -> Sealed:
        """Read `to_json`'s form back; anything else is a record that cannot be opened."""
        if not isinstance(value, Mapping) or value.get("alg") != ALGORITHM:
            raise DecryptionFailed(f"the record is not sealed with {ALGORITHM}")

        key_id = value.get("kid")
        if not isinstance(key_id, str) or not key_id:
            raise DecryptionFailed("the record does not name its master key")

        try:
            return cls(
                key_id=key_id,
                wrapped_key=_unb64(value.get("wrapped_key")),
                nonce=_unb64(value.get("nonce")),
                ciphertext=_unb64(value.get("ciphertext")),
            )
        except (TypeError, binascii.Error) as exc:
            raise DecryptionFailed("the sealed record is not well-formed base64") from exc


def validate_context(context: Mapping[str, str]) -> bytes:
    """Refuse a context KMS would refuse, and return its canonical encoding."""
    if not context:
        raise ValueError("an encryption context must name at least the record's purpose")

    for name, value in context.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name or not value:
            raise ValueError("encryption context names and values must be non-empty strings")

    encoded = json.dumps(
        dict(sorted(context.items())), separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise ValueError(f"an encryption context must encode to at most {MAX_CONTEXT_BYTES} bytes")

    return encoded


def associated_data(context: Mapping[str, str]) -> bytes:
    """The AEAD associated data of a record sealed under `context`."""
    return _AAD_PREFIX + validate_context(context)


class Envelope(ABC):
    """AES-256-GCM under a fresh data key per record, the data key wrapped by a master key."""

    @abstractmethod
    def current_key_id(self) -> str:
        """The master key that wraps new data keys."""

    @abstractmethod
    def key_ids(self) -> tuple[str, ...]:
        """Every master key this provider decrypts with, newest first."""

    @abstractmethod
    def _new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, bytes, str]:
        """A fresh 256-bit data key: (plaintext, wrapped under `context`, master key id)."""

    @abstractmethod
    def _unwrap(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext data key; `DecryptionFailed` when it does not open under `context`."""

    @abstractmethod
    def _rewrap(
        self, key_id: str, wrapped: bytes, context: Mapping[str, str]
    ) -> tuple[bytes, str]:
        """The data key wrapped under the newest master key instead: (wrapped, its key id)."""

    def seal(self, plaintext: bytes, context: Mapping[str, str]) -> Sealed:
        """Encrypt `plaintext` for the purpose `context` names."""
        encoded_context = validate_context(context)
        data_key, wrapped, key_id = self._new_data_key(context)
        if len(data_key) != DATA_KEY_BYTES:
            raise EnvelopeError("the master key provider returned a data key of the wrong size")

        # The context travels inside the plaintext too, so it is checked again after the
        # AEAD tag, whatever a provider's own checks were.
        framed = len(encoded_context).to_bytes(_LENGTH_BYTES, "big") + encoded_context + plaintext
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, framed, associated_data(context))

        return Sealed(key_id=key_id, wrapped_key=wrapped, nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: Sealed, context: Mapping[str, str]) -> bytes:
        """Decrypt a record sealed for `context`; `DecryptionFailed` for any other context."""
        expected = validate_context(context)
        data_key = self._unwrap(sealed.key_id, sealed.wrapped_key, context)

        try:
            framed = AESGCM(data_key).decrypt(
                sealed.nonce, sealed.ciphertext, associated_data(context)
            )
        except (InvalidTag, ValueError) as exc:
            raise DecryptionFailed(
                "the record does not decrypt under its binding: it was moved to another row "
                "or changed"
            ) from exc

        length = int.from_bytes(framed[:_LENGTH_BYTES], "big")
        sealed_context = framed[_LENGTH_BYTES : _LENGTH_BYTES + length]
        if not hmac.compare_digest(sealed_context, expected):
            raise DecryptionFailed("the record was sealed for another binding")

        return framed[_LENGTH_BYTES + length :]

    def needs_rewrap(self, sealed: Sealed) -> bool:
        """Whether `sealed` was wrapped by a master key older than the current one."""
        return sealed.key_id != self.current_key_id()

    def rewrap(self, sealed: Sealed, context: Mapping[str, str]) -> Sealed:
        """The same record with its data key wrapped by the current master key.

        The ciphertext is unchanged; only the wrapped key and its key id are replaced.
        """
        validate_context(context)
        if not self.needs_rewrap(sealed):
            return sealed

        wrapped, key_id = self._rewrap(sealed.key_id, sealed.wrapped_key, context)

        return dataclasses.replace(sealed, key_id=key_id, wrapped_key=wrapped)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not a base64 string")

    return base64.b64decode(value, validate=True)
