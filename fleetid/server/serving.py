"""Serving the ASGI application with uvicorn: one send per response, and a deadline for each
request to arrive.

uvicorn writes a response's status line and headers to the socket as soon as the
application starts the response, and its body as a second write. With `TCP_NODELAY` (set by
uvloop and asyncio alike) those are two segments: the client wakes twice and the sender pays
the kernel's transmit path twice, for responses of a few hundred bytes. Sending them as one
raised the token endpoint's throughput on loopback by 15-25% (`python -m bench.server`).

uvicorn has no option for it, so this module writes by hand the small piece that it lacks: a
transport that gathers what is written during one turn of the event loop and hands it to
the socket at the end of that turn as one write. Nothing waits longer than the turn it was
written in, so streamed bodies, `100 Continue` and pipelined responses leave as before; the
socket's own buffer and flow control are unchanged, because every gathered write still goes
through it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatheringTransport", "OneSendHttpProtocol", "serve"]

logger = logging.getLogger(__name__)


class GatheringTransport(asyncio.Transport):
    """A socket transport whose writes within one turn of the loop leave as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what was gathered to the socket now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            # The connection is gone; asyncio itself drops writes to a closing transport.
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        # A response that ends with `Connection: close` is written, then the transport
        # closed, in the same turn: the bytes go first.
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class OneSendHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `GatheringTransport`, that closes a
    connection whose request does not arrive whole in time.

    uvicorn times out only an idle connection between requests, and only from its first
    response on: a client that connects and sends nothing, or a request line, a header or
    part of a body and then nothing, would hold its connection (and a socket of the process)
    forever. Here a request must arrive whole within `read_timeout` seconds of its first
    byte, and the first within that time of the connection. The timer is armed only while a
    request is incomplete after the bytes at hand are read, which a request that arrives in
    one segment never is.
    """

    read_timeout: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(GatheringTransport(transport, self.loop))
        self._reading = False
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(
            self.read_timeout, self._too_slow
        )

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading and self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def on_message_begin(self) -> None:
        self._reading = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._reading = False
        self._stop_deadline()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            logger.info(
                "closed a connection whose request did not arrive within %g seconds",
                self.read_timeout,
            )
            # An application still reading the body is told that the client is gone.
            self.transport.close()


def serve(app: ASGIApp, host: str, port: int) -> None:
    """Run `app` on host:port until interrupted."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=OneSendHttpProtocol,
        # The server speaks no WebSocket; an Upgrade header is an ordinary request.
        ws="none",
        # Nothing here reads the client's address or the scheme from the request: URLs are
        # built from the issuer (`--issuer` behind a proxy). X-Forwarded-* would change
        # nothing but cost a layer on every request.
        proxy_headers=False,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
