"""Access tokens and ID tokens: what they carry, how they are signed and checked.

Access tokens are RFC 9068 JWTs (`typ: at+jwt`): `iss`, `sub`, `aud` (one resource's
identifier, or an agent's own audience), `client_id` and `azp` (AgentCore's inbound
authorizer matches `allowed_clients` against `client_id`; the claim rule customary in
AgentCore setups matches `azp`), `scope`, `iat`, `exp`, `jti`, and fleetid's own: `tenant`,
`revision` (the directory revision that decided it), `sid` (the sign-in grant a delegated
token belongs to) and the RFC 8693 `act` chain.

Opaque secrets (authorization codes, refresh tokens) are random 256-bit strings; the store
keeps only their SHA-256 digests, so a copy of the store redeems nothing.

An agent presents the same sign-in token for exchange after exchange, so the outcome of
checking a token's signature is remembered (bounded, per key set, never past the token's
expiry): the signature of a given string under given keys never changes, and checking it
again is most of an exchange's cost. Only tokens that passed are remembered, so forged
ones cannot crowd the memory; expiry and revocation are still checked on every use.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from fleetid.fleet.compile import Revision
from fleetid.keys import Algorithm, KeyCustody, encode_jwt_async

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AGENT_AUDIENCE_PREFIX",
    "TokenService",
    "VerifiedToken",
    "agent_audience",
    "digest",
    "new_secret",
    "signing_algorithms",
]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AGENT_AUDIENCE_PREFIX = "urn:fleetid:agent:"
_ALGORITHMS = ("RS256", "ES256")
_REQUIRED = ("exp", "iat", "jti", "sub", "client_id")
# A token of this server is a few hundred bytes; anything far larger is not one.
_MAX_TOKEN_LENGTH = 16 * 1024
# Tokens whose signature check is remembered: a few MB at most.
_VERIFIED_CACHE = 4096


def agent_audience(agent: str) -> str:
    """The audience of tokens addressed to an agent itself, such as a user's sign-in token."""
    return f"{AGENT_AUDIENCE_PREFIX}{agent}"


def signing_algorithms(revision: Revision) -> set[Algorithm]:
    """Every algorithm the revision's tokens are signed with."""
    algorithms: set[Algorithm] = {revision.fleet.identity.signing.algorithm}
    for resource in revision.fleet.resources.values():
        if resource.signing_algorithm is not None:
            algorithms.add(resource.signing_algorithm)
    return algorithms


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """An access token this server issued, whose signature, issuer and expiry hold."""

    claims: Mapping[str, Any]

    @property
    def jti(self) -> str:
        return str(self.claims.get("jti", ""))

    @property
    def client_id(self) -> str:
        return str(self.claims.get("client_id", ""))

    @property
    def audience(self) -> str:
        return str(self.claims.get("aud", ""))

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(str(self.claims.get("scope", "")).split())

    @property
    def expires_at(self) -> int:
        return int(self.claims.get("exp", 0))


