"""Errors raised by key custody.

Every failure of a custody is a `KeyCustodyError`, so the server can catch one class where a
token is being issued and answer with a server error instead of a half-built token. The tree:

    KeyCustodyError
     ├── UnsupportedAlgorithm    an algorithm or key type other than RS256 / ES256
     ├── KeyRingInvalid          a key ring, stored or described, breaks the ring's rules
     ├── KeyRingConflict         another writer saved the ring first (compare-and-set lost)
     ├── KeyExposureRisk         refused: key material would be readable by others or logged
     ├── SigningKeyChanged       the active key changed twice while one token was being signed
     ├── RotationNotSupported    this custody cannot make keys; provisioning rotates them
     └── KmsFailure              an AWS KMS call failed; the botocore error is the __cause__
          └── KeyUnwrapFailed    KMS refused to decrypt a wrapped private key

Messages name keys by `kid` (a public key thumbprint) or by KMS key id, never by anything
derived from a private key, so an error can be logged and shown as it is.
"""

from __future__ import annotations

__all__ = [
    "KeyCustodyError",
    "KeyExposureRisk",
    "KeyRingConflict",
    "KeyRingInvalid",
    "KeyUnwrapFailed",
    "KmsFailure",
    "RotationNotSupported",
    "SigningKeyChanged",
    "UnsupportedAlgorithm",
]


class KeyCustodyError(Exception):
    """A signing key could not be created, loaded, used or published."""


class UnsupportedAlgorithm(KeyCustodyError):
    """The algorithm or key type is not one fleetid signs with (RS256, ES256)."""


class KeyRingInvalid(KeyCustodyError):
    """A key ring document, or a list of key references, breaks the ring's rules."""


class KeyRingConflict(KeyCustodyError):
    """The stored key ring changed since it was loaded; the save was not made."""

    def __init__(self) -> None:
        super().__init__("the stored key ring was changed by another writer since it was loaded")


class KeyExposureRisk(KeyCustodyError):
    """Key material would become readable by others or be written to a log; refused."""


class SigningKeyChanged(KeyCustodyError):
    """The active key kept changing while a token was being signed."""

    def __init__(self) -> None:
        super().__init__("the active signing key changed twice while one token was being signed")


class RotationNotSupported(KeyCustodyError):
    """This custody does not create keys, so it cannot rotate them itself."""


class KmsFailure(KeyCustodyError):
    """An AWS KMS call failed; `code` is the AWS error code or the botocore error's name."""

    def __init__(self, operation: str, key_id: str, code: str, *, detail: str = "") -> None:
        message = f"KMS {operation} with key {key_id!r} failed: {code}"
        super().__init__(f"{message}; {detail}" if detail else message)
        self.operation = operation
        self.key_id = key_id
        self.code = code


class KeyUnwrapFailed(KmsFailure):
    """KMS would not decrypt a wrapped private key: wrong KMS key, context or ciphertext."""

    def __init__(self, kid: str, key_id: str, code: str) -> None:
        detail = (
            f"signing key {kid!r} could not be unwrapped; its ciphertext, its encryption "
            "context or the KMS key does not match"
        )
        super().__init__("Decrypt", key_id, code, detail=detail)
        self.kid = kid
