"""Public keys as JSON Web Keys (RFC 7517, RFC 7518 §6) and their thumbprints (RFC 7638).

A key's `kid` is its RFC 7638 thumbprint: it is derived from the public key alone, so the
same key gets the same `kid` in every process and every custody, and a stored `kid` can be
checked against the key it names instead of being trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fleetid.keys.algorithms import Algorithm, PrivateKey, PublicKey, algorithm_for_key
from fleetid.keys.errors import KeyRingInvalid, UnsupportedAlgorithm

__all__ = [
    "base64url_decode",
    "base64url_encode",
    "jwk_thumbprint",
    "public_jwk",
    "public_key_from_jwk",
]

# RFC 7638 §3.2: the thumbprint covers only the required members of each key type.
THUMBPRINT_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
}

P256_COORDINATE_BYTES: Final = 32


def base64url_encode(octets: bytes) -> str:
    """Base64url without padding, as RFC 7515 §2 defines it for every JOSE value."""
    return base64.urlsafe_b64encode(octets).rstrip(b"=").decode("ascii")


def base64url_decode(text: str) -> bytes:
    """Inverse of `base64url_encode`; raises `ValueError` on anything else."""
    if "=" in text:
        raise ValueError("base64url values in JOSE carry no padding")

    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of `key`: `kty` and the key parameters, nothing else."""
    public: PublicKey
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        public = key.public_key()
    else:
        public = key

    # Refuses RSA keys under 2048 bits and curves other than P-256.
    algorithm_for_key(public)

    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}

    point = public.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        # RFC 7518 §6.2.1.2: "The length of this octet string MUST be the full size of a
        # coordinate for the curve specified in the "crv" parameter."
        "x": base64url_encode(point.x.to_bytes(P256_COORDINATE_BYTES, "big")),
        "y": base64url_encode(point.y.to_bytes(P256_COORDINATE_BYTES, "big")),
    }


def public_key_from_jwk(jwk: Mapping[str, object]) -> tuple[PublicKey, Algorithm]:
    """Rebuild the public key a stored JWK describes, with the algorithm it signs with.

    The JWK must be exactly what `public_jwk` writes, so that a stored key can't smuggle in a
    second, different encoding of itself.
    """
    try:
        key = _public_key(jwk)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyRingInvalid("a stored public key is not a valid RSA or P-256 JWK") from exc

    try:
        algorithm = algorithm_for_key(key)
    except UnsupportedAlgorithm as exc:
        raise KeyRingInvalid(f"a stored public key is not usable: {exc}") from exc

    if public_jwk(key) != dict(jwk):
        raise KeyRingInvalid("a stored public key has members fleetid does not write")

    return key, algorithm


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]

    # RFC 7638 §3: the members are serialised "with no whitespace or line breaks before or
    # after any syntactic elements and with the required members ordered lexicographically".
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"))

    return base64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_key(jwk: Mapping[str, object]) -> PublicKey:
    kty = jwk["kty"]

    if kty == "RSA":
        n = _parse_uint(jwk["n"])
        e = _parse_uint(jwk["e"])
        return rsa.RSAPublicNumbers(e, n).public_key()

    if kty == "EC" and jwk["crv"] == "P-256":
        x = _parse_uint(jwk["x"])
        y = _parse_uint(jwk["y"])
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()

    raise ValueError("unsupported key type")


def _uint(value: int) -> str:
    # RFC 7518 §2, Base64urlUInt: "The octet sequence MUST utilize the minimum number of
    # octets needed to represent the value."
    return base64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _parse_uint(value: object) -> int:
    if not isinstance(value, str):
        raise TypeError("JWK key parameters are strings")

    return int.from_bytes(base64url_decode(value), "big")
