"""What the vault's tests share beside fixtures: the clock, the envelope kits, counters."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
from peerkit import CLIENT_ID, SCOPES, Peer

from fleetid.fleet.model import OAuthConnection
from fleetid.vault import Envelope, KmsEnvelope, LocalEnvelope

FLEET = "acme-fleet"
REDIRECT_URI = "http://127.0.0.1:8787/connections/callback"
SECRET_VARIABLE = "PEER_CLIENT_SECRET"


class MovableClock:
    """Wall-clock time plus an offset that a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# Envelope providers, each able to rotate its master key.


class LocalKit:
    """LocalEnvelope on a file; each `envelope()` is a new instance, as another process."""

    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = path

    def envelope(self) -> Envelope:
        return LocalEnvelope(self.path)

    def rotate(self) -> Envelope:
        envelope = LocalEnvelope(self.path)
        envelope.rotate_master_key()
        return envelope

    def retire(self, key_id: str) -> Envelope:
        envelope = LocalEnvelope(self.path)
        envelope.retire_master_key(key_id)
        return envelope


class KmsKit:
    """KmsEnvelope on moto; rotating creates a new KMS key and keeps the old for decryption."""

    name = "kms"

    def __init__(self, kms: Any) -> None:
        self.kms = kms
        self.keys = [self._create()]

    def _create(self) -> str:
        metadata = self.kms.create_key(Description="fleetid vault")["KeyMetadata"]
        return str(metadata["Arn"])

    def envelope(self) -> Envelope:
        return KmsEnvelope(self.kms, self.keys[-1], previous_key_ids=self.keys[-2::-1])

    def rotate(self) -> Envelope:
        self.keys.append(self._create())
        return self.envelope()

    def retire(self, key_id: str) -> Envelope:
        self.keys.remove(key_id)
        return self.envelope()


EnvelopeKit = LocalKit | KmsKit


class TokenCalls:
    """Counts the requests an httpx client sends to the token endpoint, by grant type."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.grants: list[str] = []

    def __call__(self, request: httpx.Request) -> None:
        if not request.url.path.endswith("/token"):
            return

        body = request.read().decode()
        grant = next(
            (part.split("=", 1)[1] for part in body.split("&") if part.startswith("grant_type=")),
            "?",
        )
        with self._lock:
            self.grants.append(grant)

    @property
    def refreshes(self) -> int:
        with self._lock:
            return self.grants.count("refresh_token")


def oauth_connection(peer: Peer, **changes: Any) -> OAuthConnection:
    document: dict[str, Any] = {
        "kind": "oauth",
        "provider": {"discovery_url": peer.discovery_url},
        "client_id": CLIENT_ID,
        "client_secret": {"env": SECRET_VARIABLE},
        "scopes": list(SCOPES),
        "pkce": True,
    }
    document.update(changes)
    return OAuthConnection.model_validate(document)
