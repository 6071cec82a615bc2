"""
Peers that stop reading, flood pings, vanish while we do not read, or send
what the transport refuses: "Hostile peers, round two", the transport's part.

Every peer here is a raw TCP socket speaking WebSocket by hand, with a small
receive buffer so that the server's buffers fill fast. The server is the
public API; the tests run on both transports (``WSRPC_TEST_TRANSPORT``).

* A peer that reads nothing cannot hold a close: ``acceptor.close()``, the
  keepalive timeout, ``header_timeout`` and ``server.close()`` each end
  within their bound (``close_timeout`` after the close starts), and a peer
  that keeps the write buffer full for ``stall_timeout`` is aborted (1008).
* A ping flood from a peer that reads nothing costs bounded memory: pongs
  are not buffered beyond the write buffer's mark.
* A reset is noticed within about a second though the server reads nothing
  (its backlog is full), and the peer's calls are cancelled then.
* Several ``Origin`` headers get HTTP 400 on either transport.
* A peer's protocol error is never logged at ERROR.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import msgpack
import pytest

import wsrpc
from wsrpc._transports.base import LOSS_POLL_INTERVAL

from ..conftest import UNIT, AnyAcceptor, running_server
from .test_hostile import rss, ws_frame

MiB = 1024 * 1024
TOKEN = "secret"
SMALL_RCVBUF = 4096


class Service:
    def __init__(self) -> None:
        self.answered = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    def blob(self, size: int) -> bytes:
        # Plain: its answer is written before the event wakes anyone.
        asyncio.get_running_loop().call_soon(self.answered.set)
        return bytes(size)

    async def hold(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def accepting(service: Service, accepted: list[AnyAcceptor]) -> Any:
    async def handler(acceptor: AnyAcceptor) -> None:
        accepted.append(acceptor)
        await acceptor.accept(service)

    return handler


def upgrade_request(port: int, extra: str = "") -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


async def recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


async def http_answer(sock: socket.socket) -> bytes:
    """The HTTP response head, read byte by byte (nothing after it is consumed)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += await recv_exactly(sock, 1)
    return head


