"""`Vault`: the third-party credentials agents fetch, linked once by their users.

The server calls it after its policy decision; the vault decides nothing about who may have a
credential, only whether there is one and how to keep it fresh:

- an OAuth connection is linked per (connection, tenant, user): `begin_link` gives the URL to
  send the user's browser to, with PKCE S256 and a single-use `state` kept in the store with
  the user it was issued to; `complete_link` takes the provider's redirect back, redeems the
  state, exchanges the code and stores the tokens sealed;
- `fetch` returns the access token, refreshing it first when it has expired or will within
  `refresh_margin` seconds. However many fetches ask at once, in however many processes, one
  refresh reaches the provider: threads of a process share one call (`SingleFlight`), and
  processes take a lease on the record by compare-and-set, so the others wait for the
  lease holder's result. A provider that rotates refresh tokens is therefore never sent a
  used one;
- a refresh the provider refuses with invalid_grant (revoked or expired there) marks the link
  broken, and fetches say the user must link again, without asking the provider each time;
- `unlink` revokes the tokens at the provider where it offers RFC 7009 revocation, then
  deletes the record;
- an API-key connection has one key, read from its reference by `load_api_keys` at start,
  stored sealed and returned by `fetch` with its header and prefix.

Every operation returns a typed result or raises a typed `VaultError`; `on_event` receives a
`VaultEvent` for each change of state, and the `fleetid.vault` logger one line for each,
naming connection, tenant and user, never a token, code, secret or key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx

from fleetid.fleet.model import ApiKeyConnection, OAuthConnection
from fleetid.store import Clock, Store
from fleetid.store.base import unix_now
from fleetid.vault._flight import SingleFlight
from fleetid.vault.envelope import Envelope
from fleetid.vault.errors import (
    ApiKeyMissing,
    DecryptionFailed,
    LinkBroken,
    LinkDenied,
    LinkRejected,
    NotLinked,
    ProviderError,
    RefreshContended,
    SecretUnavailable,
    UnknownConnection,
    VaultError,
)
from fleetid.vault.oauth import ProviderClient, ProviderMetadata, code_challenge
from fleetid.vault.records import Binding, Lease, RotationReport, VaultRecord, VaultRecords
from fleetid.vault.results import (
    ApiKeysLoaded,
    Credential,
    Linked,
    LinkStart,
    LinkState,
    Revocation,
    Unlinked,
    VaultEvent,
)
from fleetid.vault.secrets import EnvironmentSecrets, SecretResolver, describe_reference

__all__ = ["DEFAULT_LINK_URL", "LINK_NAMESPACE", "ConnectionSource", "Vault"]

logger = logging.getLogger("fleetid.vault")

AnyConnection = OAuthConnection | ApiKeyConnection
ConnectionSource = Callable[[], Mapping[str, AnyConnection]]
"""The live revision's connections, by name; called on every operation."""

LINK_NAMESPACE: Final = "vault_link"
DEFAULT_LINK_URL: Final = "/connections/{connection}/link"

_REVOKED: Final = "the provider refused the refresh token (invalid_grant): it was revoked there"
_NOT_REFRESHABLE: Final = "the access token expired and the provider issued no refresh token"
_FIRST_POLL: Final = 0.02
_LONGEST_POLL: Final = 0.5
_WRITE_ATTEMPTS: Final = 10


