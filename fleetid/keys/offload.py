"""Token signatures on native threads, awaited on the event loop that asked for them.

An RSA-2048 signature costs a few hundred microseconds, most of the CPU an RS256 token
takes. On the event loop's own thread it caps one server process at one core of tokens.
An ES256 signature is cheaper, but made on a loop under load it took 60-70 µs of the
loop's time, three times what it takes on a signing thread (20-25 µs): side by side, the
ES256 token exchange made 4,000-4,800 tokens a second with its signatures on the loop and
5,600-6,500 with them on two threads, the loop the limit both ways.
Python threads do not lift that cap: OpenSSL computes without the GIL, but each thread must
take the GIL back to return its signature, and on a loop that is never idle that hand-off
costs more than the signature it moved. `fleetid.keys._signpool` (C, built with the
package where a compiler and OpenSSL's headers are found) signs on POSIX threads that never
enter the interpreter; this module connects its eventfd to the loop.

The loop feeds the threads: every signature starts as a request the loop has parsed and
decided. Where they share its cores, a thread that outranks the loop takes the time it
needed to ask for the next signature, so the threads run a few nice levels below it and
take what the loop leaves (Linux keeps a nice value per thread).

Without the compiled module, or off the loop the threads were first used from, signatures
are made in place, as `KeyCustody.sign` makes them; either way a signature has the form
RFC 7518 gives it (ES256 as R || S).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from fleetid.keys.algorithms import PrivateKey
from fleetid.keys.errors import KeyCustodyError

__all__ = [
    "SIGNING_NICENESS",
    "SigningThreads",
    "native_signing_available",
    "signing_threads_for_this_machine",
]

logger = logging.getLogger(__name__)

SIGNING_NICENESS = 5
"""How many nice levels the signing threads run below the event loop.

Side by side under RS256 token exchange load on two cores, two threads five levels below
the loop made 2-12% more tokens than one thread; at the loop's own level they made a sixth
fewer, and ten levels below, fewer again: the loop then waited for its signatures.
"""


class _NativePool(Protocol):
    def submit(self, ticket: int, data: bytes, /) -> None: ...
    def collect(self) -> list[tuple[int, bytes | None]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class _PoolType(Protocol):
    def __call__(self, key_der: bytes, threads: int, *, niceness: int) -> _NativePool: ...


_Pool: _PoolType | None
try:
    from fleetid.keys._signpool import Pool as _Pool
except ImportError:  # built without a compiler: every signature is made in place
    _Pool = None


def native_signing_available() -> bool:
    """Whether the compiled signing threads were built with this installation."""
    return _Pool is not None


def signing_threads_for_this_machine() -> int:
    """A signing thread per core, two at most.

    The loop's share of an RS256 token (HTTP, policy, storage) is about as much CPU as the
    signature, and of an ES256 token several times more, so more than two signing threads
    would wait for a loop that cannot keep up.
    Where they share the loop's cores, they run below its priority (`SIGNING_NICENESS`).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


class SigningThreads:
    """Native threads that make one custody's signatures, key by key.

    The first `sign` call binds them to its running loop. A key gets its threads when it
    first signs; when another key signs (a rotation), the threads of the key before finish
    what they hold and stop, so a retired private key is not kept in a second place.
    """

    def __init__(self, threads: int, *, niceness: int = SIGNING_NICENESS) -> None:
        if threads < 1:
            raise ValueError("signing threads must be at least 1")
        self._threads = threads
        self._niceness = niceness
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kid: str | None = None
        self._pool: _NativePool | None = None
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._tickets = itertools.count()

    def usable(self) -> bool:
        """Whether a signature asked for now would be made on the threads."""
        if _Pool is None:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._loop is None or (self._loop is loop and not loop.is_closed())

    async def sign(self, kid: str, key: PrivateKey, signing_input: bytes) -> bytes:
        """The JWS signature of `signing_input` by `key` (RS256 for an RSA key, ES256 for a
        P-256 key), whose key id is `kid`.

        The caller checks `usable()` first; this raises `RuntimeError` when the threads
        belong to another loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("these signing threads answer another event loop")

        pool = self._pool if self._pool is not None and self._kid == kid else None
        if pool is None:
            pool = self._start(kid, key)
        ticket = next(self._tickets)
        waiting: asyncio.Future[bytes] = loop.create_future()
        self._waiting[ticket] = waiting
        pool.submit(ticket, signing_input)
        return await waiting

    def close(self) -> None:
        """Finish the signatures in flight and stop the threads."""
        self._stop()

    def _start(self, kid: str, key: PrivateKey) -> _NativePool:
        assert _Pool is not None and self._loop is not None
        self._stop()
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        pool = _Pool(der, self._threads, niceness=self._niceness)
        self._loop.add_reader(pool.fileno(), self._collect)
        self._pool, self._kid = pool, kid
        logger.info("key %s signs on %d native thread(s)", kid, self._threads)
        return pool

    def _stop(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool, self._kid = None, None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(pool.fileno())
        # close() waits for the queued signatures, so the collect after it answers them all.
        pool.close()
        self._answer(pool)

    def _collect(self) -> None:
        if self._pool is not None:
            self._answer(self._pool)

    def _answer(self, pool: _NativePool) -> None:
        for ticket, signature in pool.collect():
            waiting = self._waiting.pop(ticket, None)
            if waiting is None or waiting.done():
                # Its request was cancelled (the client left); the signature goes unused.
                continue
            if signature is None:
                waiting.set_exception(KeyCustodyError("OpenSSL failed to make a signature"))
            else:
                waiting.set_result(signature)
