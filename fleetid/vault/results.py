"""What the vault's operations return: typed results the server can answer with and audit.

A credential, a token or an authorization URL holding a `state` is never part of a repr, so
logging a result, or an assertion failing on one, shows no secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "API_KEY_TOKEN_TYPE",
    "ApiKeysLoaded",
    "Credential",
    "LinkStart",
    "LinkState",
    "Linked",
    "Revocation",
    "Unlinked",
    "VaultEvent",
]

ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
API_KEY_TOKEN_TYPE = "urn:fleetid:params:oauth:token-type:api_key"

LinkState = Literal["linked", "broken", "not_linked"]
Revocation = Literal["revoked", "not_offered", "failed", "nothing_to_revoke"]


@dataclass(frozen=True, slots=True)
class Credential:
    """What an agent sends to the third party: `header: prefix + secret`.

    For an OAuth connection `secret` is the provider's access token, `header` is
    Authorization and `prefix` "Bearer "; for an API-key connection they are the static key
    and the header and prefix fleet.yaml gives. `expires_in` (seconds from the fetch) and
    `expires_at` (unix seconds) are None when the provider did not say, and always for API
    keys. `refreshed` is True when this fetch refreshed the token at the provider.
    """

    connection: str
    kind: Literal["oauth", "api_key"]
    secret: str = field(repr=False)
    header: str
    prefix: str
    expires_at: int | None
    expires_in: int | None
    scopes: tuple[str, ...]
    refreshed: bool = False

    def header_value(self) -> str:
        """The value of `header`: the prefix, then the secret."""
        return f"{self.prefix}{self.secret}"

    def token_response(self) -> dict[str, Any]:
        """This credential as an RFC 8693 §2.2.1 token exchange response body.

        An access token is issued as `urn:ietf:params:oauth:token-type:access_token` with
        token_type Bearer. An API key is not an OAuth access token, so (RFC 8693 §2.2.1) its
        token_type is "N_A", its issued_token_type fleetid's own URN, and `header` and
        `prefix` say how to send it.
        """
        if self.kind == "oauth":
            body: dict[str, Any] = {
                "access_token": self.secret,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
            }
            if self.expires_in is not None:
                body["expires_in"] = self.expires_in
            if self.scopes:
                body["scope"] = " ".join(self.scopes)
            return body

        return {
            "access_token": self.secret,
            "issued_token_type": API_KEY_TOKEN_TYPE,
            "token_type": "N_A",
            "header": self.header,
            "prefix": self.prefix,
        }


@dataclass(frozen=True, slots=True)
class LinkStart:
    """Where to send the user's browser to link a connection, and until when it is valid.

    `authorization_url` carries the single-use `state`, so it is kept out of the repr.
    """

    connection: str
    tenant: str
    user: str
    authorization_url: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True, slots=True)
class Linked:
    """A completed link. `refreshable` is False when the provider issued no refresh token:
    the link then breaks when the first access token expires."""

    connection: str
    tenant: str
    user: str
    scopes: tuple[str, ...]
    expires_in: int | None
    refreshable: bool
    relinked: bool


@dataclass(frozen=True, slots=True)
class Unlinked:
    """An unlink. `was_linked` is False when there was nothing to remove.

    `revocation` says what happened at the provider: revoked (RFC 7009), not_offered (the
    provider has no revocation endpoint), failed (`revocation_error` says why; the tokens
    may still be valid there until they expire), or nothing_to_revoke.
    """

    connection: str
    tenant: str
    user: str
    was_linked: bool
    revocation: Revocation
    revocation_error: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeysLoaded:
    """What `Vault.load_api_keys` did, by connection name.

    stored: written now; unchanged: already held, same key; kept: no value at the reference
    but a key stored earlier (by provisioning, or an earlier start) is kept; missing: no
    value and none stored, so fetches raise `ApiKeyMissing`.
    """

    stored: tuple[str, ...]
    unchanged: tuple[str, ...]
    kept: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VaultEvent:
    """Something the vault did on its own initiative or on a user's, for the audit trail.

    `event` is one of: link_started, linked, link_rejected, refreshed, refresh_failed,
    link_broken, unlinked, api_key_stored. `outcome` is a short word (ok, served_stale,
    revoked, ...), `reason` an error code where there was one.
    """

    event: str
    connection: str
    tenant: str | None
    user: str | None
    outcome: str
    reason: str | None = None
