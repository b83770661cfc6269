"""uvicorn with the gathering transport: a response is one write, and nothing else changes.

The first test drives uvicorn's own protocol over a transport that records its writes. The
others run uvicorn on a loopback port and speak HTTP/1.1 over a raw socket, so that the
bytes on the wire, their order and their timing are what is checked.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from isolation import LOOPBACK
from uvicorn.server import ServerState

from fleetid.server.serving import GatheringTransport, OneSendHttpProtocol

SECOND_CHUNK_GATE = threading.Event()


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        # The second chunk waits for the client to have read the first.
        while not SECOND_CHUNK_GATE.is_set():
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"second", "more_body": False})
        return
    answer = b"echo:" + scope["path"].encode() + b":" + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (LOOPBACK, 40000), "sockname": (LOOPBACK, 8787)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_response_leaves_in_one_write() -> None:
    async def exchange() -> _RecordingTransport:
        config = uvicorn.Config(_app, http=OneSendHttpProtocol, ws="none", lifespan="off")
        config.load()
        protocol = OneSendHttpProtocol(config=config, server_state=ServerState(), app_state={})
        transport = _RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"POST /token HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
        for _ in range(20):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(exchange())
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 15" in head
    assert body == b"echo:/token:abc"


def test_writes_after_the_connection_closed_are_dropped() -> None:
    async def write_then_lose() -> _RecordingTransport:
        inner = _RecordingTransport()
        gathering = GatheringTransport(inner, asyncio.get_running_loop())
        gathering.write(b"late")
        inner.closed = True
        await asyncio.sleep(0)
        gathering.write(b"")
        await asyncio.sleep(0)
        assert gathering.get_write_buffer_size() == 0
        return inner

    assert asyncio.run(write_then_lose()).writes == []


def _served(protocol: type[OneSendHttpProtocol]) -> Iterator[int]:
    """uvicorn serving `_app` with `protocol` on a loopback port, in a thread: the port."""
    config = uvicorn.Config(
        _app, host=LOOPBACK, port=0, http=protocol, ws="none", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _served(OneSendHttpProtocol)


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection((LOOPBACK, port), timeout=5)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _read_response(connection: socket.socket, buffered: bytearray) -> bytes:
    """One response with a content-length, from `buffered` and then the socket."""
    while b"\r\n\r\n" not in buffered:
        buffered += connection.recv(65536)
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += connection.recv(65536)
    buffered[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


def _read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_keep_alive_and_pipelined_requests_are_answered_in_order(port: int) -> None:
    with _connect(port) as connection:
        buffered = bytearray()
        connection.sendall(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(connection, buffered).endswith(b"echo:/one:")
        connection.sendall(
            b"POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
            b"GET /three HTTP/1.1\r\nhost: x\r\n\r\n"
        )
        assert _read_response(connection, buffered).endswith(b"echo:/two:hi")
        assert _read_response(connection, buffered).endswith(b"echo:/three:")


def test_connection_close_sends_the_response_before_closing(port: int) -> None:
    with _connect(port) as connection:
        connection.sendall(b"GET /bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        received = _read_until_closed(connection)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in received.lower()
    assert received.endswith(b"echo:/bye:")


def test_expect_continue_is_sent_before_the_body_arrives(port: int) -> None:
    with _connect(port) as connection:
        connection.sendall(
            b"POST /up HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += connection.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        connection.sendall(b"data")
        buffered = bytearray(interim.partition(b"\r\n\r\n")[2])
        assert _read_response(connection, buffered).endswith(b"echo:/up:data")


def test_a_streamed_chunk_is_not_held_back_for_the_next(port: int) -> None:
    SECOND_CHUNK_GATE.clear()
    with _connect(port) as connection:
        connection.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        received = b""
        # The server sends the second chunk only once the gate opens, so reading the first
        # proves it left on its own turn.
        while b"first;" not in received:
            chunk = connection.recv(65536)
            assert chunk, "the connection closed before the first chunk"
            received += chunk
        assert b"second" not in received
        SECOND_CHUNK_GATE.set()
        while not received.endswith(b"0\r\n\r\n"):
            received += connection.recv(65536)
    assert b"transfer-encoding: chunked" in received
    assert b"second" in received


def test_a_malformed_request_gets_its_400_before_the_close(port: int) -> None:
    with _connect(port) as connection:
        connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        received = _read_until_closed(connection)
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert received.endswith(b"Invalid HTTP request received.")


# -- a request must arrive whole in time ---------------------------------------------------


class _QuickDeadline(OneSendHttpProtocol):
    read_timeout = 1.0


@pytest.fixture(scope="module")
def quick_port() -> Iterator[int]:
    yield from _served(_QuickDeadline)


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /token HTTP/1.1\r\nhost: x\r\n",
        b"POST /token HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
    ],
    ids=["nothing", "half-the-headers", "half-the-body"],
)
def test_a_request_that_stops_arriving_loses_its_connection(quick_port: int, sent: bytes) -> None:
    with _connect(quick_port) as connection:
        connection.sendall(sent)
        # The socket's own timeout (5 s) would raise: the server closes well before.
        assert _read_until_closed(connection) == b""


def test_a_request_arriving_in_parts_within_the_deadline_is_answered(quick_port: int) -> None:
    with _connect(quick_port) as connection:
        connection.sendall(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab")
        time.sleep(0.1)
        connection.sendall(b"cd")
        assert _read_response(connection, bytearray()).endswith(b"echo:/slow:abcd")


def test_an_idle_kept_alive_connection_is_not_cut_by_the_deadline(quick_port: int) -> None:
    with _connect(quick_port) as connection:
        buffered = bytearray()
        connection.sendall(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(connection, buffered).endswith(b"echo:/one:")
        # Longer than the deadline, shorter than uvicorn's keep-alive (5 s).
        time.sleep(1.5)
        connection.sendall(b"GET /two HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _read_response(connection, buffered).endswith(b"echo:/two:")