class Vault:
    """Links, fetches, refreshes and unlinks the fleet's connections for its users.

    `connections` returns the live revision's connections (e.g.
    ``lambda: context.live.get().fleet.connections``). `redirect_uri` is the one callback
    URL registered at every provider; the server passes what arrives there to
    `complete_link`. `link_url` is where a user links a connection, `{connection}` replaced
    by its name; it is what `NotLinked` and `LinkBroken` tell the user to open.
    """

    def __init__(
        self,
        store: Store,
        envelope: Envelope,
        *,
        fleet: str,
        connections: ConnectionSource,
        redirect_uri: str,
        secrets: SecretResolver | None = None,
        http: httpx.Client | None = None,
        clock: Clock = time.time,
        link_url: str = DEFAULT_LINK_URL,
        refresh_margin: int = 60,
        lease_seconds: int = 60,
        link_seconds: int = 600,
        on_event: Callable[[VaultEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if "{connection}" not in link_url:
            raise ValueError("link_url must contain {connection}")

        self.records = VaultRecords(store, envelope, fleet=fleet, clock=clock)
        self._store = store
        self._connections = connections
        self._redirect_uri = redirect_uri
        self._secrets = secrets or EnvironmentSecrets()
        self._owns_http = http is None
        # Redirects are not followed: a token endpoint that redirects is misconfigured, and
        # the request carries the client secret.
        self._http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self._provider = ProviderClient(self._http)
        self._clock = clock
        self._link_url = link_url
        self._refresh_margin = refresh_margin
        self._lease_seconds = lease_seconds
        self._link_seconds = link_seconds
        self._on_event = on_event
        self._sleep = sleep
        self._flights: SingleFlight[Credential] = SingleFlight()

    def close(self) -> None:
        """Close the HTTP client if the vault made it; the store is the caller's."""
        if self._owns_http:
            self._http.close()

    def link_url(self, connection: str) -> str:
        """Where a user links `connection`."""
        return self._link_url.replace("{connection}", connection)

    # Linking

    def begin_link(
        self, connection: str, tenant: str, user: str, *, session: str | None = None
    ) -> LinkStart:
        """Start linking: the provider URL to send the user's browser to.

        The `state` in it is random, stored (sealed, with the PKCE verifier) for
        `link_seconds`, and redeemable once, by this user, and, when `session` is given, only
        with the same session.
        """
        config = self._oauth(connection)
        metadata = self._provider.metadata(connection, config)
        methods = metadata.code_challenge_methods
        if config.pkce and methods is not None and "S256" not in methods:
            raise ProviderError(
                f"the provider of connection {connection!r} does not support PKCE S256; "
                "set `pkce: false` only if it supports no PKCE at all",
                connection=connection,
                operation="discovery",
            )

        now = unix_now(self._clock)
        state = secrets.token_urlsafe(32)
        # RFC 7636 §4.1: a verifier of 43 to 128 characters from the unreserved set.
        verifier = secrets.token_urlsafe(64) if config.pkce else None
        binding = Binding("link", connection, tenant, user)
        payload = {
            "code_verifier": verifier,
            "redirect_uri": self._redirect_uri,
            "session": None if session is None else _digest(session),
            "started_at": now,
        }
        expires_at = now + self._link_seconds
        value = self.records.seal_value(binding, payload)
        if not self._store.create(LINK_NAMESPACE, _digest(state), value, expires_at=expires_at):
            raise VaultError("a fresh link state collided with a live one", connection=connection)

        url = self._provider.authorization_url(
            metadata,
            config,
            redirect_uri=self._redirect_uri,
            state=state,
            challenge=None if verifier is None else code_challenge(verifier),
        )
        self._emit("link_started", binding, "ok")

        return LinkStart(connection, tenant, user, authorization_url=url, expires_at=expires_at)

    def complete_link(
        self,
        callback: str | Mapping[str, str],
        tenant: str,
        user: str,
        *,
        session: str | None = None,
    ) -> Linked:
        """Finish linking from the provider's redirect to `redirect_uri`.

        `callback` is the URL the browser arrived at, its query string, or its parameters.
        `tenant` and `user` are who is signed in now; they must be who started the link.
        """
        parameters = _callback_parameters(callback)
        state = parameters.get("state")
        if not state:
            raise LinkRejected("the callback carries no state; start linking again")

        # Redeemed before anything else is checked, so a state is used at most once whatever
        # happens next.
        stored = self._store.redeem(LINK_NAMESPACE, _digest(state))
        if stored is None:
            raise LinkRejected(
                "the callback's state is unknown, used or expired; start linking again"
            )

        started = Binding.from_json(stored.value.get("binding"))
        if (started.tenant, started.user) != (tenant, user):
            caller = Binding("link", started.connection, tenant, user)
            raise self._rejected(caller, "it was started by another user")

        name = started.connection
        pending = self.records.open_value(started, stored.value)
        expected_session = pending.get("session")
        if expected_session is not None and not (
            session is not None and hmac.compare_digest(expected_session, _digest(session))
        ):
            raise self._rejected(started, "the link was started in another session")

        config = self._oauth(name)
        if "error" in parameters:
            error = _error_code(parameters["error"])
            self._emit("link_rejected", started, "denied", error)
            raise LinkDenied(name, tenant, user, error=error)

        metadata = self._provider.metadata(name, config)
        self._check_issuer(started, metadata, parameters.get("iss"))
        code = parameters.get("code")
        if not code:
            raise self._rejected(started, "the callback carries no authorization code")

        try:
            tokens = self._provider.exchange_code(
                name,
                metadata,
                config,
                self._client_secret(name, config),
                code=code,
                redirect_uri=str(pending.get("redirect_uri")),
                verifier=pending.get("code_verifier"),
            )
        except ProviderError as error:
            if error.error in ("invalid_grant", "invalid_request"):
                raise self._rejected(
                    started, f"the provider refused the authorization code ({error.error})"
                ) from error
            error.tenant, error.user = tenant, user
            raise

        now = unix_now(self._clock)
        binding = Binding("oauth", name, tenant, user)
        scopes = tokens.scope if tokens.scope is not None else config.scopes
        payload = {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "token_type": tokens.token_type,
            "expires_at": None if tokens.expires_in is None else now + tokens.expires_in,
            "issued_at": now,
            "scopes": list(scopes),
            "linked_at": now,
        }
        relinked = self._store_link(binding, payload)
        self._emit("linked", binding, "relinked" if relinked else "ok")

        return Linked(
            connection=name,
            tenant=tenant,
            user=user,
            scopes=tuple(scopes),
            expires_in=tokens.expires_in,
            refreshable=tokens.refresh_token is not None,
            relinked=relinked,
        )

    def link_status(self, connection: str, tenant: str, user: str) -> LinkState:
        """Whether the user has linked `connection`, without decrypting anything."""
        self._oauth(connection)
        try:
            record = self.records.read(Binding("oauth", connection, tenant, user))
        except DecryptionFailed:
            return "broken"

        if record is None:
            return "not_linked"

        return record.status

    def unlink(self, connection: str, tenant: str, user: str) -> Unlinked:
        """Revoke the user's tokens at the provider where it can, then forget them.

        The record is deleted whatever the provider answers; `Unlinked.revocation` says
        whether the tokens are also dead at the provider.
        """
        config = self._oauth(connection)
        binding = Binding("oauth", connection, tenant, user)
        try:
            record = self.records.read(binding)
        except DecryptionFailed:
            self.records.delete(binding)
            return self._unlinked(binding, "failed", DecryptionFailed.code)

        if record is None:
            return Unlinked(
                connection, tenant, user, was_linked=False, revocation="nothing_to_revoke"
            )

        revocation: Revocation = "nothing_to_revoke"
        error: str | None = None
        if record.status == "linked":
            try:
                tokens = self.records.open(record)
            except DecryptionFailed:
                revocation, error = "failed", DecryptionFailed.code
            else:
                revocation, error = self._revoke(connection, config, tokens)

        self.records.delete(binding)

        return self._unlinked(binding, revocation, error)

    # Fetching

    def fetch(self, connection: str, tenant: str, user: str) -> Credential:
        """The credential an agent acting for `user` of `tenant` sends to the third party.

        For an OAuth connection: the user's access token, refreshed first if it expires
        within `refresh_margin` seconds. For an API-key connection: its key, whoever the
        user. Raises `NotLinked`, `LinkBroken`, `ApiKeyMissing`, `ProviderError`,
        `RefreshContended` or `DecryptionFailed`.
        """
        config = self._connection(connection)
        if isinstance(config, ApiKeyConnection):
            return self._fetch_api_key(connection, config)

        binding = Binding("oauth", connection, tenant, user)
        record = self._read_linked(binding)
        tokens = self.records.open(record)
        now = unix_now(self._clock)
        if not self._due(tokens, now):
            self._rewrap_quietly(record)
            return _credential(connection, tokens, now, refreshed=False)

        credential, refreshed_here = self._flights.run(
            binding.key, lambda: self._refresh(binding, config)
        )

        return credential if refreshed_here else dataclasses.replace(credential, refreshed=False)

    # API keys

    def load_api_keys(self) -> ApiKeysLoaded:
        """Store the key of every API-key connection from its reference; run at start.

        A reference with no value (an unset variable, a config-only reference on a machine
        without provisioning) keeps any key stored earlier.
        """
        stored: list[str] = []
        unchanged: list[str] = []
        kept: list[str] = []
        missing: list[str] = []
        for name, config in sorted(self._connections().items()):
            if not isinstance(config, ApiKeyConnection):
                continue

            value = self._secrets(config.key)
            binding = Binding("api_key", name)
            if value is None:
                (kept if self.records.read(binding) is not None else missing).append(name)
                continue

            (stored if self._put_api_key(binding, value) else unchanged).append(name)

        return ApiKeysLoaded(tuple(stored), tuple(unchanged), tuple(kept), tuple(missing))

    def put_api_key(self, connection: str, key: str) -> bool:
        """Store the key of an API-key connection; False when that key was already stored."""
        config = self._connection(connection)
        if not isinstance(config, ApiKeyConnection):
            raise UnknownConnection(connection, expected="api_key")
        if not key:
            raise ValueError("an API key can't be empty")

        return self._put_api_key(Binding("api_key", connection), key)

    # Rotation

    def rewrap_all(self) -> RotationReport:
        """Re-wrap every record under the current master key; see `VaultRecords.rewrap_all`."""
        return self.records.rewrap_all()

    # Refresh, with a lease across processes

    def _refresh(self, binding: Binding, config: OAuthConnection) -> Credential:
        name = binding.connection
        deadline = unix_now(self._clock) + self._lease_seconds + 5
        pause = _FIRST_POLL

        while True:
            record = self._read_linked(binding)
            now = unix_now(self._clock)

            # Another process holds the lease: its result is what this fetch returns.
            if self.records.leased(record):
                if now >= deadline:
                    raise RefreshContended(
                        f"another fetch has been refreshing connection {name!r} for longer "
                        f"than its {self._lease_seconds}s lease; retry",
                        connection=name,
                        tenant=binding.tenant,
                        user=binding.user,
                    )
                self._sleep(pause)
                pause = min(pause * 2, _LONGEST_POLL)
                continue

            tokens = self.records.open(record)
            if not self._due(tokens, now):
                return _credential(name, tokens, now, refreshed=False)

            # The lease is a compare-and-set on the version just read: of all the fetchers
            # that saw this version, exactly one writes it, and the rest read again.
            lease = Lease(secrets.token_urlsafe(12), now + self._lease_seconds)
            leased = self.records.replace(record, lease=lease)
            if leased is None:
                continue

            credential = self._refresh_holding(leased, tokens, config)
            if credential is not None:
                return credential

    def _refresh_holding(
        self, leased: VaultRecord, tokens: Mapping[str, Any], config: OAuthConnection
    ) -> Credential | None:
        """Refresh while holding the lease; None when the record changed under it."""
        binding = leased.binding
        name = binding.connection
        assert binding.tenant is not None and binding.user is not None
        refresh_token = tokens.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            self.records.replace(leased, status="broken", broken_reason=_NOT_REFRESHABLE)
            self._emit("link_broken", binding, "broken", "no_refresh_token")
            raise self._broken(binding, _NOT_REFRESHABLE)

        try:
            metadata = self._provider.metadata(name, config)
            response = self._provider.refresh(
                name, metadata, config, self._client_secret(name, config), refresh_token
            )
        except ProviderError as error:
            if error.error == "invalid_grant":
                self.records.replace(leased, status="broken", broken_reason=_REVOKED)
                self._emit("link_broken", binding, "broken", "invalid_grant")
                raise self._broken(binding, _REVOKED) from error

            self.records.replace(leased)
            now = unix_now(self._clock)
            expires_at = tokens.get("expires_at")
            # Refreshed early, within the margin: the token in hand is still good, so a
            # provider outage does not fail fetches until it has actually expired.
            if isinstance(expires_at, int) and expires_at > now:
                self._emit("refresh_failed", binding, "served_stale", error.code)
                return _credential(name, tokens, now, refreshed=False)

            self._emit("refresh_failed", binding, "failed", error.code)
            error.tenant, error.user = binding.tenant, binding.user
            raise
        except BaseException:
            self.records.replace(leased)
            raise

        now = unix_now(self._clock)
        refreshed = {
            "access_token": response.access_token,
            # RFC 6749 §6: "The authorization server MAY issue a new refresh token, in which
            # case the client MUST discard the old refresh token and replace it with the new
            # refresh token."
            "refresh_token": response.refresh_token or refresh_token,
            "token_type": response.token_type,
            "expires_at": None if response.expires_in is None else now + response.expires_in,
            "issued_at": now,
            "scopes": list(response.scope) if response.scope is not None else tokens["scopes"],
            "linked_at": tokens.get("linked_at"),
            "refreshed_at": now,
        }
        if self.records.replace(leased, payload=refreshed) is None:
            # Re-linked, unlinked, or this lease outlived its term and another fetcher took
            # over: what is stored now wins, and is read again.
            logger.warning(
                "vault refresh of connection=%s tenant=%s user=%s lost its lease; "
                "the record changed meanwhile",
                name,
                binding.tenant,
                binding.user,
            )
            return None

        rotated = response.refresh_token not in (None, refresh_token)
        self._emit("refreshed", binding, "rotated" if rotated else "ok")

        return _credential(name, refreshed, now, refreshed=True)

    def _due(self, tokens: Mapping[str, Any], now: int) -> bool:
        expires_at = tokens.get("expires_at")
        if not isinstance(expires_at, int):
            return False

        # A margin longer than half the token's life would refresh on every fetch.
        issued_at = tokens.get("issued_at")
        margin = self._refresh_margin
        if isinstance(issued_at, int):
            margin = min(margin, max(expires_at - issued_at, 0) // 2)

        return expires_at - margin <= now

    # Helpers

    def _connection(self, name: str) -> AnyConnection:
        config = self._connections().get(name)
        if config is None:
            raise UnknownConnection(name)

        return config

    def _oauth(self, name: str) -> OAuthConnection:
        config = self._connection(name)
        if not isinstance(config, OAuthConnection):
            raise UnknownConnection(name, expected="oauth")

        return config

    def _client_secret(self, name: str, config: OAuthConnection) -> str:
        value = self._secrets(config.client_secret)
        if value is None:
            raise SecretUnavailable(
                f"the client secret of connection {name!r} is not available: set "
                f"{describe_reference(config.client_secret)}",
                connection=name,
            )

        return value

    def _read_linked(self, binding: Binding) -> VaultRecord:
        assert binding.tenant is not None and binding.user is not None
        record = self.records.read(binding)
        if record is None:
            raise NotLinked(
                binding.connection,
                binding.tenant,
                binding.user,
                link_url=self.link_url(binding.connection),
            )

        if record.status == "broken":
            raise self._broken(binding, record.broken_reason or _REVOKED)

        return record

    def _broken(self, binding: Binding, reason: str) -> LinkBroken:
        assert binding.tenant is not None and binding.user is not None
        return LinkBroken(
            binding.connection,
            binding.tenant,
            binding.user,
            reason=reason,
            link_url=self.link_url(binding.connection),
        )

    def _rejected(self, binding: Binding, reason: str) -> LinkRejected:
        self._emit("link_rejected", binding, "rejected", LinkRejected.code)
        return LinkRejected(
            f"the link to connection {binding.connection!r} was not completed: {reason}",
            connection=binding.connection,
            tenant=binding.tenant,
            user=binding.user,
        )

    def _check_issuer(
        self, binding: Binding, metadata: ProviderMetadata, issuer: str | None
    ) -> None:
        # RFC 9207 §2.4: clients "MUST then decode the value from its
        # application/x-www-form-urlencoded form and compare the result to the issuer
        # identifier of the authorization server where the authorization request was sent
        # to", and "MUST reject authorization responses without the iss parameter from
        # authorization servers that indicate support".
        if issuer is None:
            if metadata.iss_parameter_supported:
                raise self._rejected(binding, "the provider's response names no issuer")
            return

        if metadata.issuer is not None and issuer != metadata.issuer:
            raise self._rejected(binding, "the response comes from another issuer")

    def _store_link(self, binding: Binding, payload: Mapping[str, Any]) -> bool:
        """Store a fresh link, replacing any earlier one; True when it replaced one."""
        for _ in range(_WRITE_ATTEMPTS):
            try:
                record = self.records.read(binding)
            except DecryptionFailed:
                # A record that does not belong here is replaced by the user's new link.
                self.records.delete(binding)
                continue

            if record is None:
                if self.records.create(binding, payload):
                    return False
                continue

            if self.records.replace(record, payload=payload, status="linked") is not None:
                return True

        raise VaultError(
            "the link kept changing while it was stored", connection=binding.connection
        )

    def _revoke(
        self, name: str, config: OAuthConnection, tokens: Mapping[str, Any]
    ) -> tuple[Revocation, str | None]:
        try:
            metadata = self._provider.metadata(name, config)
            if metadata.revocation_endpoint is None:
                return "not_offered", None

            secret = self._client_secret(name, config)
            refresh_token, access_token = tokens.get("refresh_token"), tokens.get("access_token")
            if isinstance(refresh_token, str) and refresh_token:
                self._provider.revoke(
                    name, metadata, config, secret, refresh_token, hint="refresh_token"
                )
            elif isinstance(access_token, str) and access_token:
                self._provider.revoke(
                    name, metadata, config, secret, access_token, hint="access_token"
                )
                return "revoked", None
            else:
                return "nothing_to_revoke", None
        except ProviderError as error:
            return "failed", error.error or error.code
        except SecretUnavailable as error:
            return "failed", error.code

        # RFC 7009 §2.1: revoking a refresh token "SHOULD also invalidate all access tokens
        # based on the same authorization grant". The access token is revoked too for a
        # provider that doesn't, but many can't revoke self-contained access tokens
        # (unsupported_token_type, §2.2.1): they expire on their own, and that is no failure.
        if isinstance(access_token, str) and access_token:
            try:
                self._provider.revoke(
                    name, metadata, config, secret, access_token, hint="access_token"
                )
            except ProviderError as error:
                logger.info(
                    "vault revocation of the access token of connection=%s not done: %s",
                    name,
                    error.error or error.code,
                )

        return "revoked", None

    def _unlinked(self, binding: Binding, revocation: Revocation, error: str | None) -> Unlinked:
        assert binding.tenant is not None and binding.user is not None
        self._emit("unlinked", binding, revocation, error)
        return Unlinked(
            binding.connection,
            binding.tenant,
            binding.user,
            was_linked=True,
            revocation=revocation,
            revocation_error=error,
        )

    def _fetch_api_key(self, name: str, config: ApiKeyConnection) -> Credential:
        record = self.records.read(Binding("api_key", name))
        if record is None or record.sealed is None:
            raise ApiKeyMissing(
                f"the vault holds no key for connection {name!r}; `fleetid serve` reads it "
                f"at start from {describe_reference(config.key)}",
                connection=name,
            )

        key = self.records.open(record).get("key")
        if not isinstance(key, str) or not key:
            raise DecryptionFailed(f"the stored key of connection {name!r} is malformed")

        return Credential(
            connection=name,
            kind="api_key",
            secret=key,
            header=config.header,
            prefix=config.prefix,
            expires_at=None,
            expires_in=None,
            scopes=(),
        )

    def _put_api_key(self, binding: Binding, key: str) -> bool:
        payload = {"key": key, "stored_at": unix_now(self._clock)}
        for _ in range(_WRITE_ATTEMPTS):
            record = self.records.read(binding)
            if record is None:
                if self.records.create(binding, payload):
                    self._emit("api_key_stored", binding, "ok")
                    return True
                continue

            if record.sealed is not None:
                held = self.records.open(record).get("key")
                if isinstance(held, str) and hmac.compare_digest(held, key):
                    return False

            if self.records.replace(record, payload=payload) is not None:
                self._emit("api_key_stored", binding, "replaced")
                return True

        raise VaultError(
            "the API key kept changing while it was stored", connection=binding.connection
        )

    def _rewrap_quietly(self, record: VaultRecord) -> None:
        # A record read under an older master key moves to the newest on the way, so the
        # records in use are rotated even before a walk reaches them.
        if record.sealed is None or not self.records.envelope.needs_rewrap(record.sealed):
            return

        try:
            self.records.rewrap(record)
        except VaultError as error:
            logger.warning(
                "vault re-wrap of connection=%s failed: %s", record.binding.connection, error.code
            )

    def _emit(self, event: str, binding: Binding, outcome: str, reason: str | None = None) -> None:
        logger.info(
            "vault %s connection=%s tenant=%s user=%s outcome=%s reason=%s",
            event,
            binding.connection,
            binding.tenant,
            binding.user,
            outcome,
            reason,
        )
        if self._on_event is None:
            return

        try:
            self._on_event(
                VaultEvent(
                    event, binding.connection, binding.tenant, binding.user, outcome, reason
                )
            )
        except Exception:
            # The audit sink failing must not leave a lease held or a link half-written.
            logger.exception("vault event sink failed on %s", event)


def _credential(name: str, tokens: Mapping[str, Any], now: int, *, refreshed: bool) -> Credential:
    expires_at = tokens.get("expires_at")
    expires_at = expires_at if isinstance(expires_at, int) else None
    scopes = tokens.get("scopes")

    return Credential(
        connection=name,
        kind="oauth",
        secret=str(tokens["access_token"]),
        header="Authorization",
        prefix="Bearer ",
        expires_at=expires_at,
        expires_in=None if expires_at is None else max(expires_at - now, 0),
        scopes=tuple(scopes) if isinstance(scopes, list) else (),
        refreshed=refreshed,
    )


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _error_code(value: str) -> str:
    # Only a well-formed code is repeated; the parameter arrived through the browser.
    code = value.strip()
    if code and len(code) <= 64 and all(c.isalnum() or c in "_.-" for c in code):
        return code

    return "unrecognised_error"


def _callback_parameters(callback: str | Mapping[str, str]) -> dict[str, str]:
    if isinstance(callback, Mapping):
        return {str(name): str(value) for name, value in callback.items()}

    query = urlsplit(callback).query if "?" in callback or "://" in callback else callback
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, max_num_fields=50):
        # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than
        # once."
        if name in parameters:
            raise LinkRejected(f"the callback repeats the parameter {name!r}")
        parameters[name] = value

    return parameters
