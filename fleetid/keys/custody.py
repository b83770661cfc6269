"""The key-custody contract, and `encode_jwt`, which signs tokens through any custody.

fleetid keeps its signing keys in one of three custodies: a local key file, a private key
wrapped by AWS KMS and held in memory, or a KMS key that signs each token itself. The server
sees only `KeyCustody`: it asks for a signature over the JWS signing input and for the JWKS,
and never handles a private key. That is what lets one `encode_jwt` serve all three.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeAlias

import orjson

from fleetid.keys.algorithms import Algorithm
from fleetid.keys.errors import SigningKeyChanged
from fleetid.keys.jwk import base64url_encode
from fleetid.keys.ring import JsonWebKeySet

__all__ = ["Clock", "KeyCustody", "Signature", "encode_jwt", "encode_jwt_async"]

Clock: TypeAlias = Callable[[], float]
"""Unix time in seconds; `time.time` outside tests."""

# A rotation between choosing the header and signing changes the active key; trying once more
# with the new key is enough, since rotations are hours apart.
SIGNING_ATTEMPTS = 2


class Signature(NamedTuple):
    """A raw JWS signature and the key that made it."""

    kid: str
    alg: Algorithm
    value: bytes


class KeyCustody(ABC):
    """Where the signing keys live, and the only thing allowed to use them."""

    @abstractmethod
    def active_key(self) -> tuple[str, Algorithm]:
        """The kid and alg of the key that signs now.

        The JWS header names the key and is itself covered by the signature (RFC 7515 §5.1),
        so the signer must know both before it builds the signing input.
        """

    @abstractmethod
    def sign(self, signing_input: bytes) -> Signature:
        """Sign `signing_input` with the active key.

        The signature is the JWS Signature octets (RFC 7518 §3): RSASSA-PKCS1-v1_5 with
        SHA-256 for RS256, and R || S, 64 octets, for ES256.
        """

    async def sign_async(self, signing_input: bytes) -> Signature:
        """`sign`, for a caller on an event loop.

        A custody whose signatures are slow work may make them elsewhere while the loop
        serves other requests; this default makes them in place.
        """
        return self.sign(signing_input)

    def sign_on_threads(self, threads: int) -> None:  # noqa: B027 - optional, as `reload`
        """Let `sign_async` make signatures on `threads` threads of its own, where that
        costs less than making them on the event loop; a custody with no such work to move
        ignores it."""

    @abstractmethod
    def jwks(self) -> JsonWebKeySet:
        """The public keys of the next, active and unretired previous keys, as a JWK Set."""

    def reload(self) -> None:  # noqa: B027 - optional: most custodies have nothing to reload
        """Adopt keys changed by another process, such as a rotation; a custody that keeps
        nothing of its own in memory has nothing to do."""

    @abstractmethod
    def rotate(self, *, max_token_lifetime: int, force: bool = False) -> None:
        """Make the next key active, retire the active one, and publish a fresh next key.

        Raises `RotationTooSoon` when the next key was published less than `JWKS_MAX_AGE`
        seconds ago, unless `force`: verifiers holding a cached JWKS would refuse its tokens.

        The retired key stays in the JWKS for `max_token_lifetime` seconds, which must cover
        the longest-lived token it signed plus any leeway verifiers allow on `exp`. Rotate no
        more often than resource servers refresh their cached JWKS, so that each next key has
        been fetched before it signs.
        """


def encode_jwt(custody: KeyCustody, claims: Mapping[str, Any], *, typ: str = "at+jwt") -> str:
    """Sign `claims` as a compact JWS (RFC 7515 §7.1) with the custody's active key.

    RFC 9068 §2.1: for a JWT access token 'the "typ" value used SHOULD be "at+jwt"'.
    """
    payload = base64url_encode(_compact_json(claims))

    for _ in range(SIGNING_ATTEMPTS):
        key, signing_input = _signing_input(custody, payload, typ)
        token = _compact_jws(key, signing_input, custody.sign(signing_input.encode("ascii")))
        if token is not None:
            return token

    raise SigningKeyChanged()


async def encode_jwt_async(
    custody: KeyCustody, claims: Mapping[str, Any], *, typ: str = "at+jwt"
) -> str:
    """`encode_jwt` on an event loop, through the custody's `sign_async`."""
    payload = base64url_encode(_compact_json(claims))

    for _ in range(SIGNING_ATTEMPTS):
        key, signing_input = _signing_input(custody, payload, typ)
        signature = await custody.sign_async(signing_input.encode("ascii"))
        token = _compact_jws(key, signing_input, signature)
        if token is not None:
            return token

    raise SigningKeyChanged()


def _signing_input(
    custody: KeyCustody, payload: str, typ: str
) -> tuple[tuple[str, Algorithm], str]:
    kid, alg = custody.active_key()
    return (kid, alg), f"{_header(alg, kid, typ)}.{payload}"


def _compact_jws(
    key: tuple[str, Algorithm], signing_input: str, signature: Signature
) -> str | None:
    """The token, or None when a rotation changed the key between header and signature."""
    if (signature.kid, signature.alg) != key:
        return None
    return f"{signing_input}.{base64url_encode(signature.value)}"


@functools.lru_cache(maxsize=64)
def _header(alg: str, kid: str, typ: str) -> str:
    """The encoded JWS header: the same few for every token a key signs."""
    return base64url_encode(_compact_json({"alg": alg, "kid": kid, "typ": typ}))


def _compact_json(value: Mapping[str, Any]) -> bytes:
    # RFC 7519 §7.1 signs the UTF-8 octets of the JSON; orjson writes UTF-8 and has no NaN
    # or Infinity (it writes them as null), so what is signed is always JSON.
    return orjson.dumps(dict(value))
