"""Serving the ASGI application with uvicorn, one send per response.

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
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["GatheringTransport", "OneSendHttpProtocol", "serve"]


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
    """uvicorn's httptools protocol, writing through a `GatheringTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(GatheringTransport(transport, self.loop))


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
