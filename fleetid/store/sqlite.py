"""The storage contract on one SQLite file, for ``fleetid serve`` and tests.

One file holds two tables: ``records`` keyed by (namespace, key), and ``audit`` indexed by
(agent, time) and by time. The file is opened in WAL mode so that readers never wait for the
writer, and every connection has a busy timeout so that writers from other threads and other
processes queue for the lock instead of failing at once.

The server calls the store from a thread pool, and a connection must not run two statements
at once, so each operation borrows a connection from a small pool and returns it afterwards.
Worker threads may come and go; the number of open connections follows the number of
operations in flight, not the number of threads ever seen.

Every operation is one SQL statement, which SQLite runs as its own transaction under the
file's write lock: ``redeem`` is a single ``DELETE ... RETURNING``, so of many concurrent
redeemers, in any thread or process, exactly one deletes the row and receives it.

``get_many`` remembers what it read, as long as nothing was committed since: a connection that
never writes asks ``PRAGMA data_version``, which changes whenever any other connection, in
this process or another, commits. That question takes SQLite's read lock as a query does,
but no lookup, decoding or row; the token endpoint reads a token's revocation and sign-in
this way on every exchange. What is remembered is the stored text, decoded anew for each
caller, so no caller can change what the next one reads.

Expired rows are invisible to every statement through its ``WHERE`` clause. They are removed
opportunistically: at most once per ``purge_interval``, a ``create`` first deletes a bounded
batch of them; ``purge_expired`` removes all of them on demand.

The file holds sign-ins (names, emails, groups) and keys that are live sign-in cookies, so it
is created readable by its owner only (0600), and a file of ours found open to others is
closed to them. SQLite creates the ``-wal`` and ``-shm`` files with the database file's
permissions, so they follow.
"""

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

from fleetid.store.base import (
    Clock,
    Record,
    Store,
    decode_object,
    encode_audit_event,
    encode_value,
    unix_now,
    validate_address,
    validate_audit_query,
    validate_batch,
    validate_expires_at,
    validate_namespace,
    validate_version,
)
from fleetid.store.errors import StoreError, StoreUnavailableError

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS records (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        version INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (namespace, key)
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS records_by_expiry
        ON records (expires_at) WHERE expires_at IS NOT NULL
    """,
    """
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        agent TEXT NOT NULL,
        event TEXT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS audit_by_agent ON audit (agent, time)",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time)",
)

_PURGE_BATCH: Final = 1000
_SCAN_PAGE: Final = 500
_OWNER_ONLY: Final = 0o600
_COMPANIONS: Final = ("", "-wal", "-shm")
_IDLE_CONNECTIONS: Final = 8
_WAL_RETRY_PAUSE: Final = 0.01
_REMEMBERED_RECORDS: Final = 4096

# A row as stored: the value's JSON text, its version and its expiry.
_Row = tuple[str, int, int | None]

