"""Access tokens and ID tokens: what they carry, how they are signed and checked.

Access tokens are RFC 9068 JWTs (`typ: at+jwt`): `iss`, `sub`, `aud` (one resource's
identifier, or an agent's own audience), `client_id` and `azp` (AgentCore's inbound
authorizer matches `allowed_clients` against `client_id`; the claim rule customary in
AgentCore setups matches `azp`), `scope`, `iat`, `exp`, `jti`, and fleetid's own: `tenant`,
`revision` (the directory revision that decided it), `sid` (the sign-in grant a delegated
token belongs to) and the RFC 8693 `act` chain.

Opaque secrets (authorization codes, refresh tokens) are random 256-bit strings; the store
keeps only their SHA-256 digests, so a copy of the store redeems nothing.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK

from fleetid.keys import KeyCustody, encode_jwt

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AGENT_AUDIENCE_PREFIX",
    "TokenService",
    "VerifiedToken",
    "agent_audience",
    "digest",
    "new_secret",
]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AGENT_AUDIENCE_PREFIX = "urn:fleetid:agent:"
_LEEWAY = 5


def agent_audience(agent: str) -> str:
    """The audience of tokens addressed to an agent itself, such as a user's sign-in token."""
    return f"{AGENT_AUDIENCE_PREFIX}{agent}"


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
    """Signs tokens through the key custody and checks the ones it signed."""

    def __init__(self, keys: KeyCustody, issuer: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self._verifiers: dict[str, PyJWK] = {}
        self._lock = threading.Lock()

    def sign(self, claims: Mapping[str, Any], *, typ: str = "at+jwt") -> str:
        return encode_jwt(self.keys, claims, typ=typ)

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
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("typ") != "at+jwt":
            return None
        key = self._verifier(str(header.get("kid", "")))
        if key is None:
            return None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                issuer=self.issuer,
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "require": ["exp", "iat", "jti", "sub", "client_id"],
                },
            )
        except jwt.PyJWTError:
            return None
        if int(claims["exp"]) + _LEEWAY < now:
            return None
        return VerifiedToken(claims)

    def _verifier(self, kid: str) -> PyJWK | None:
        key = self._verifiers.get(kid)
        if key is not None:
            return key
        # An unknown kid may be a key published since the cache was filled (rotation).
        with self._lock:
            for jwk in self.keys.jwks()["keys"]:
                if jwk["kid"] not in self._verifiers:
                    self._verifiers[jwk["kid"]] = PyJWK(dict(jwk))
            return self._verifiers.get(kid)