class TokenService:
    """Signs tokens through the key custodies and checks the ones it signed.

    There is one custody per signing algorithm in use: the fleet's default (RS256 unless
    `identity.signing.algorithm` says otherwise) and any a resource asks for with its own
    `signing_algorithm`. All their keys are published in one JWKS.
    """

    def __init__(
        self,
        issuer: str,
        custody_for: Callable[[Algorithm], KeyCustody],
        *,
        default_algorithm: Algorithm = "RS256",
    ) -> None:
        self.issuer = issuer
        self.default_algorithm = default_algorithm
        self._custody_for = custody_for
        self._custodies: dict[Algorithm, KeyCustody] = {}
        self._keys: KeySet | None = None
        self._keys_kids: frozenset[str] = frozenset()
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._lock = threading.Lock()
        self._signing_threads = 0
        self.custody(default_algorithm)

    def custody(self, algorithm: Algorithm) -> KeyCustody:
        custody = self._custodies.get(algorithm)
        if custody is None:
            with self._lock:
                custody = self._custodies.get(algorithm)
                if custody is None:
                    custody = self._custody_for(algorithm)
                    if self._signing_threads:
                        custody.sign_on_threads(self._signing_threads)
                    self._custodies[algorithm] = custody
        return custody

    def prepare(self, algorithms: Iterable[Algorithm]) -> None:
        """Create the custodies of these algorithms now, so that their keys are in the
        JWKS before the first token they sign."""
        for algorithm in algorithms:
            # Loads the ring, or generates it on the first start.
            self.custody(algorithm).active_key()
        self._forget_keys()

    def reload_keys(self) -> None:
        """Adopt key rings another process changed (`fleetid keys rotate`): the active key
        signs from now on, and the JWKS and verification follow."""
        for custody in list(self._custodies.values()):
            custody.reload()
        self._forget_keys()

    def _forget_keys(self) -> None:
        """Rebuild the verification key set on next use, and check every token anew."""
        self._keys = None
        self._verified = OrderedDict()

    def jwks(self) -> dict[str, Any]:
        custodies = list(self._custodies.values())
        return {"keys": [key for custody in custodies for key in custody.jwks()["keys"]]}

    async def sign(
        self, claims: Mapping[str, Any], *, typ: str = "at+jwt", algorithm: Algorithm | None = None
    ) -> str:
        custody = self.custody(algorithm or self.default_algorithm)
        return await encode_jwt_async(custody, claims, typ=typ)

    def sign_on_threads(self, threads: int) -> None:
        """Have every custody, present and to come, make its slow signatures on `threads`
        threads of its own (`KeyCustody.sign_on_threads`)."""
        self._signing_threads = threads
        for custody in list(self._custodies.values()):
            custody.sign_on_threads(threads)

    def access_claims(
        self,
        *,
        subject: str,
        audience: str,
        client_id: str,
        scopes: tuple[str, ...],
        issued_at: int,
        lifetime: int,
        revision: str,
        tenant: str | None = None,
        grant: str | None = None,
        act: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "client_id": client_id,
            "azp": client_id,
            "scope": " ".join(scopes),
            "iat": issued_at,
            "exp": issued_at + lifetime,
            "jti": secrets.token_urlsafe(16),
            "revision": revision,
        }
        if tenant is not None:
            claims["tenant"] = tenant
        if grant is not None:
            claims["sid"] = grant
        if act is not None:
            claims["act"] = dict(act)
        return claims

    def verify(self, token: str, *, now: float) -> VerifiedToken | None:
        """The token's claims when this server issued it and it has not expired; else None.

        Revocation is the caller's concern: it needs the store.
        """
        remembered = self._verified
        verified = remembered.get(token)
        if verified is None:
            verified = self._check_signature(token)
            if verified is None:
                return None
            with self._lock:
                remembered[token] = verified
                if len(remembered) > _VERIFIED_CACHE:
                    remembered.popitem(last=False)
        # RFC 7519 §4.1.4: accepted only "on or before" exp, by the clock that set it: the
        # leeway verifiers give for clock skew has no place when the issuer checks.
        if verified.expires_at <= now:
            remembered.pop(token, None)
            return None
        return verified

    def _check_signature(self, token: str) -> VerifiedToken | None:
        """The token's claims when its signature, type, issuer and claims hold."""
        if len(token) > _MAX_TOKEN_LENGTH:
            return None
        try:
            try:
                decoded = jwt.decode(token, self._key_set(), algorithms=list(_ALGORITHMS))
            except InvalidKeyIdError:
                # An unknown kid may be a key published since the set was built (rotation).
                # When the published keys are still the ones the set holds, it is a kid this
                # server never had, and the remembered verifications stay.
                if self._published_kids() == self._keys_kids:
                    return None
                self._forget_keys()
                decoded = jwt.decode(token, self._key_set(), algorithms=list(_ALGORITHMS))
        except (JoseError, ValueError):
            return None
        if decoded.header.get("typ") != "at+jwt":
            return None
        claims = decoded.claims
        if claims.get("iss") != self.issuer:
            return None
        if any(name not in claims for name in _REQUIRED):
            return None
        if not isinstance(claims["exp"], int):
            return None
        return VerifiedToken(MappingProxyType(claims))

    def _key_set(self) -> KeySet:
        keys = self._keys
        if keys is None:
            published = self.jwks()
            keys = KeySet.import_key_set(published)  # type: ignore[arg-type]
            self._keys, self._keys_kids = keys, _kids(published)
        return keys

    def _published_kids(self) -> frozenset[str]:
        return _kids(self.jwks())


def _kids(jwks: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(str(key.get("kid")) for key in jwks["keys"])