_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class SQLiteStore(Store):
    """The storage contract on one SQLite file, shared by threads and processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        purge_interval: float = 60.0,
        clock: Clock = time.time,
    ) -> None:
        """Open, and create if needed, the store at ``path``.

        ``busy_timeout`` is how many seconds a write waits for another writer before it fails
        with ``StoreUnavailableError``.
        """
        self._path = os.fspath(path)
        if self._path == ":memory:" or not self._path:
            raise ValueError("SQLiteStore needs a file: each connection would get its own memory")

        self._busy_timeout = busy_timeout
        self._purge_interval = purge_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._next_purge = float("-inf")
        self._memory_lock = threading.Lock()
        self._watcher: sqlite3.Connection | None = None
        self._remembered_version: int | None = None
        # What get_many read at `_remembered_version`; None where no record was found.
        self._remembered: dict[tuple[str, str], _Row | None] = {}

        try:
            _create_owner_only(self._path)
        except OSError as exc:
            raise StoreError("SQLite store file could not be created") from exc

        try:
            with self._connection("open") as connection:
                self._create_schema(connection)
        except BaseException:
            self.close()
            raise

    def create(
        self, namespace: str, key: str, value: Mapping[str, Any], *, expires_at: int | None
    ) -> bool:
        validate_address(namespace, key)
        validate_expires_at(expires_at)
        encoded = encode_value(value)
        now = unix_now(self._clock)

        with self._connection("create") as connection:
            self._purge_if_due(connection)

            # The upsert may only overwrite an expired row. Over a live one its WHERE is false,
            # nothing is written and RETURNING yields no row.
            rows = connection.execute(
                """
                INSERT INTO records (namespace, key, value, version, expires_at)
                VALUES (?, ?, ?, 1, ?)
                ON CONFLICT (namespace, key) DO UPDATE
                    SET value = excluded.value, version = 1, expires_at = excluded.expires_at
                    WHERE records.expires_at IS NOT NULL AND records.expires_at <= ?
                RETURNING version
                """,
                (namespace, key, encoded, expires_at, now),
            ).fetchall()

        return bool(rows)

    def get(self, namespace: str, key: str) -> Record | None:
        validate_address(namespace, key)
        now = unix_now(self._clock)

        with self._connection("get") as connection:
            row = connection.execute(
                """
                SELECT value, version, expires_at FROM records
                WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)
                """,
                (namespace, key, now),
            ).fetchone()

        return None if row is None else _record(row)

    def get_many(self, addresses: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        distinct = validate_batch(addresses)
        if not distinct:
            return {}
        now = unix_now(self._clock)
        # Asked before anything is read, so that what is read is at least this recent.
        version = self._data_version()
        found = self._recall(distinct, version)
        if found is None:
            # All of them, so that one answer never mixes two moments of the file.
            found = self._read_many(distinct, now)
            self._remember(distinct, found, version)

        return {
            address: _record(row)
            for address, row in found.items()
            if row[2] is None or row[2] > now
        }

    def _read_many(
        self, addresses: list[tuple[str, str]], now: int
    ) -> dict[tuple[str, str], _Row]:
        # One statement, so one read transaction, whatever the number of records. The text
        # is the same condition repeated; every value is a bound parameter.
        matches = " OR ".join(["(namespace = ? AND key = ?)"] * len(addresses))
        parameters = [part for address in addresses for part in address]

        query = (
            "SELECT namespace, key, value, version, expires_at FROM records "  # noqa: S608
            f"WHERE ({matches}) AND (expires_at IS NULL OR expires_at > ?)"
        )

        with self._connection("get_many") as connection:
            rows = connection.execute(query, (*parameters, now)).fetchall()

        return {(row[0], row[1]): (row[2], row[3], row[4]) for row in rows}

    def _data_version(self) -> int:
        """SQLite's count of commits by other connections, on one that never writes."""
        try:
            with self._memory_lock:
                if self._closed:
                    raise StoreError("SQLite store is closed")
                if self._watcher is None:
                    self._watcher = sqlite3.connect(
                        self._path,
                        timeout=self._busy_timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                (version,) = self._watcher.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise StoreUnavailableError("SQLite store was busy during get_many") from exc
            raise StoreError("SQLite store failed during get_many") from exc
        return int(version)

    def _recall(
        self, addresses: list[tuple[str, str]], version: int
    ) -> dict[tuple[str, str], _Row] | None:
        """The rows of these addresses remembered at `version`; None unless all of them are."""
        found: dict[tuple[str, str], _Row] = {}
        with self._memory_lock:
            if self._remembered_version != version:
                # Something was committed: everything remembered may be out of date.
                self._remembered.clear()
                self._remembered_version = version
                return None
            remembered = self._remembered
            for address in addresses:
                if address not in remembered:
                    return None
                row = remembered[address]
                if row is not None:
                    found[address] = row
        return found

    def _remember(
        self,
        addresses: list[tuple[str, str]],
        read: Mapping[tuple[str, str], _Row],
        version: int,
    ) -> None:
        with self._memory_lock:
            # Another reader saw a later version meanwhile: what was read here may be older
            # than that, so it is not kept under it.
            if self._remembered_version != version:
                return
            remembered = self._remembered
            if len(remembered) + len(addresses) > _REMEMBERED_RECORDS:
                remembered.clear()
            for address in addresses:
                remembered[address] = read.get(address)

    def replace(
        self,
        namespace: str,
        key: str,
        value: Mapping[str, Any],
        *,
        version: int,
        expires_at: int | None,
    ) -> bool:
        validate_address(namespace, key)
        validate_version(version)
        validate_expires_at(expires_at)
        encoded = encode_value(value)
        now = unix_now(self._clock)

        with self._connection("replace") as connection:
            # Compare-and-set: the row changes only if it is live and still at the version
            # the caller read; otherwise no row matches and the caller lost the race.
            cursor = connection.execute(
                """
                UPDATE records SET value = ?, version = version + 1, expires_at = ?
                WHERE namespace = ? AND key = ? AND version = ?
                    AND (expires_at IS NULL OR expires_at > ?)
                """,
                (encoded, expires_at, namespace, key, version, now),
            )

        return cursor.rowcount == 1

    def redeem(self, namespace: str, key: str) -> Record | None:
        validate_address(namespace, key)
        now = unix_now(self._clock)

        with self._connection("redeem") as connection:
            # One statement reads and deletes under the write lock, so a second redeemer finds
            # no row: this is what makes an authorization code single-use.
            rows = connection.execute(
                """
                DELETE FROM records
                WHERE namespace = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)
                RETURNING value, version, expires_at
                """,
                (namespace, key, now),
            ).fetchall()

        return _record(rows[0]) if rows else None

    def delete(self, namespace: str, key: str) -> None:
        validate_address(namespace, key)

        with self._connection("delete") as connection:
            connection.execute(
                "DELETE FROM records WHERE namespace = ? AND key = ?", (namespace, key)
            )

    def scan(self, namespace: str) -> Iterator[tuple[str, Record]]:
        validate_namespace(namespace)
        after = ""

        while True:
            now = unix_now(self._clock)
            # A page per statement, resumed after the last key: no connection or read
            # transaction stays open while the caller works on what it was given.
            with self._connection("scan") as connection:
                rows = connection.execute(
                    """
                    SELECT key, value, version, expires_at FROM records
                    WHERE namespace = ? AND key > ? AND (expires_at IS NULL OR expires_at > ?)
                    ORDER BY key LIMIT ?
                    """,
                    (namespace, after, now, _SCAN_PAGE),
                ).fetchall()

            for row in rows:
                yield row[0], _record(row[1:])

            if len(rows) < _SCAN_PAGE:
                return

            after = rows[-1][0]

    def append_audit(self, event: Mapping[str, Any]) -> None:
        event_time, agent, encoded = encode_audit_event(event)

        with self._connection("append_audit") as connection:
            connection.execute(
                "INSERT INTO audit (time, agent, event) VALUES (?, ?, ?)",
                (event_time, agent, encoded),
            )

    def audit(
        self, *, agent: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        validate_audit_query(agent, since, limit)
        # Audit times are never negative, so "since the beginning" is since zero.
        earliest = 0.0 if since is None else float(since)

        with self._connection("audit") as connection:
            if agent is None:
                rows = connection.execute(
                    "SELECT event FROM audit WHERE time >= ? ORDER BY time, id LIMIT ?",
                    (earliest, limit),
                ).fetchall()
            else:
                rows = connection.execute(
                    """
                    SELECT event FROM audit WHERE agent = ? AND time >= ?
                    ORDER BY time, id LIMIT ?
                    """,
                    (agent, earliest, limit),
                ).fetchall()

        return [decode_object(event) for (event,) in rows]

    def purge_expired(self) -> int:
        """Delete every expired record now and return how many there were."""
        purged = 0
        with self._connection("purge") as connection:
            while True:
                batch = self._purge_batch(connection)
                purged += batch
                if batch < _PURGE_BATCH:
                    break

        return purged

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        with self._memory_lock:
            watcher, self._watcher = self._watcher, None
            self._remembered.clear()
            self._remembered_version = None
        if watcher is not None:
            watcher.close()

        # Connections on loan are closed as they come back.
        for connection in idle:
            connection.close()

    @contextmanager
    def _connection(self, operation: str) -> Iterator[sqlite3.Connection]:
        """Lend a connection for one operation, and turn SQLite's errors into ours."""
        try:
            connection = self._borrow()
            try:
                yield connection
            finally:
                self._give_back(connection)
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise StoreUnavailableError(f"SQLite store was busy during {operation}") from exc

            raise StoreError(f"SQLite store failed during {operation}") from exc

    def _borrow(self) -> sqlite3.Connection:
        with self._lock:
            if self._closed:
                raise StoreError("SQLite store is closed")

            if self._idle:
                return self._idle.pop()

        # Autocommit (isolation_level=None): each statement is its own transaction, and no
        # transaction stays open between operations to hold the lock. A connection is used by
        # one thread at a time but not always the same one, hence check_same_thread=False.
        connection = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            # NOTE: FULL, not NORMAL, although WAL would allow it: with NORMAL a power cut can
            # undo the last commits, and a redeemed code would become redeemable again.
            connection.execute("PRAGMA synchronous = FULL")
        except BaseException:
            connection.close()
            raise

        return connection

    def _give_back(self, connection: sqlite3.Connection) -> None:
        # A connection left inside a transaction would hold the lock for its next borrower.
        reusable = not connection.in_transaction
        with self._lock:
            if reusable and not self._closed and len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append(connection)
                return

        connection.close()

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        self._enable_wal(connection)

        # IMMEDIATE takes the write lock first, so two processes opening a new file at once
        # do not both find it empty.
        connection.execute("BEGIN IMMEDIATE")
        try:
            (found,) = connection.execute("PRAGMA user_version").fetchone()
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite store has schema version {found}; this fleetid reads up to "
                    f"{SCHEMA_VERSION}"
                )

            for statement in _SCHEMA:
                connection.execute(statement)

            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

        connection.execute("COMMIT")

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        # WAL lets readers proceed while one connection writes; it is a property of the file,
        # so asking again from another process is harmless. Switching needs the file to itself
        # for a moment, and SQLite reports a concurrent switch as busy at once rather than
        # through the busy timeout, so the wait for it happens here.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise

            time.sleep(_WAL_RETRY_PAUSE)

    def _purge_if_due(self, connection: sqlite3.Connection) -> None:
        now = self._clock()
        if now < self._next_purge:
            return

        # Two threads may both find a purge due; the second deletes little, which is cheaper
        # than a lock on every create.
        self._next_purge = now + self._purge_interval
        purged = self._purge_batch(connection)
        if purged:
            logger.debug("purged %d expired records", purged)

    def _purge_batch(self, connection: sqlite3.Connection) -> int:
        # A bounded batch keeps a purge inside one create short, however much has expired.
        cursor = connection.execute(
            """
            DELETE FROM records WHERE rowid IN (
                SELECT rowid FROM records WHERE expires_at <= ? LIMIT ?
            )
            """,
            (unix_now(self._clock), _PURGE_BATCH),
        )

        return cursor.rowcount


def _create_owner_only(path: str) -> None:
    """Create the database file 0600 before SQLite opens it; close an existing one of ours
    to other users, and its -wal and -shm files with it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, _OWNER_ONLY)
    os.close(descriptor)

    for companion in _COMPANIONS:
        try:
            status = os.stat(path + companion)
        except FileNotFoundError:
            continue

        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077 and status.st_uid == os.geteuid():
            os.chmod(path + companion, mode & 0o700)


def _is_busy(exc: sqlite3.Error) -> bool:
    # Extended result codes carry the primary code in their low byte.
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


def _record(row: tuple[str, int, int | None]) -> Record:
    value, version, expires_at = row

    return Record(value=decode_object(value), version=version, expires_at=expires_at)
