"""`fleetid serve`: the identity server on one machine, with embedded state.

Everything lives in the state folder, which is kept 0700: `store.sqlite3` (WAL, 0600),
`keys.json` (the signing key ring, 0600, generated on first start), `clients.json` (the
agents' client secrets, 0600, generated on first start and kept across restarts),
`vault.key` (the connections vault's master key, 0600), `serve.json` (the fleet file being
served, which the other commands take as their default `--fleet`), `audit.jsonl` and
`serve.lock`. API keys of connections are read from their `{env: ...}` references at start
and stored encrypted.

A state folder is one server's: `serve.lock` is held with `flock` for as long as the server
runs, and a second `fleetid serve` on the same folder is refused before it reads anything.
Two servers would each make the secrets of agents new to the fleet, and the one whose file
was replaced last would refuse the secrets `fleetid credentials` prints.

There is one key ring per signing algorithm. `keys.json` holds the ring of the algorithm the
state folder was first started with; any other algorithm, whether a resource asks for it or
`identity.signing.algorithm` changes later, has its ring in `keys-<algorithm>.json`. So a
token is always signed with a key of the algorithm that discovery and the JWKS announce.

A watcher polls fleet.yaml and policies/ once a second. A change is compiled; a valid one
is switched in whole (`LiveRevision`), an invalid one is refused with the validator's
errors in the log while the running revision keeps serving. Switching in needs more than a
valid fleet (the key ring of a new algorithm, secrets for new agents, the store); when one of
those fails, the revision is refused as a whole, the failure is logged once, and the switch
is tried again at each poll until it succeeds or the fleet changes. It watches the key rings
too: after `fleetid keys rotate`, the running server signs with the new active key.

An agent removed from the fleet loses its sign-ins: their refresh tokens stop working and
do not come back if the agent does. Access tokens already issued to it stay valid at
resource servers until they expire.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetid.fleet.compile import Revision, compile_sources
from fleetid.fleet.load import FleetInvalid, read_sources
from fleetid.keys import (
    ALGORITHMS,
    Algorithm,
    JsonFilePersistence,
    KeyCustody,
    KeyCustodyError,
    KeyRing,
    KeyRingInvalid,
    LocalKeyFile,
)
from fleetid.server.audit import JsonlAudit
from fleetid.server.clients import LocalClientSecrets, confidential_clients
from fleetid.server.context import Endpoints, LiveRevision, ServerContext
from fleetid.server.removals import end_sign_ins, sign_ins_ending
from fleetid.server.signin import DevUserSignIn
from fleetid.server.tokens import TokenService, signing_algorithms
from fleetid.store import SQLiteStore, StoreError
from fleetid.vault import LocalEnvelope, Vault

__all__ = [
    "FileMarks",
    "LocalState",
    "LocalStateError",
    "RevisionWatcher",
    "ServingLock",
    "fleet_marks",
    "load_key_ring",
    "open_local",
]

logger = logging.getLogger("fleetid.serve")

# What a switch can run into that the person running the server can fix: a key ring file,
# a file or folder in the way, the store. Their messages name the file and the problem.
_FORESEEABLE = (KeyCustodyError, OSError, StoreError)


class LocalStateError(Exception):
    """The state folder cannot be used safely as it is."""


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

    @property
    def serve_lock(self) -> Path:
        return self.folder / "serve.lock"

    def key_ring(self, algorithm: Algorithm, *, default: Algorithm) -> Path:
        """The file of `algorithm`'s key ring; `default` is the fleet's signing algorithm,
        whose ring a new state folder keeps in `keys.json`."""
        named = self._named_ring(algorithm)
        first = _ring_algorithm(self.keys)
        if first == algorithm:
            return self.keys
        if first is None and algorithm == default and not named.exists():
            return self.keys
        return named

    def ring_algorithms(self) -> set[Algorithm]:
        """The algorithms whose key rings the folder holds; KeyRingInvalid for a ring file
        that cannot be read."""
        held = {algorithm for algorithm in ALGORITHMS if self._named_ring(algorithm).exists()}
        first = _ring_algorithm(self.keys)
        if first is not None:
            held.add(first)
        return held

    def _named_ring(self, algorithm: Algorithm) -> Path:
        return self.folder / f"keys-{algorithm}.json"

    def create(self) -> None:
        """Create the folder, or close an existing one to other users; LocalStateError
        when that cannot be done."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = self.folder.stat()
        mode = stat.S_IMODE(status.st_mode)
        if not mode & 0o077:
            return

        # The folder holds private keys, client secrets and sign-ins; its mode is what keeps
        # other users of the machine out of all of them at once.
        if status.st_uid != os.geteuid():
            raise LocalStateError(
                f"state folder {self.folder} is open to other users (mode {mode:04o}) and "
                "belongs to another user: make it 0700, or choose another folder with --state"
            )
        try:
            os.chmod(self.folder, 0o700)
        except OSError as exc:
            raise LocalStateError(
                f"state folder {self.folder} is open to other users (mode {mode:04o}) and "
                f"could not be made 0700: {exc.strerror}"
            ) from exc
        logger.warning("state folder %s was mode %04o; it is 0700 now", self.folder, mode)

    def lock_for_serving(self) -> ServingLock:
        """Hold the folder for this process's server until `ServingLock.release` or the
        process's end; LocalStateError when another server holds it. The folder must exist."""
        path = self.serve_lock
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LocalStateError(f"cannot use {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _lock_holder(descriptor)
            os.close(descriptor)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LocalStateError(f"cannot lock {path}: {exc.strerror}") from exc
            raise LocalStateError(
                f"state folder {self.folder} is in use by another fleetid serve{holder}: "
                "stop it, or give this one another folder with --state"
            ) from None
        # Who holds it, for the message a second server prints; the lock is what counts.
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        return ServingLock(descriptor)


class ServingLock:
    """The `flock` a running server holds on its state folder's `serve.lock`; released when
    the `with` block it opens ends."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    def __enter__(self) -> ServingLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            # Closing the only descriptor of the lock releases it.
            os.close(descriptor)


def _lock_holder(descriptor: int) -> str:
    """The process id the holder wrote in the lock file, as ` (process N)`; empty when it
    cannot be told."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _ring_algorithm(path: Path) -> Algorithm | None:
    """The algorithm the ring in `path` signs with; None when there is no file."""
    stored = JsonFilePersistence(path).load()
    if stored is None:
        return None
    try:
        ring, _ = KeyRing.from_document(stored.document)
    except KeyRingInvalid as exc:
        raise KeyRingInvalid(f"key ring file {path}: {exc}") from exc
    return ring.active.alg


def load_key_ring(path: Path, algorithm: Algorithm) -> LocalKeyFile:
    """The key ring of `algorithm` kept at `path`, loaded now (or generated when there is
    none); KeyRingInvalid when the file holds a ring of another algorithm."""
    custody = LocalKeyFile(path, algorithm=algorithm)
    _, signing = custody.active_key()
    if signing != algorithm:
        raise KeyRingInvalid(
            f"key ring file {path} signs with {signing}, but it is the {algorithm} ring: "
            f"move it aside, and a new {algorithm} ring is made in its place"
        )
    return custody


def _custodies(state: LocalState, default: Algorithm) -> Callable[[Algorithm], KeyCustody]:
    def custody_for(algorithm: Algorithm) -> KeyCustody:
        # Loaded (or generated) here, before the token service publishes it: a ring that
        # cannot be used is refused while the keys being served stay as they are.
        return load_key_ring(state.key_ring(algorithm, default=default), algorithm)

    return custody_for


def open_local(
    fleet: str | Path, state: LocalState, issuer: str, *, revision: Revision | None = None
) -> ServerContext:
    """A server context on the state folder, for the fleet as it is now, or for `revision`
    when the caller has already compiled it from `fleet`."""
    if revision is None:
        revision = compile_sources(read_sources(fleet))
    state.create()
    secrets = LocalClientSecrets(state.clients)
    secrets.ensure(confidential_clients(revision.fleet))
    default = revision.fleet.identity.signing.algorithm
    tokens = TokenService(
        issuer.rstrip("/"), _custodies(state, default), default_algorithm=default
    )
    # The rings of algorithms this revision no longer signs with are loaded too: their keys
    # stay in the JWKS, and verify, while tokens they signed before a restart are unexpired.
    tokens.prepare(sorted(signing_algorithms(revision) | state.ring_algorithms()))
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
    named = [state.folder / f"keys-{algorithm}.json" for algorithm in ALGORITHMS]
    return [state.keys, *named]


FileMarks = tuple[tuple[str, int, int, int], ...]
"""What the watcher compares to tell that files changed: each one's path, times and size."""


def fleet_marks(fleet: str | Path) -> FileMarks:
    """The marks of the fleet file and its policies/ as they are now. Taken before the fleet
    is compiled, they let a `RevisionWatcher` see an edit made while the server started."""
    return _fingerprint(_fleet_files(Path(fleet)))


def _fingerprint(paths: list[Path]) -> FileMarks:
    marks = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            continue
        # The change time moves with a chmod too, which is how a refused key file is fixed.
        marks.append((str(path), status.st_mtime_ns, status.st_ctime_ns, status.st_size))
    return tuple(marks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class _Refusal:
    """A valid revision that could not be switched in, and why; it is tried again."""

    revision: Revision
    reason: str

    def repeats(self, revision: Revision, reason: str) -> bool:
        return (self.revision.hash, self.reason) == (revision.hash, reason)


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
        seen: FileMarks | None = None,
    ) -> None:
        """`seen`: the fleet's marks when the live revision was read (`fleet_marks`); by
        default, the marks as they are now."""
        self.fleet = Path(fleet)
        self.context = context
        self.interval = interval
        self.on_switch = on_switch
        self.state = state
        self._seen = fleet_marks(self.fleet) if seen is None else seen
        self._keys_seen = _fingerprint(_key_files(state))
        self._refused: _Refusal | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetid-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_keys()
                self.check()
            except Exception:
                # The server keeps serving whatever happens here, so the watcher keeps
                # watching: the next poll may find the cause gone.
                logger.exception("the fleet watcher failed; it keeps watching")

    def check_keys(self) -> bool:
        """Adopt the key rings if their files changed; True when they were reloaded."""
        current = _fingerprint(_key_files(self.state))
        if current == self._keys_seen:
            return False
        self._keys_seen = current
        try:
            self.context.tokens.reload_keys()
        except _FORESEEABLE as exc:
            logger.error(
                "reloading the key rings failed; the keys in memory keep signing: %s",
                _describe(exc),
            )
            return False
        except Exception:
            logger.exception("reloading the key rings failed; the keys in memory keep signing")
            return False
        logger.info("key rings reloaded")
        return True

    def check(self) -> bool:
        """Reload if the files changed, or retry a refused switch; True when a new revision
        went live."""
        current = fleet_marks(self.fleet)
        if current != self._seen:
            self._seen = current
            self._refused = None
            revision = self._compile()
            if revision is None:
                return False
        elif self._refused is not None:
            revision = self._refused.revision
        else:
            return False
        return self._switch(revision)

    def _compile(self) -> Revision | None:
        try:
            return compile_sources(read_sources(self.fleet))
        except FleetInvalid as invalid:
            live = self.context.live.get()
            logger.warning(
                "the edited fleet is invalid; revision %s keeps serving:\n%s",
                live.short,
                "\n".join(problem.format() for problem in invalid.problems),
            )
        except Exception:
            logger.exception("reloading the fleet failed; the running revision keeps serving")
        return None

    def _switch(self, revision: Revision) -> bool:
        live = self.context.live.get()
        before, after = set(live.fleet.agents), set(revision.fleet.agents)
        removed, added = sorted(before - after), sorted(after - before)
        try:
            ended = self._prepare(revision, removed, added)
        except _FORESEEABLE as exc:
            self._refuse(revision, live, _describe(exc), traceback=False)
            return False
        except Exception as exc:
            self._refuse(revision, live, f"unexpected {type(exc).__name__}", traceback=True)
            return False

        self._refused = None
        switched = self.context.live.switch(revision)
        if switched:
            logger.info("revision %s is live", revision.short)
        if removed:
            logger.warning(
                "agents removed from the fleet: %s; their sign-ins are revoked (%d), and "
                "access tokens already issued to them stay valid until they expire",
                ", ".join(removed),
                sum(ended[agent] for agent in removed),
            )
        returning = [agent for agent in added if ended[agent]]
        if returning:
            logger.warning(
                "agents back in the fleet had sign-ins from before their removal: %s; "
                "those are revoked",
                ", ".join(f"{agent} ({ended[agent]})" for agent in returning),
            )
        return switched

    def _prepare(self, revision: Revision, removed: list[str], added: list[str]) -> dict[str, int]:
        """Everything the revision needs before it serves; how many sign-ins each removed
        or added agent lost."""
        # A resource newly asking for another algorithm gets its keys published first.
        # NOTE: they stay published if a later step refuses the revision, as every next key
        # is published before it signs; the keys that sign stay as they are.
        self.context.tokens.prepare(signing_algorithms(revision))
        if self.on_switch is not None:
            self.on_switch(revision)
        # Last, being the one step that cannot be undone, and before the switch, so that a
        # failure refuses the revision.
        return end_sign_ins(self.context, sign_ins_ending(removed, added, revision))

    def _refuse(self, revision: Revision, live: Revision, reason: str, *, traceback: bool) -> None:
        # Tried again at every poll; said once per revision and reason, not every second.
        repeated = self._refused is not None and self._refused.repeats(revision, reason)
        self._refused = _Refusal(revision, reason)
        if repeated:
            return
        message = "revision %s was not switched in, and revision %s keeps serving: %s"
        if traceback:
            logger.exception(message, revision.short, live.short, reason)
        else:
            logger.error(message, revision.short, live.short, reason)
