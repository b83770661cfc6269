"""Key custody and JWKS: where fleetid's token-signing keys live, and how they are published.

Access tokens are RFC 9068 JWTs signed RS256 (the default) or ES256. The server signs them
with `encode_jwt(custody, claims)` and serves `custody.jwks()`; which custody holds the keys
is a deployment choice, and each passes the same contract tests:

- `LocalKeyFile`: a key ring in an owner-only JSON file, for `fleetid serve` on one machine;
- `KmsWrappedKeys`: private keys stored only encrypted under a KMS key, decrypted once per
  cold start and held in memory; the default on AWS, since signing costs no KMS request;
- `KmsSigner`: KMS `Sign` for every token, for teams that require the key never to leave KMS.

The JWKS publishes a key before it signs and keeps it until the tokens it signed expire, so a
rotation never leaves a verifier holding a token it cannot check.
"""

from fleetid.keys.algorithms import ALGORITHMS, Algorithm
from fleetid.keys.custody import Clock, KeyCustody, Signature, encode_jwt, encode_jwt_async
from fleetid.keys.errors import (
    KeyCustodyError,
    KeyExposureRisk,
    KeyRingConflict,
    KeyRingInvalid,
    KeyUnwrapFailed,
    KmsFailure,
    RotationNotSupported,
    SigningKeyChanged,
    UnsupportedAlgorithm,
)
from fleetid.keys.kms_sign import KmsKeyRef, KmsSigner
from fleetid.keys.kms_wrapped import KmsWrappedKeys, refuse_if_kms_bodies_are_logged
from fleetid.keys.local import LocalKeyFile
from fleetid.keys.persistence import (
    InMemoryPersistence,
    JsonFilePersistence,
    RingPersistence,
    StoredRing,
)
from fleetid.keys.ring import (
    JWKS_MAX_AGE,
    JsonWebKeySet,
    KeyRecord,
    KeyRing,
    KeyState,
    RotationTooSoon,
)
from fleetid.keys.ring_custody import RingCustody

__all__ = [
    "ALGORITHMS",
    "JWKS_MAX_AGE",
    "Algorithm",
    "Clock",
    "InMemoryPersistence",
    "JsonFilePersistence",
    "JsonWebKeySet",
    "KeyCustody",
    "KeyCustodyError",
    "KeyExposureRisk",
    "KeyRecord",
    "KeyRing",
    "KeyRingConflict",
    "KeyRingInvalid",
    "KeyState",
    "KeyUnwrapFailed",
    "KmsFailure",
    "KmsKeyRef",
    "KmsSigner",
    "KmsWrappedKeys",
    "LocalKeyFile",
    "RingCustody",
    "RingPersistence",
    "RotationNotSupported",
    "RotationTooSoon",
    "Signature",
    "SigningKeyChanged",
    "StoredRing",
    "UnsupportedAlgorithm",
    "encode_jwt",
    "encode_jwt_async",
    "refuse_if_kms_bodies_are_logged",
]
