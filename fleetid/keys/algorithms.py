"""The two JWS algorithms fleetid signs with, RS256 and ES256 (RFC 7518 §3.3 and §3.4).

RS256 is the default because it is the only algorithm AgentCore's inbound JWT authorizer is
known to accept; ES256 is offered for resources that want shorter tokens and faster signing.
This module owns what differs between the two: which key to generate, how to sign, and the
shape of the signature in a JWS. Everything else in `fleetid.keys` is algorithm-neutral.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fleetid.keys.errors import UnsupportedAlgorithm

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "PrivateKey",
    "PublicKey",
    "algorithm_for_key",
    "ecdsa_der_to_jws",
    "generate_private_key",
    "parse_algorithm",
    "sign_with_private_key",
]

Algorithm: TypeAlias = Literal["RS256", "ES256"]
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

ALGORITHMS: Final[tuple[Algorithm, ...]] = ("RS256", "ES256")

# RFC 7518 §3.3: "A key of size 2048 bits or larger MUST be used with these algorithms."
RSA_KEY_SIZE: Final = 2048
RSA_PUBLIC_EXPONENT: Final = 65537

# An ES256 signature is R and S, two P-256 scalars, each written out in full (RFC 7518 §3.4).
P256_COORDINATE_BYTES: Final = 32


def parse_algorithm(value: object) -> Algorithm:
    """Return `value` as an `Algorithm`, or raise `UnsupportedAlgorithm`."""
    if value == "RS256":
        return "RS256"

    if value == "ES256":
        return "ES256"

    raise UnsupportedAlgorithm(f"signing algorithm {value!r} is not supported; use RS256 or ES256")


def generate_private_key(algorithm: Algorithm) -> PrivateKey:
    """Generate a fresh private key for `algorithm`."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_SIZE)

    return ec.generate_private_key(ec.SECP256R1())


def algorithm_for_key(key: PrivateKey | PublicKey) -> Algorithm:
    """Return the algorithm a key signs with, or raise `UnsupportedAlgorithm` for other keys."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < RSA_KEY_SIZE:
            raise UnsupportedAlgorithm(
                f"RSA keys must have at least {RSA_KEY_SIZE} bits; this one has {key.key_size}"
            )

        return "RS256"

    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"

    raise UnsupportedAlgorithm(f"elliptic curve {key.curve.name} is not supported; use P-256")


def sign_with_private_key(key: PrivateKey, algorithm: Algorithm, signing_input: bytes) -> bytes:
    """Return the JWS signature of `signing_input`, in the form RFC 7518 gives for `algorithm`."""
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UnsupportedAlgorithm("RS256 needs an RSA key")

        return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UnsupportedAlgorithm("ES256 needs a P-256 key")

    return ecdsa_der_to_jws(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))


def ecdsa_der_to_jws(der_signature: bytes) -> bytes:
    """Convert a DER ECDSA signature, as OpenSSL and KMS produce it, to ES256's R || S."""
    r, s = decode_dss_signature(der_signature)

    # RFC 7518 §3.4: "The octet sequence representations MUST NOT be shortened to omit any
    # leading zero octets contained in the values."
    return r.to_bytes(P256_COORDINATE_BYTES, "big") + s.to_bytes(P256_COORDINATE_BYTES, "big")
