"""What every endpoint shares: the live revision, the store, the keys, the clock.

`LiveRevision` is how a policy change lands atomically: a request reads the revision once,
at its start, and uses that one object to the end, while a reload replaces the reference
whole. No request ever sees half of one revision and half of another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetid.fleet.compile import Revision
from fleetid.server.audit import AuditSink
from fleetid.server.clients import ClientSecrets
from fleetid.server.signin import SignIn
from fleetid.server.tokens import TokenService
from fleetid.store import Store
from fleetid.vault import Vault

__all__ = ["Endpoints", "LiveRevision", "ServerContext"]

MAX_BODY_BYTES = 64 * 1024


class LiveRevision:
    """The revision being served, switched whole."""

    def __init__(self, revision: Revision) -> None:
        self._revision = revision
        self._lock = threading.Lock()

    def get(self) -> Revision:
        return self._revision

    def switch(self, revision: Revision) -> bool:
        """Serve `revision` from the next request on; False when it is already live."""
        with self._lock:
            if revision.hash == self._revision.hash:
                return False
            self._revision = revision
            return True


@dataclass(frozen=True)
class Endpoints:
    issuer: str

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    @property
    def authorization(self) -> str:
        return self.url("/authorize")

    @property
    def token(self) -> str:
        return self.url("/token")

    @property
    def introspection(self) -> str:
        return self.url("/introspect")

    @property
    def revocation(self) -> str:
        return self.url("/revoke")

    @property
    def userinfo(self) -> str:
        return self.url("/userinfo")

    @property
    def jwks(self) -> str:
        return self.url("/jwks.json")

    @property
    def connection_callback(self) -> str:
        """The one redirect URI fleetid registers at every third-party provider."""
        return self.url("/connections/callback")

    def connection_link(self, connection: str) -> str:
        return self.url(f"/connections/{connection}/link")

    @property
    def assertion_audiences(self) -> frozenset[str]:
        """What a private_key_jwt assertion may name as its audience.

        RFC 7523 §3: the audience identifies the authorization server; the token endpoint
        URL is a customary value, and the issuer identifier the one OIDC recommends.
        """
        return frozenset({self.issuer, self.token, self.introspection, self.revocation})


@dataclass
class ServerContext:
    endpoints: Endpoints
    live: LiveRevision
    store: Store
    tokens: TokenService
    secrets: ClientSecrets
    audit: AuditSink
    signin: SignIn
    clock: Callable[[], float] = field(default=time.time)
    max_body: int = MAX_BODY_BYTES
    vault: Vault | None = None

    @property
    def issuer(self) -> str:
        return self.endpoints.issuer
