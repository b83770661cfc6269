"""fleetid as the OAuth client of a third party: discovery, authorization, tokens, revocation.

One `ProviderClient` talks to every OAuth connection's provider over httpx:

- discovery (OIDC Discovery 1.0 §4, RFC 8414 §3), or the endpoints fleet.yaml names, which
  win over discovered ones;
- the authorization request (RFC 6749 §4.1.1) with PKCE S256 (RFC 7636 §4);
- the token requests, authenticated with `client_secret_basic` (RFC 6749 §2.3.1): the
  authorization code grant (§4.1.3) and refresh (§6);
- revocation (RFC 7009 §2).

Every failure becomes a `ProviderError` naming the connection, the operation, the HTTP status
and the OAuth error code, chained to the httpx error. A provider's `error_description` is
never repeated, since a provider may echo what it was sent; neither are request bodies.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import httpx

from fleetid.fleet.model import OAuthConnection
from fleetid.vault.errors import ProviderError, ProviderUnreachable

__all__ = [
    "DISCOVERY_TTL",
    "ProviderClient",
    "ProviderMetadata",
    "TokenResponse",
    "code_challenge",
]

logger = logging.getLogger(__name__)

DISCOVERY_TTL: Final = 3600
_OIDC_SUFFIX: Final = "/.well-known/openid-configuration"
_RFC8414_INFIX: Final = "/.well-known/oauth-authorization-server"
# RFC 6749 §5.2 allows more characters in an error code; a code outside this set is not
# repeated, in case it is not a code at all.
_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_BODY: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The provider endpoints and capabilities the vault uses."""

    issuer: str | None
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None
    code_challenge_methods: tuple[str, ...] | None
    iss_parameter_supported: bool


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful token response (RFC 6749 §5.1); the tokens stay out of the repr."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int | None
    refresh_token: str | None = field(repr=False)
    scope: tuple[str, ...] | None


