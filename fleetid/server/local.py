"""`fleetid serve`: the identity server on one machine, with embedded state.

Everything lives in the state folder (mode 0700): `store.sqlite3` (WAL), `keys.json` (the
signing key ring, 0600, generated on first start), `clients.json` (the agents' client
secrets, 0600, generated on first start and kept across restarts), `vault.key` (the
connections vault's master key, 0600) and `audit.jsonl`. API keys of connections are read
from their `{env: ...}` references at start and stored encrypted.

A watcher polls fleet.yaml and policies/ once a second. A change is compiled; a valid one
is switched in whole (`LiveRevision`), an invalid one is refused with the validator's
errors in the log while the running revision keeps serving. It watches the key rings too:
after `fleetid keys rotate`, the running server signs with the new active key.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetInvalid, read_sources
from fleetid.keys import Algorithm, KeyCustody, LocalKeyFile
from fleetid.server.audit import JsonlAudit
from fleetid.server.clients import LocalClientSecrets
from fleetid.server.context import Endpoints, LiveRevision, ServerContext
from fleetid.server.signin import DevUserSignIn
from fleetid.server.tokens import TokenService, signing_algorithms
from fleetid.store import SQLiteStore
from fleetid.vault import LocalEnvelope, Vault

__all__ = ["LocalState", "RevisionWatcher", "open_local"]

logger = logging.getLogger("fleetid.serve")


@dataclass(frozen=True)
class LocalState:
    folder: Path

    @property
    def store(self) -> Path:
        return self.folder / "store.sqlite3"

    @property
    def keys(self) -> Path:
        return self.folder / "keys.json"

    @property
    def clients(self) -> Path:
        return self.folder / "clients.json"

    @property
    def audit(self) -> Path:
        return self.folder / "audit.jsonl"

    @property
    def vault_key(self) -> Path:
        return self.folder / "vault.key"

    def create(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def open_local(fleet: str | Path, state: LocalState, issuer: str) -> ServerContext:
    """A server context on the state folder, for the fleet as it is now."""
    revision = compile_sources(read_sources(fleet))
    state.create()
    secrets = LocalClientSecrets(state.clients)
    secrets.ensure(sorted(revision.fleet.agents))
    default = revision.fleet.identity.signing.algorithm

    def custody_for(algorithm: Algorithm) -> KeyCustody:
        path = state.keys if algorithm == default else state.folder / f"keys-{algorithm}.json"
        return LocalKeyFile(path, algorithm=algorithm)

    tokens = TokenService(issuer.rstrip("/"), custody_for, default_algorithm=default)
    tokens.prepare(signing_algorithms(revision))
    endpoints = Endpoints(issuer.rstrip("/"))
    live = LiveRevision(revision)
    store = SQLiteStore(state.store)
    vault = Vault(
        store,
        LocalEnvelope(state.vault_key),
        fleet=revision.fleet.identity.name,
        connections=lambda: live.get().fleet.connections,
        redirect_uri=endpoints.connection_callback,
        link_url=endpoints.connection_link("{connection}"),
    )
    loaded = vault.load_api_keys()
    for name in loaded.missing:
        logger.warning("connection %s has no key: its environment variable is not set", name)
    return ServerContext(
        endpoints=endpoints,
        live=live,
        store=store,
        tokens=tokens,
        secrets=secrets,
        audit=JsonlAudit(state.audit),
        signin=DevUserSignIn(),
        vault=vault,
    )


def _fleet_files(fleet: Path) -> list[Path]:
    paths = [fleet]
    folder = fleet.parent / "policies"
    if folder.is_dir():
        paths += sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return paths


def _key_files(state: LocalState | None) -> list[Path]:
    if state is None:
        return []
    return [state.keys, *sorted(state.folder.glob("keys-*.json"))]


def _fingerprint(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    marks = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            continue
        marks.append((str(path), status.st_mtime_ns, status.st_size))
    return tuple(marks)


class RevisionWatcher:
    """Recompiles the fleet when its files change, and switches the live revision."""

    def __init__(
        self,
        fleet: str | Path,
        context: ServerContext,
        *,
        interval: float = 1.0,
        on_switch: Callable[[Revision], None] | None = None,
        state: LocalState | None = None,
    ) -> None:
        self.fleet = Path(fleet)
        self.context = context
        self.interval = interval
        self.on_switch = on_switch
        self.state = state
        self._seen = _fingerprint(_fleet_files(self.fleet))
        self._keys_seen = _fingerprint(_key_files(state))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetid-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_keys()
            self.check()

    def check_keys(self) -> bool:
        """Adopt the key rings if their files changed; True when they were reloaded."""
        current = _fingerprint(_key_files(self.state))
        if current == self._keys_seen:
            return False
        self._keys_seen = current
        try:
            self.context.tokens.reload_keys()
        except Exception:
            logger.exception("reloading the key rings failed; the keys in memory keep signing")
            return False
        logger.info("key rings reloaded")
        return True

    def check(self) -> bool:
        """Reload if the files changed; True when a new revision went live."""
        current = _fingerprint(_fleet_files(self.fleet))
        if current == self._seen:
            return False
        self._seen = current
        try:
            revision = compile_sources(read_sources(self.fleet))
        except FleetInvalid as invalid:
            live = self.context.live.get()
            logger.warning(
                "the edited fleet is invalid; revision %s keeps serving:\n%s",
                live.short,
                "\n".join(problem.format() for problem in invalid.problems),
            )
            return False
        except Exception:
            logger.exception("reloading the fleet failed; the running revision keeps serving")
            return False
        # A resource newly asking for another algorithm gets its keys published first.
        self.context.tokens.prepare(signing_algorithms(revision))
        if self.on_switch is not None:
            self.on_switch(revision)
        switched = self.context.live.switch(revision)
        if switched:
            logger.info("revision %s is live", revision.short)
        return switched