async def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One (unmasked, server) frame: (opcode, payload)."""
    first, second = await recv_exactly(sock, 2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await recv_exactly(sock, 2), "big")
    elif size == 127:
        size = int.from_bytes(await recv_exactly(sock, 8), "big")
    return first & 0x0F, await recv_exactly(sock, size)


@asynccontextmanager
async def raw_peer(
    port: int, *, extra: str = "", rcvbuf: int | None = SMALL_RCVBUF
) -> AsyncIterator[socket.socket]:
    """A TCP socket that did the upgrade (asserting 101); closed on exit."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, upgrade_request(port, extra))
        head = await http_answer(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield sock
    finally:
        sock.close()


def binary(data: bytes) -> bytes:
    return ws_frame(2, data)


def header() -> bytes:
    return binary(msgpack.packb([0, 1, {"token": TOKEN}, {}]))


def call(uid: int, path: str, *args: Any) -> bytes:
    return binary(msgpack.packb([2, uid, path, list(args)]))


@asynccontextmanager
async def open_stalled(port: int, service: Service, size: int = 8 * MiB) -> AsyncIterator[None]:
    """
    A peer that sends its header, reads ACCEPT, asks for a ``size`` answer
    and reads nothing more: the answer fills the kernel's buffers (a few
    MiB at most with a small receive buffer) and the server's write buffer.
    """
    loop = asyncio.get_running_loop()
    async with raw_peer(port) as sock:
        await loop.sock_sendall(sock, header())
        opcode, _ = await read_frame(sock)
        assert opcode == 2  # ACCEPT
        service.answered.clear()
        await loop.sock_sendall(sock, call(1, "blob", size))
        async with asyncio.timeout(10 * UNIT):
            await service.answered.wait()
        yield


async def poll(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait until ``predicate()`` holds: polling, with a deadline (nothing to wait on)."""
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


async def only_acceptor(server: wsrpc.WebSocketServer[Any, Any, Any]) -> AnyAcceptor:
    """The server's one connection, once it exists (it is listed from its upgrade)."""
    await poll(lambda: bool(server.acceptors), 5 * UNIT)
    (acceptor,) = server.acceptors.values()
    return acceptor


# -- closing never waits on a peer that reads nothing --------------------------------


async def test_acceptor_close_ends_within_close_timeout_though_the_peer_reads_nothing() -> None:
    service, accepted = Service(), list[AnyAcceptor]()
    close_timeout = 1 * UNIT
    async with running_server(
        accepting(service, accepted), close_timeout=close_timeout, ping_interval=None
    ) as server:
        async with open_stalled(server.port, service):
            started = time.monotonic()
            async with asyncio.timeout(close_timeout + 5 * UNIT):
                await accepted[0].close()
            elapsed = time.monotonic() - started
            info = accepted[0].close_info
            assert info is not None and not info.clean
            assert elapsed >= close_timeout * 0.9  # it waited for the handshake, then aborted
            assert server.acceptors == {}


async def test_keepalive_timeout_ends_a_peer_that_reads_nothing() -> None:
    service, accepted = Service(), list[AnyAcceptor]()
    interval, timeout, close_timeout = 0.5 * UNIT, 0.5 * UNIT, 1 * UNIT
    async with running_server(
        accepting(service, accepted),
        ping_interval=interval,
        ping_timeout=timeout,
        close_timeout=close_timeout,
        stall_timeout=None,
    ) as server:
        async with open_stalled(server.port, service):
            async with asyncio.timeout(interval + timeout + close_timeout + 5 * UNIT):
                info = await accepted[0].join()
            assert (info.code, info.reason) == (1011, "keepalive ping timeout")


async def test_server_close_returns_within_close_timeout_with_peers_that_read_nothing() -> None:
    service, accepted = Service(), list[AnyAcceptor]()
    close_timeout = 1 * UNIT
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(
        close_timeout=close_timeout, ping_interval=None, stall_timeout=None
    )
    await server.open(0, accepting(service, accepted))
    try:
        async with open_stalled(server.port, service), open_stalled(server.port, service):
            started = time.monotonic()
            async with asyncio.timeout(close_timeout + 5 * UNIT):
                await server.close()
            assert time.monotonic() - started >= close_timeout * 0.9
            assert server.state is wsrpc.ServerState.CLOSED
            assert all(a.state is wsrpc.AcceptorState.CLOSED for a in accepted)
    finally:
        async with asyncio.timeout(close_timeout + 5 * UNIT):
            await server.close()


@contextmanager
def flooding(sock: socket.socket, total: int) -> Iterator[list[int]]:
    """Send ``total`` bytes of pings (125-byte payloads) in a task; yields [bytes sent]."""
    loop = asyncio.get_running_loop()
    chunk = ws_frame(9, b"p" * 125) * 2000  # 262,000 bytes
    sent = [0]

    async def flood() -> None:
        with suppress(OSError):
            while sent[0] < total:
                await loop.sock_sendall(sock, chunk)
                sent[0] += len(chunk)

    task = loop.create_task(flood())
    try:
        yield sent
    finally:
        task.cancel()


async def flood_until_stuck(sent: list[int], total: int) -> None:
    """Wait until all ``total`` bytes went, or none went for 1 UNIT (polling, bounded)."""
    last, still_since = -1, time.monotonic()
    async with asyncio.timeout(60 * UNIT):
        while sent[0] < total:
            if sent[0] != last:
                last, still_since = sent[0], time.monotonic()
            elif time.monotonic() - still_since > 1 * UNIT:
                return
            await asyncio.sleep(0.05)


async def test_header_timeout_ends_a_pinging_peer_that_reads_nothing() -> None:
    header_timeout, close_timeout = 1 * UNIT, 1 * UNIT
    async with running_server(
        accepting(Service(), []),
        header_timeout=header_timeout,
        close_timeout=close_timeout,
        stall_timeout=None,
    ) as server:
        async with raw_peer(server.port) as sock:
            acceptor = await only_acceptor(server)
            with flooding(sock, 64 * MiB):
                async with asyncio.timeout(header_timeout + close_timeout + 10 * UNIT):
                    info = await acceptor.join()
            assert (info.code, info.reason) == (1008, "no header received in time")


# -- pongs count against the write bound ---------------------------------------------


async def test_ping_flood_from_a_peer_that_reads_nothing_costs_bounded_memory() -> None:
    total = 48 * MiB
    async with running_server(accepting(Service(), []), stall_timeout=None) as server:
        async with raw_peer(server.port) as sock:
            await only_acceptor(server)
            gc.collect()
            before = rss()
            with flooding(sock, total) as sent:
                await flood_until_stuck(sent, total)
                grown = rss() - before
            # Pongs wait in the write buffer only up to its mark (plus one
            # read's worth; picows also grows its read buffer under a flood, to a few
            # MiB); before, every ping's pong was buffered (+ ~46 MiB).
            assert grown < 16 * MiB, (
                f"+{grown / MiB:.1f} MiB after {sent[0] / MiB:.1f} MiB of pings"
            )


async def test_the_pings_of_one_read_get_one_pong() -> None:
    # Only the latest ping of a read is answered (RFC 6455 5.5.3): a read
    # full of pings costs one pong, so a ping flood cannot fill the write
    # buffer at all.
    async with running_server(accepting(Service(), []), stall_timeout=None) as server:
        async with raw_peer(server.port, rcvbuf=None) as sock:
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, ws_frame(9, b"a") * 499 + ws_frame(9, b"z"))
            pongs: list[bytes] = []
            async with asyncio.timeout(5 * UNIT):
                while b"z" not in pongs:  # the last ping's pong comes last
                    opcode, payload = await read_frame(sock)
                    assert opcode == 10
                    pongs.append(payload)
            # One pong per read: one read, or a few if the kernel split it.
            assert len(pongs) <= 5, f"{len(pongs)} pongs for 500 pings"


async def test_a_peer_that_keeps_the_write_buffer_full_is_aborted_after_stall_timeout() -> None:
    # An answer it does not read keeps our write buffer over its mark.
    service, accepted = Service(), list[AnyAcceptor]()
    stall = 1 * UNIT
    async with running_server(
        accepting(service, accepted), stall_timeout=stall, ping_interval=None
    ) as server:
        async with open_stalled(server.port, service):
            async with asyncio.timeout(stall + 5 * UNIT):
                info = await accepted[0].join()
        assert (info.code, info.reason) == (1008, "peer not reading")
        assert not info.clean


# -- a reset is noticed while reading is paused --------------------------------------


async def test_reset_is_noticed_while_reading_is_paused_and_calls_are_cancelled() -> None:
    service, accepted = Service(), list[AnyAcceptor]()
    loop = asyncio.get_running_loop()
    async with running_server(
        accepting(service, accepted), max_concurrent_calls=1, ping_interval=None
    ) as server:
        async with raw_peer(server.port, rcvbuf=None) as sock:
            await loop.sock_sendall(sock, header())
            opcode, _ = await read_frame(sock)
            assert opcode == 2  # ACCEPT
            # One call runs, one waits in the backlog (full at 1): the server
            # stops reading this peer.
            await loop.sock_sendall(sock, call(1, "hold") + call(2, "hold"))
            async with asyncio.timeout(5 * UNIT):
                await service.started.wait()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
            reset_at = time.monotonic()
            async with asyncio.timeout(LOSS_POLL_INTERVAL + 5 * UNIT):
                await service.cancelled.wait()
                info = await accepted[0].join()
            noticed = time.monotonic() - reset_at
            assert info.code == 1006
            # Within the documented bound of about a second (generous here).
            assert noticed < 2 * LOSS_POLL_INTERVAL + 2 * UNIT, noticed


# -- the opening request -----------------------------------------------------------


@pytest.mark.parametrize("origins", [None, ["https://good.example"]])
async def test_several_origin_headers_get_400(origins: list[str] | None) -> None:
    loop = asyncio.get_running_loop()
    async with running_server(accepting(Service(), []), origins=origins) as server:
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            extra = "Origin: https://good.example\r\nOrigin: https://evil.example\r\n"
            await loop.sock_sendall(sock, upgrade_request(server.port, extra))
            async with asyncio.timeout(5 * UNIT):
                head = await http_answer(sock)
        finally:
            sock.close()
        assert head.startswith(b"HTTP/1.1 400 "), head


# -- a peer cannot write to the error log --------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ws_frame(2, b"\0" * 2048), 1009),  # over max_message_size
        (ws_frame(3, b""), 1002),  # a reserved opcode
        (bytes([0x82, 1, 0]), 1002),  # an unmasked client frame
    ],
    ids=["oversized", "bad-opcode", "unmasked"],
)
async def test_a_peers_protocol_error_is_not_logged_at_error(frame: bytes, code: int) -> None:
    loop = asyncio.get_running_loop()
    recorder = _Records()
    root = logging.getLogger()
    root.addHandler(recorder)
    try:
        async with running_server(
            accepting(Service(), []), max_message_size=1024, close_timeout=1 * UNIT
        ) as server:
            async with raw_peer(server.port, rcvbuf=None) as sock:
                await loop.sock_sendall(sock, frame)
                async with asyncio.timeout(5 * UNIT):
                    opcode, payload = await read_frame(sock)
                assert opcode == 8
                assert int.from_bytes(payload[:2], "big") == code
                await poll(lambda: not server.acceptors, 5 * UNIT)
    finally:
        root.removeHandler(recorder)
    errors = [r for r in recorder.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]