def code_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class ProviderClient:
    """The HTTP side of every OAuth connection, sharing one httpx client."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        discovery_ttl: float = DISCOVERY_TTL,
        clock: Any = time.monotonic,
    ) -> None:
        self._http = http
        self._discovery_ttl = discovery_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._discovered: dict[tuple[str, str], tuple[float, ProviderMetadata]] = {}

    def metadata(self, name: str, connection: OAuthConnection) -> ProviderMetadata:
        """The provider's endpoints: discovered (cached for an hour) and then overridden by
        any that fleet.yaml names."""
        provider = connection.provider
        discovered: ProviderMetadata | None = None
        if provider.discovery_url is not None:
            discovered = self._discover(name, provider.discovery_url)

        authorization = provider.authorization_endpoint or (
            discovered.authorization_endpoint if discovered else None
        )
        token = provider.token_endpoint or (discovered.token_endpoint if discovered else None)
        if authorization is None or token is None:
            raise ProviderError(
                f"the provider of connection {name!r} names no authorization or token endpoint",
                connection=name,
                operation="discovery",
            )

        revocation = provider.revocation_endpoint or (
            discovered.revocation_endpoint if discovered else None
        )
        for url in (authorization, token, revocation):
            if url is not None:
                _require_secure(name, url)

        return ProviderMetadata(
            issuer=discovered.issuer if discovered else None,
            authorization_endpoint=authorization,
            token_endpoint=token,
            revocation_endpoint=revocation,
            code_challenge_methods=discovered.code_challenge_methods if discovered else None,
            iss_parameter_supported=discovered.iss_parameter_supported if discovered else False,
        )

    def authorization_url(
        self,
        metadata: ProviderMetadata,
        connection: OAuthConnection,
        *,
        redirect_uri: str,
        state: str,
        challenge: str | None,
    ) -> str:
        """The URL the user's browser opens to authorize the connection (RFC 6749 §4.1.1)."""
        parameters = {
            "response_type": "code",
            "client_id": connection.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(connection.scopes),
            "state": state,
        }
        if challenge is not None:
            parameters |= {"code_challenge": challenge, "code_challenge_method": "S256"}

        # RFC 6749 §3.1: the endpoint URI "MAY include an application/x-www-form-urlencoded
        # formatted query component, which MUST be retained when adding additional query
        # parameters."
        parts = urlsplit(metadata.authorization_endpoint)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query += list(parameters.items())

        # Spaces in `scope` become %20, which every provider reads; some refuse "+".
        return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))

    def exchange_code(
        self,
        name: str,
        metadata: ProviderMetadata,
        connection: OAuthConnection,
        client_secret: str,
        *,
        code: str,
        redirect_uri: str,
        verifier: str | None,
    ) -> TokenResponse:
        """Redeem an authorization code (RFC 6749 §4.1.3)."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if verifier is not None:
            form["code_verifier"] = verifier

        return self._token(name, metadata, connection, client_secret, form, operation="token")

    def refresh(
        self,
        name: str,
        metadata: ProviderMetadata,
        connection: OAuthConnection,
        client_secret: str,
        refresh_token: str,
    ) -> TokenResponse:
        """Trade a refresh token for a new access token (RFC 6749 §6)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}

        return self._token(name, metadata, connection, client_secret, form, operation="refresh")

    def revoke(
        self,
        name: str,
        metadata: ProviderMetadata,
        connection: OAuthConnection,
        client_secret: str,
        token: str,
        *,
        hint: str,
    ) -> None:
        """Revoke a token at the provider's revocation endpoint (RFC 7009 §2.1)."""
        if metadata.revocation_endpoint is None:
            raise ProviderError(
                f"the provider of connection {name!r} offers no revocation endpoint",
                connection=name,
                operation="revocation",
            )

        response = self._post(
            name,
            metadata.revocation_endpoint,
            connection,
            client_secret,
            {"token": token, "token_type_hint": hint},
            operation="revocation",
        )

        # RFC 7009 §2.2: "The authorization server responds with HTTP status code 200 if the
        # token has been revoked successfully or if the client submitted an invalid token."
        if response.status_code != 200:
            raise _error_response(name, "revocation", response)

    def _discover(self, name: str, url: str) -> ProviderMetadata:
        cache_key = (name, url)
        now = self._clock()
        with self._lock:
            cached = self._discovered.get(cache_key)
        if cached is not None and now - cached[0] < self._discovery_ttl:
            return cached[1]

        _require_secure(name, url)
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise _unreachable(name, "discovery", url) from exc

        if response.status_code != 200:
            raise ProviderError(
                f"discovery for connection {name!r} at {url} answered HTTP {response.status_code}",
                connection=name,
                operation="discovery",
                status=response.status_code,
            )

        document = _json_object(name, "discovery", response)
        metadata = _parse_discovery(name, url, document)
        with self._lock:
            self._discovered[cache_key] = (now, metadata)

        return metadata

    def _token(
        self,
        name: str,
        metadata: ProviderMetadata,
        connection: OAuthConnection,
        client_secret: str,
        form: dict[str, str],
        *,
        operation: str,
    ) -> TokenResponse:
        response = self._post(
            name, metadata.token_endpoint, connection, client_secret, form, operation=operation
        )
        if response.status_code != 200:
            raise _error_response(name, operation, response)

        return _parse_token_response(name, operation, _json_object(name, operation, response))

    def _post(
        self,
        name: str,
        url: str,
        connection: OAuthConnection,
        client_secret: str,
        form: Mapping[str, str],
        *,
        operation: str,
    ) -> httpx.Response:
        headers = {
            "Authorization": _basic(connection.client_id, client_secret),
            "Accept": "application/json",
        }
        try:
            response = self._http.post(url, data=dict(form), headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(name, operation, url) from exc

        logger.debug(
            "connection %s: %s request to %s answered %d",
            name,
            operation,
            url,
            response.status_code,
        )

        return response


def _basic(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: "The client identifier is encoded using the
    # application/x-www-form-urlencoded encoding algorithm per Appendix B, and the encoded
    # value is used as the username; the client password is encoded using the same
    # algorithm and used as the password."
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"

    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_secure(name: str, url: str) -> None:
    # The client secret and the user's tokens travel to these URLs.
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return

    raise ProviderError(
        f"the provider of connection {name!r} uses {url}, which is not https "
        "(http is allowed on loopback only)",
        connection=name,
        operation="discovery",
    )


def _unreachable(name: str, operation: str, url: str) -> ProviderUnreachable:
    return ProviderUnreachable(
        f"the provider of connection {name!r} did not answer the {operation} request to {url}",
        connection=name,
        operation=operation,
    )


def _json_object(name: str, operation: str, response: httpx.Response) -> dict[str, Any]:
    try:
        if len(response.content) > _MAX_BODY:
            raise ValueError("too large")
        document = response.json()
    except ValueError:
        document = None

    if not isinstance(document, dict):
        raise ProviderError(
            f"the {operation} response of connection {name!r}'s provider is not a JSON object",
            connection=name,
            operation=operation,
            status=response.status_code,
        )

    return document


def _error_response(name: str, operation: str, response: httpx.Response) -> ProviderError:
    error: str | None = None
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        code = document.get("error")
        if isinstance(code, str):
            error = code if _ERROR_CODE.fullmatch(code) else "unrecognised_error"

    answer = f"HTTP {response.status_code}" + (f" {error}" if error else "")
    return ProviderError(
        f"the provider of connection {name!r} refused the {operation} request: {answer}",
        connection=name,
        operation=operation,
        status=response.status_code,
        error=error,
    )


def _parse_discovery(name: str, url: str, document: Mapping[str, Any]) -> ProviderMetadata:
    def text(member: str) -> str | None:
        value = document.get(member)
        return value if isinstance(value, str) and value else None

    issuer = text("issuer")
    expected = _expected_issuer(url)
    # OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL
    # that was used as the prefix to /.well-known/openid-configuration"; RFC 8414 §3.3 says
    # the same of its own well-known URL.
    if expected is not None and issuer != expected:
        raise ProviderError(
            f"discovery for connection {name!r} at {url} names another issuer",
            connection=name,
            operation="discovery",
        )

    authorization, token = text("authorization_endpoint"), text("token_endpoint")
    if authorization is None or token is None:
        raise ProviderError(
            f"discovery for connection {name!r} at {url} names no authorization or token endpoint",
            connection=name,
            operation="discovery",
        )

    methods = document.get("code_challenge_methods_supported")
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=authorization,
        token_endpoint=token,
        revocation_endpoint=text("revocation_endpoint"),
        code_challenge_methods=(
            tuple(method for method in methods if isinstance(method, str))
            if isinstance(methods, list)
            else None
        ),
        iss_parameter_supported=document.get("authorization_response_iss_parameter_supported")
        is True,
    )


def _expected_issuer(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.path.endswith(_OIDC_SUFFIX):
        path = parts.path[: -len(_OIDC_SUFFIX)]
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    if parts.path.startswith(_RFC8414_INFIX):
        path = parts.path[len(_RFC8414_INFIX) :]
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    return None


def _parse_token_response(name: str, operation: str, document: Mapping[str, Any]) -> TokenResponse:
    def refuse(problem: str) -> ProviderError:
        return ProviderError(
            f"the {operation} response of connection {name!r}'s provider {problem}",
            connection=name,
            operation=operation,
            status=200,
        )

    access_token = document.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise refuse("has no access_token")

    # RFC 6749 §5.1: token_type is REQUIRED, and RFC 6749 §7.1 says the client "MUST NOT use
    # an access token if it does not understand the token type"; RFC 6750 §4 spells the
    # one fleetid understands "Bearer", compared case-insensitively.
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise refuse("issued a token of a type other than Bearer")

    expires_in = document.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0
    ):
        raise refuse("has an expires_in that is not a number of seconds")

    refresh_token = document.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise refuse("has a malformed refresh_token")

    scope = document.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise refuse("has a malformed scope")

    return TokenResponse(
        access_token=access_token,
        token_type="Bearer",
        expires_in=expires_in,
        refresh_token=refresh_token,
        scope=tuple(scope.split()) if scope is not None else None,
    )
