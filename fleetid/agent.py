"""What an agent's code calls: trade tokens, fetch connection credentials, cache both.

An agent holds nothing long-lived. It holds its client credentials (delivered by its
platform, never in a model's context) and, per request, the token of the person it acts
for. Everything else it gets from fleetid at call time, through token exchange (RFC 8693),
under the same issuance policy as any request:

    from fleetid.agent import FleetClient

    fleet = FleetClient.from_environment()      # FLEETID_ISSUER, FLEETID_CLIENT_ID, ...

    # A CRM token narrowed to what this agent may do for this user.
    crm = fleet.exchange(user_token, resource="https://crm.acme.example.com",
                         scopes=["crm:read"])
    httpx.get("https://crm.acme.example.com/accounts", headers=crm.authorization)

    # The user's own Google Calendar, linked once in fleetid; refreshed by fleetid as
    # needed, so the agent never sees a refresh token.
    calendar = fleet.connection(user_token, "google-calendar")
    httpx.get("https://www.googleapis.com/calendar/v3/users/me/calendarList",
              headers=calendar.authorization)

    # A static key of an internal API, which the agent never stores.
    reporting = fleet.connection(user_token, "reporting")
    httpx.get("https://reports.acme.example.com/revenue", headers=reporting.authorization)

Each result is cached per (subject token, target, scopes) until shortly before it expires,
so an agent calling a tool in a loop does not ask fleetid every time. A refusal raises
`Refused` with the server's error code and its reason (which says, for instance, that the
user holds no role that may hold `crm:write`, or that the user never linked the
connection). Tokens never appear in an exception's text or a `repr`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["Credential", "FleetClient", "FleetClientError", "Refused"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CONNECTION_PREFIX = "urn:fleetid:connection:"
# Refresh this long before expiry, so a credential is never used in its last seconds.
EXPIRY_MARGIN = 30


class FleetClientError(Exception):
    """fleetid could not be asked: unreachable, or an answer that is not OAuth."""


class Refused(FleetClientError):
    """fleetid answered with an OAuth error: `error` is its code, `description` why."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Credential:
    """A token or key to present, and how."""

    value: str = field(repr=False)
    header: str = "Authorization"
    prefix: str = "Bearer "
    scopes: tuple[str, ...] = ()
    expires_at: float | None = None

    @property
    def authorization(self) -> dict[str, str]:
        """The HTTP header that carries it."""
        return {self.header: f"{self.prefix}{self.value}"}

    def fresh(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at - EXPIRY_MARGIN > now


def _secrets_manager(arn: str) -> str:
    """The secret's string, read with the runtime's own role."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("secretsmanager").get_secret_value(SecretId=arn)
    except (BotoCoreError, ClientError) as exc:
        raise FleetClientError(
            f"cannot read the client secret from Secrets Manager ({type(exc).__name__})"
        ) from None
    return str(answer["SecretString"])


class FleetClient:
    """A fleet agent's client of its fleetid server."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self._http = http or httpx.Client(timeout=10)
        self._clock = clock
        self._token_endpoint: str | None = None
        self._cache: dict[tuple[str, str, tuple[str, ...]], Credential] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FleetClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> FleetClient:
        """From FLEETID_ISSUER and FLEETID_CLIENT_ID, and the client secret from
        FLEETID_CLIENT_SECRET_ARN (a Secrets Manager secret, as an AgentCore runtime gets
        it), FLEETID_CLIENT_SECRET_FILE (a file holding it) or FLEETID_CLIENT_SECRET."""
        env = os.environ if environ is None else environ
        try:
            issuer, client_id = env["FLEETID_ISSUER"], env["FLEETID_CLIENT_ID"]
        except KeyError as exc:
            raise FleetClientError(f"{exc.args[0]} is not set") from None
        secret = env.get("FLEETID_CLIENT_SECRET")
        if "FLEETID_CLIENT_SECRET_ARN" in env:
            secret = _secrets_manager(env["FLEETID_CLIENT_SECRET_ARN"])
        elif "FLEETID_CLIENT_SECRET_FILE" in env:
            with open(env["FLEETID_CLIENT_SECRET_FILE"], encoding="utf-8") as handle:
                secret = handle.read().strip()
        if not secret:
            raise FleetClientError(
                "set FLEETID_CLIENT_SECRET_ARN, FLEETID_CLIENT_SECRET_FILE "
                "or FLEETID_CLIENT_SECRET"
            )
        return cls(issuer, client_id, secret)

    def exchange(
        self, subject_token: str, *, resource: str, scopes: Sequence[str] = ()
    ) -> Credential:
        """A token for `resource`, acting for the subject of `subject_token`."""
        return self._cached(subject_token, resource, tuple(scopes))

    def connection(self, subject_token: str, name: str) -> Credential:
        """The credential of connection `name` for the subject of `subject_token`."""
        return self._cached(subject_token, f"{CONNECTION_PREFIX}{name}", ())

    def _cached(self, subject_token: str, target: str, scopes: tuple[str, ...]) -> Credential:
        # The cache is keyed by a digest: a dictionary key is no place to keep a token.
        subject = hashlib.sha256(subject_token.encode()).hexdigest()
        key = (subject, target, scopes)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.fresh(now):
            return cached
        credential = self._request(subject_token, target, scopes, now)
        with self._lock:
            self._cache[key] = credential
        return credential

    def _request(
        self, subject_token: str, target: str, scopes: tuple[str, ...], now: float
    ) -> Credential:
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": target,
        }
        if scopes:
            form["scope"] = " ".join(scopes)
        try:
            response = self._http.post(
                self._endpoint(), data=form, auth=(self.client_id, self._secret)
            )
            body: Any = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise FleetClientError(f"token exchange failed: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise FleetClientError("the token endpoint did not answer with a JSON object")
        if response.status_code != 200:
            raise Refused(str(body.get("error", "error")), str(body.get("error_description", "")))
        expires_in = body.get("expires_in")
        return Credential(
            value=str(body["access_token"]),
            header=str(body.get("header", "Authorization")),
            prefix=str(body.get("prefix", "Bearer ")),
            scopes=tuple(str(body.get("scope", "")).split()),
            expires_at=now + float(expires_in) if expires_in is not None else None,
        )

    def _endpoint(self) -> str:
        if self._token_endpoint is None:
            try:
                discovery = self._http.get(f"{self.issuer}/.well-known/openid-configuration")
                self._token_endpoint = str(discovery.json()["token_endpoint"])
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise FleetClientError(f"discovery failed: {type(exc).__name__}") from None
        return self._token_endpoint
