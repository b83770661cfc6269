"""OAuth errors, one class per error code, each able to become its HTTP response.

Every endpoint raises these; `app.py` turns them into responses in one place, as RFC 6749
§5.2 JSON (token, introspection and revocation endpoints), RFC 6750 §3 challenges
(userinfo) or a redirect to the client (authorization endpoint, `authorize.py`).

    OAuthError
    ├── InvalidRequest          invalid_request
    ├── InvalidClient           invalid_client (401, with a Basic challenge)
    ├── InvalidGrant            invalid_grant
    ├── UnauthorizedClient      unauthorized_client
    ├── UnsupportedGrantType    unsupported_grant_type
    ├── UnsupportedTokenType    unsupported_token_type (RFC 7009)
    ├── InvalidScope            invalid_scope
    ├── InvalidTarget           invalid_target (RFC 8707)
    ├── AccessDenied            access_denied
    ├── InvalidToken            invalid_token (RFC 6750, 401)
    ├── InsufficientScope       insufficient_scope (RFC 6750, 403)
    ├── ServerError             server_error (500)
    └── TemporarilyUnavailable  temporarily_unavailable (503)

A description is for the client's developer: it says what is wrong and never includes a
token, code, secret or assertion, whichever of them was sent.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AccessDenied",
    "InsufficientScope",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "OAuthError",
    "ServerError",
    "TemporarilyUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UnsupportedTokenType",
]


class OAuthError(Exception):
    error: ClassVar[str] = "invalid_request"
    status: ClassVar[int] = 400

    def __init__(self, description: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(description or self.error)
        self.description = description
        self.headers = dict(headers or {})
        # Set where the refusal already wrote its own audit line (a policy decision, a
        # reused code or refresh token), so that the token endpoint writes no second one.
        self.audited = False

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401

    def __init__(self, description: str = "", *, headers: dict[str, str] | None = None) -> None:
        # RFC 6749 §5.2: the server "MUST include the WWW-Authenticate response header
        # field matching the authentication scheme used by the client"; Basic is the
        # scheme a client that failed can always retry with.
        super().__init__(
            description, headers=headers or {"WWW-Authenticate": 'Basic realm="fleetid"'}
        )
        # The fleet's agent the failed attempt claimed to be, once the claim named one.
        self.agent: str | None = None


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedTokenType(OAuthError):
    error = "unsupported_token_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class InvalidToken(OAuthError):
    error = "invalid_token"
    status = 401


class InsufficientScope(OAuthError):
    error = "insufficient_scope"
    status = 403


class ServerError(OAuthError):
    error = "server_error"
    status = 500


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503
