"""
Soak test: honest clients and an attacker against one wsrpc server, for a
bounded time, on loopback only.

The server runs in a child process on 127.0.0.1, port 0 (so that its memory,
file descriptors and tasks are measured on their own, from /proc). This
process runs:

* ``--clients`` honest wsrpc clients (20), each with a few workers calling
  continuously: plain and async methods, random payloads checked on return,
  errors, calls that time out (and are cancelled remotely), callbacks from
  the server to the client, private-member refusals;
* ``--attackers`` attackers (2), each cycling through hostile cases: bad
  msgpack, wrong shapes, reused call ids, deep nesting, oversized frames,
  text frames, handshake violations, bad TGrid JSON, private member probes,
  silent sockets (raw TCP and WebSocket without a header), floods ignoring
  the concurrency limit, cancel storms and abrupt disconnects mid-call. Each
  case checks the server's answer (its close code, its error reply).

At the end it prints the honest calls ok / failed, the attacker cases run
(and any unexpected outcome), the server's RSS at start / peak / end, its
file descriptors at start / end, its task count once every client has left,
and the errors the server logged. Exit status 0 when there are no errors.

Usage::

    .venv/bin/python scripts/soak.py --duration 300
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgpack
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

import wsrpc

HOST = "127.0.0.1"
MAX_MESSAGE_SIZE = 256 * 1024
MAX_CALLS = 32
HEADER_TIMEOUT = 2.0


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """RSS and peak RSS (MiB) and open file descriptors of a process, from /proc."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


# -- the server process ------------------------------------------------------------


class Tally(logging.Handler):
    """Counts the server's log records by level, keeping the first errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.warnings: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}:{record.levelname}"] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 20:
            self.errors.append(f"{record.name}: {record.getMessage()[:300]}")
        elif record.levelno == logging.WARNING:
            key = f"{record.name}: {record.getMessage()[:120]}"
            if key in self.warnings or len(self.warnings) < 10:
                self.warnings[key] += 1


class Soak:
    """A client's provider on the server."""

    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        self._acceptor = acceptor
        self._secret = "never reachable"

    def add(self, a: int, b: int) -> int:
        return a + b

    async def echo(self, value: Any) -> Any:
        await asyncio.sleep(0)
        return value

    def blob(self, size: int) -> bytes:
        return b"b" * min(int(size), MAX_MESSAGE_SIZE - 64)

    def fail(self, message: str) -> None:
        raise ValueError(message)

    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(min(float(seconds), 30.0))
        return "slept"

    async def via_client(self, x: int) -> int:
        result: int = await self._acceptor.get_driver(timeout=10).double(x)
        return result + 1

    @property
    def secret(self) -> str:  # a property never runs on a peer's request
        raise AssertionError("property ran")


class Control:
    def __init__(self, server: wsrpc.WebSocketServer[Any, Any, Any], tally: Tally) -> None:
        self._server = server
        self._tally = tally

    def stats(self) -> dict[str, Any]:
        return {
            **proc_status(),
            "tasks": len(asyncio.all_tasks()),
            "connections": len(self._server.acceptors),
            "log": dict(self._tally.counts),
            "errors": self._tally.errors,
            "warnings": dict(self._tally.warnings),
        }


def server_process(pipe: multiprocessing.connection.Connection, transport: str) -> None:
    asyncio.run(serve(pipe, cast(wsrpc.TransportName, transport)))


async def serve(
    pipe: multiprocessing.connection.Connection, transport: wsrpc.TransportName
) -> None:
    tally = Tally()
    for name in ("wsrpc", "asyncio", "websockets", "picows"):
        logger = logging.getLogger(name)
        logger.addHandler(tally)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    stop = asyncio.Event()
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(
        max_message_size=MAX_MESSAGE_SIZE,
        max_concurrent_calls=MAX_CALLS,
        header_timeout=HEADER_TIMEOUT,
        ping_interval=5,
        ping_timeout=5,
        close_timeout=2,
        transport=transport,
    )

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        if acceptor.header == "control":
            await acceptor.accept(Control(server, tally))
        elif acceptor.header == "reject-me" or isinstance(acceptor.header, dict):
            await acceptor.reject(4001, "rejected")  # a token check that fails
        else:
            await acceptor.accept(Soak(acceptor))

    await server.open(0, handler, host=HOST)
    loop = asyncio.get_running_loop()
    loop.add_reader(pipe.fileno(), stop.set)  # the parent writes when it is done
    pipe.send(server.port)
    await stop.wait()
    loop.remove_reader(pipe.fileno())
    await server.close()
    pipe.send({**proc_status(), "tasks": len(asyncio.all_tasks())})


# -- honest clients -----------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.honest_ok = 0
        self.honest_failed = 0
        self.honest_failures: collections.Counter[str] = collections.Counter()
        self.cases: collections.Counter[str] = collections.Counter()
        self.unexpected: collections.Counter[str] = collections.Counter()
        self.unexpected_examples: list[str] = []

    def bad(self, case: str, what: str) -> None:
        self.unexpected[case] += 1
        if len(self.unexpected_examples) < 20:
            self.unexpected_examples.append(f"{case}: {what}")


COUNTS = Counts()


class Doubler:
    async def double(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if depth < 3 and roll < 0.35:
        return {f"k{rng.randrange(50)}": random_value(rng, depth + 1) for _ in range(3)}
    if roll < 0.55:
        return rng.randrange(-(2**63), 2**63)
    if roll < 0.65:
        return rng.uniform(-1e6, 1e6)
    if roll < 0.85:
        return "".join(rng.choice("xyzé✓ ") for _ in range(rng.randrange(30)))
    if roll < 0.95:
        return rng.randbytes(rng.randrange(300))
    return rng.choice([None, True, False])


async def honest_worker(
    connector: wsrpc.WebSocketConnector[str, Doubler, Any], rng: random.Random, deadline: float
) -> None:
    driver = connector.get_driver()
    while time.monotonic() < deadline:
        kind = rng.randrange(7)
        try:
            async with asyncio.timeout(30):
                if kind == 0:
                    a, b = rng.randrange(10**6), rng.randrange(10**6)
                    assert await driver.add(a, b) == a + b
                elif kind == 1:
                    value = random_value(rng)
                    assert await driver.echo(value) == value
                elif kind == 2:
                    try:
                        await driver.fail("expected")
                    except wsrpc.RemoteError as exc:
                        assert (exc.name, exc.message) == ("ValueError", "expected")
                    else:
                        raise AssertionError("fail() returned")
                elif kind == 3:
                    try:
                        await connector.get_driver(timeout=0.05).slow(5)
                    except wsrpc.RpcTimeoutError:
                        pass  # expected: timed out, cancelled on the server
                    else:
                        raise AssertionError("slow() returned in time")
                elif kind == 4:
                    x = rng.randrange(1000)
                    assert await driver.via_client(x) == 2 * x + 1
                elif kind == 5:
                    try:
                        await driver.secret()
                    except wsrpc.RemoteError as exc:
                        assert exc.name == "MemberAccessError"
                    else:
                        raise AssertionError("property reached")
                else:
                    assert await driver.slow(0.01) == "slept"
        except Exception as exc:  # counted, the soak goes on
            COUNTS.honest_failed += 1
            COUNTS.honest_failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            if connector.is_closed:
                return
        else:
            COUNTS.honest_ok += 1


async def honest_client(url: str, index: int, workers: int, deadline: float) -> None:
    connector: wsrpc.WebSocketConnector[str, Doubler, Any] = wsrpc.WebSocketConnector(
        f"honest-{index}", Doubler()
    )
    await connector.connect(url, timeout=10)
    rng = random.Random(index)
    try:
        await asyncio.gather(
            *(
                honest_worker(connector, random.Random(rng.random()), deadline)
                for _ in range(workers)
            )
        )
    finally:
        await connector.close()


# -- the attacker -------------------------------------------------------------------------

HEADER = msgpack.packb([0, 1, "attacker", {}])


async def opened(url: str) -> ClientConnection:
    """A raw WebSocket that has done wsrpc's handshake by hand."""
    ws = await ws_connect(url, max_size=None, ping_interval=None, close_timeout=2)
    await ws.send(HEADER)
    reply = msgpack.unpackb(await ws.recv(decode=False))
    assert reply[0] == 1, reply
    return ws


async def expect_close(ws: ClientConnection, codes: set[int], timeout: float = 10) -> int | None:
    """Read until the server closes; return its close code."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        if code not in codes:
            raise AssertionError(f"closed with {code}, expected {sorted(codes)}") from None
        return code


async def raw_case(url: str, frames: list[bytes | str], codes: set[int]) -> None:
    ws = await opened(url)
    try:
        for frame in frames:
            await ws.send(frame)
        await expect_close(ws, codes)
    finally:
        ws.transport.abort()


def nested(depth: int) -> bytes:
    return b"\x93\x03\x01" + b"\x91" * depth + b"\xc0"


async def case_bad_msgpack(url: str, rng: random.Random) -> None:
    garbage = rng.randbytes(rng.randrange(1, 64))
    frame = b"\xc1" + garbage  # 0xc1 is never valid msgpack
    await raw_case(url, [frame], {1007})


async def case_wrong_shapes(url: str, rng: random.Random) -> None:
    shapes: list[Any] = [
        [2, "uid", "add", []],
        [2, 0, "add", []],
        [2, 1, 5, []],
        [2, 1, "add", "args"],
        [3],
        [9, 1],
        {"kind": 2},
        "text",
        [],
        [2, 1, "add", [], {1: 2}],
    ]
    await raw_case(url, [msgpack.packb(rng.choice(shapes))], {1002, 1007})


async def case_reused_id(url: str, rng: random.Random) -> None:
    frame = msgpack.packb([2, 7, "slow", [5]])
    await raw_case(url, [frame, frame], {1002})


async def case_deep_nesting(url: str, rng: random.Random) -> None:
    await raw_case(url, [nested(rng.randrange(1_100, 5_000))], {1007})


async def case_oversized(url: str, rng: random.Random) -> None:
    frame = msgpack.packb([2, 1, "echo", [b"x" * (MAX_MESSAGE_SIZE + 1)]])
    await raw_case(url, [frame], {1009})


async def case_text_frame(url: str, rng: random.Random) -> None:
    await raw_case(url, ['{"uid":1,"listener":"add","parameters":[]}'], {1003})


async def case_handshake_again(url: str, rng: random.Random) -> None:
    await raw_case(url, [rng.choice([HEADER, msgpack.packb([1, {}])])], {1002})


async def case_bad_header(url: str, rng: random.Random) -> None:
    firsts: list[bytes | str] = [
        msgpack.packb([2, 1, "add", [1, 2]]),  # a call before the header
        msgpack.packb([0, 99, None, {}]),  # wrong protocol version
        msgpack.packb([0, 1, None, {"calls": 0}]),  # bad limits
        b"\xc1",
        "not json",  # TGrid codec, invalid JSON
        '{"uid":1}',  # TGrid codec, not a header
        "[" * 5_000,  # TGrid codec, too deep
    ]
    first = rng.choice(firsts)
    async with ws_connect(url, max_size=None, ping_interval=None, close_timeout=2) as ws:
        await ws.send(first)
        await expect_close(ws, {1002, 1003, 1007})


async def case_rejected(url: str, rng: random.Random) -> None:
    connector: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("reject-me")
    try:
        await connector.connect(url, timeout=10)
    except wsrpc.RejectedError as exc:
        assert exc.code == 4001
    else:
        await connector.close()
        raise AssertionError("not rejected")


async def case_private_probes(url: str, rng: random.Random) -> None:
    paths = [
        "_secret",
        "__class__",
        "__init__",
        "__class__.__init__.__globals__",
        "_acceptor.close",
        "secret",
        "add.__code__",
        "a" * 300,
        ".".join(["x"] * 20),
        "",
        "add_",
    ]
    ws = await opened(url)
    try:
        for uid, path in enumerate(paths, 1):
            await ws.send(msgpack.packb([2, uid, path, []]))
            reply = msgpack.unpackb(await ws.recv(decode=False))
            if reply[:3] != [4, uid, "MemberAccessError"]:
                raise AssertionError(f"{path!r} answered {reply!r}")
        # Still usable afterwards.
        await ws.send(msgpack.packb([2, 99, "add", [2, 3]]))
        assert msgpack.unpackb(await ws.recv(decode=False)) == [3, 99, 5]
        await ws.close()
    finally:
        ws.transport.abort()


async def case_silent_tcp(url: str, rng: random.Random) -> None:
    # A TCP connection that never sends the upgrade: websockets' open timeout
    # (10 s) drops it. Only checked to be closed by the server in time.
    port = int(url.rsplit(":", 1)[1].strip("/"))
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (HOST, port))
        async with asyncio.timeout(20):
            data = await loop.sock_recv(sock, 1024)  # b"" once the server closes
        assert not data or data.startswith(b"HTTP/1.1 "), data[:40]
    finally:
        sock.close()


async def case_silent_websocket(url: str, rng: random.Random) -> None:
    # Upgraded, then no header: closed with 1008 after header_timeout.
    async with ws_connect(url, ping_interval=None, close_timeout=2) as ws:
        start = time.monotonic()
        await expect_close(ws, {1008}, timeout=HEADER_TIMEOUT + 10)
        assert time.monotonic() - start < HEADER_TIMEOUT + 5


async def case_flood(url: str, rng: random.Random) -> None:
    # Ignore the advertised limit: many calls to a slow method, sent without
    # waiting, then vanish without a close frame.
    ws = await opened(url)
    try:
        async with asyncio.timeout(2):
            for uid in range(1, 5_000):
                await ws.send(msgpack.packb([2, uid, "slow", [3, b"f" * 4096]]))
    except TimeoutError:
        pass  # the server stopped reading: backpressure
    finally:
        ws.transport.abort()


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (zero key; binary by default), to write many in one TCP write."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 2**16:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def case_rejected_large_header(url: str, rng: random.Random) -> None:
    # A valid header of 100,000 empty maps (under the per-frame container cap),
    # rejected by the token check: a rejected connection keeps nothing, its
    # decoded header included.
    header = {"token": "wrong", "padding": [{}] * 100_000}
    connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector(header)
    try:
        await connector.connect(url, timeout=10)
    except wsrpc.RejectedError as exc:
        assert exc.code == 4001, exc
    else:
        await connector.close()
        raise AssertionError("not rejected")


async def case_ping_flood(url: str, rng: random.Random) -> None:
    # Pings and never a read, before the header: pongs must not pile up.
    ws = await ws_connect(url, max_size=None, ping_interval=None, close_timeout=2)
    try:
        ws.transport.pause_reading()
        ping = client_frame(b"p" * 125, opcode=0x9)
        for _ in range(40):
            ws.transport.write(ping * 1000)  # 131 KB of pings per write
            await asyncio.sleep(0)  # let the loop write them
    finally:
        ws.transport.abort()


async def case_reset_while_paused(url: str, rng: random.Random) -> None:
    # Fill the backlog so the server stops reading, then reset the
    # connection: the server notices within about a second anyway.
    ws = await opened(url)
    try:
        ws.transport.write(
            b"".join(
                client_frame(msgpack.packb([2, uid, "slow", [30]]))
                for uid in range(1, 4 * MAX_CALLS)
            )
        )
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        ws.transport.abort()  # with SO_LINGER 0: a reset


async def case_one_read_flood(url: str, rng: random.Random) -> None:
    # 3,000 calls to a slow method in one write, after one large frame
    # (which grows picows' read buffer): the server takes them up to its
    # bounds, holds the rest undecoded. Then a clean close.
    ws = await opened(url)
    try:
        await ws.send(msgpack.packb([2, 1, "echo", [b"x" * 100_000]]))
        async with asyncio.timeout(10):
            await ws.recv()
        ws.transport.write(
            b"".join(client_frame(msgpack.packb([2, uid, "slow", [2]])) for uid in range(2, 3_002))
        )
        await ws.send(msgpack.packb([5, 2]))  # read (or not) once the backlog moves
        await ws.close()
    finally:
        ws.transport.abort()


async def case_unread_answers(url: str, rng: random.Random) -> None:
    # 300 calls for large answers in one write, never reading them: the
    # server stops at its write buffer's bound. Then vanish.
    ws = await opened(url)
    try:
        ws.transport.pause_reading()
        ws.transport.write(
            b"".join(
                client_frame(msgpack.packb([2, uid, "blob", [MAX_MESSAGE_SIZE]]))
                for uid in range(1, 301)
            )
        )
        await asyncio.sleep(rng.uniform(0.1, 1.0))  # let it answer what it will
    finally:
        ws.transport.abort()


def small_arrays(levels: int) -> bytes:
    """A tree of fixarrays of 15, ``levels`` deep: no 16- or 32-bit header at all."""
    node = b"\x90"
    for _ in range(levels):
        node = b"\x9f" + node * 15
    return node


async def case_expensive_frame(url: str, rng: random.Random) -> None:
    # Valid, but more arrays than MAX_CONTAINERS (4 x 54,241): refused, 1009.
    # Under the budget (2 x 54,241): decoded and answered.
    ws = await opened(url)
    try:
        head = msgpack.packb([2, 1, "echo", [None]])[:-2]
        await ws.send(head + b"\x91\x92" + small_arrays(4) * 2)
        async with asyncio.timeout(10):
            assert msgpack.unpackb(await ws.recv(decode=False))[:2] == [3, 1]
        await ws.send(head + b"\x91\x94" + small_arrays(4) * 4)
        await expect_close(ws, {1009})
    finally:
        ws.transport.abort()


async def case_cancel_storm(url: str, rng: random.Random) -> None:
    ws = await opened(url)
    try:
        for uid in range(1, 500):
            await ws.send(msgpack.packb([2, uid, "slow", [5]]))
            await ws.send(msgpack.packb([5, uid]))
            await ws.send(msgpack.packb([5, uid + 10_000]))  # unknown id: ignored
        await ws.send(msgpack.packb([2, 9_999, "add", [1, 1]]))
        async with asyncio.timeout(10):
            while True:
                reply = msgpack.unpackb(await ws.recv(decode=False))
                if reply[1] == 9_999:
                    assert reply == [3, 9_999, 2], reply
                    break
        await ws.close()
    finally:
        ws.transport.abort()


async def case_abrupt_disconnect(url: str, rng: random.Random) -> None:
    ws = await opened(url)
    for uid in range(1, 20):
        await ws.send(msgpack.packb([2, uid, rng.choice(["slow", "echo"]), [1]]))
    ws.transport.abort()  # no close frame, calls running


async def case_stale_replies(url: str, rng: random.Random) -> None:
    # Replies and cancels for ids the server never used: ignored.
    ws = await opened(url)
    try:
        for uid in (1, 2, 3, 2**63 - 1):
            await ws.send(msgpack.packb([3, uid, "late"]))
            await ws.send(msgpack.packb([4, uid, "E", "late", None]))
            await ws.send(msgpack.packb([5, uid]))
        await ws.send(msgpack.packb([2, 1, "add", [20, 22]]))
        async with asyncio.timeout(10):
            assert msgpack.unpackb(await ws.recv(decode=False)) == [3, 1, 42]
        await ws.close()
    finally:
        ws.transport.abort()


async def case_bad_upgrade(url: str, rng: random.Random) -> None:
    # Plain HTTP to the WebSocket endpoint: answered, not crashed.
    port = int(url.rsplit(":", 1)[1].strip("/"))
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 "), status
    finally:
        writer.close()


CASES: list[tuple[str, Callable[[str, random.Random], Awaitable[None]]]] = [
    ("bad msgpack", case_bad_msgpack),
    ("wrong shapes", case_wrong_shapes),
    ("reused id", case_reused_id),
    ("deep nesting", case_deep_nesting),
    ("oversized frame", case_oversized),
    ("text frame", case_text_frame),
    ("handshake again", case_handshake_again),
    ("bad header", case_bad_header),
    ("rejected", case_rejected),
    ("private probes", case_private_probes),
    ("flood", case_flood),
    ("cancel storm", case_cancel_storm),
    ("abrupt disconnect", case_abrupt_disconnect),
    ("stale replies", case_stale_replies),
    ("bad upgrade", case_bad_upgrade),
    ("one-read flood", case_one_read_flood),
    ("unread answers", case_unread_answers),
    ("expensive frame", case_expensive_frame),
    ("rejected large header", case_rejected_large_header),
    ("ping flood", case_ping_flood),
    ("reset while paused", case_reset_while_paused),
]
SILENT_CASES = [("silent tcp", case_silent_tcp), ("silent websocket", case_silent_websocket)]


async def attacker(url: str, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    silent: set[asyncio.Task[None]] = set()
    index = seed
    while time.monotonic() < deadline:
        name, case = CASES[index % len(CASES)]
        index += 1
        if len(silent) < 10:  # at most 10 silent sockets at a time per attacker
            silent_name, silent_case = rng.choice(SILENT_CASES)
            task = asyncio.ensure_future(run_case(silent_name, silent_case, url, rng))
            silent.add(task)
            task.add_done_callback(silent.discard)
        await run_case(name, case, url, rng)
    if silent:
        await asyncio.wait(silent)


async def run_case(
    name: str, case: Callable[[str, random.Random], Awaitable[None]], url: str, rng: random.Random
) -> None:
    COUNTS.cases[name] += 1
    try:
        async with asyncio.timeout(40):
            await case(url, rng)
    except (AssertionError, TimeoutError, OSError, ConnectionClosed, InvalidHandshake) as exc:
        if isinstance(exc, InvalidStatus):
            what = f"HTTP {exc.response.status_code}"
        else:
            what = f"{type(exc).__name__}: {str(exc)[:160]}"
        COUNTS.bad(name, what)
    except wsrpc.WsrpcError as exc:
        COUNTS.bad(name, f"{type(exc).__name__}: {exc}")


# -- main ---------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    if args.only:
        unknown = set(args.only) - {name for name, _ in CASES}
        if unknown:
            raise SystemExit(f"unknown case(s) {sorted(unknown)}; see CASES in {__file__}")
        CASES[:] = [(name, case) for name, case in CASES if name in args.only]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=server_process, args=(child, args.transport), daemon=True)
    process.start()
    port: int = await asyncio.to_thread(parent.recv)
    url = f"ws://{HOST}:{port}/"
    control: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("control")
    await control.connect(url)
    stats = control.get_driver().stats
    start = await stats()
    print(
        f"server pid {process.pid} on {url}: RSS {start['VmRSS']:.1f} MiB, "
        f"{start['fds']:.0f} fds; {args.clients} honest clients, {args.attackers} attackers, "
        f"{args.duration:.0f} s",
        flush=True,
    )
    began = time.monotonic()
    deadline = began + args.duration
    # The attackers stop at 80 % of the run; the honest clients go on alone,
    # so that the memory after the attacks shows whether anything was kept.
    attacks_end = began + 0.8 * args.duration
    work = asyncio.gather(
        *(honest_client(url, i, args.workers, deadline) for i in range(args.clients)),
        *(attacker(url, 1000 * (i + 1), attacks_end) for i in range(args.attackers)),
        return_exceptions=True,
    )
    quiet: list[float] = []  # RSS samples once the attacks are over
    peak = start["VmRSS"]
    samples = []
    while not work.done():
        await asyncio.wait({work}, timeout=min(10, args.duration / 10))
        now = await stats()
        peak = max(peak, now["VmHWM"])
        samples.append(now["VmRSS"])
        if time.monotonic() > attacks_end + 5:  # the last attacks' connections reaped
            quiet.append(now["VmRSS"])
        print(
            f"[{time.monotonic() - began:6.0f} s] honest ok {COUNTS.honest_ok} failed "
            f"{COUNTS.honest_failed}; attacker cases {sum(COUNTS.cases.values())} unexpected "
            f"{sum(COUNTS.unexpected.values())}; server RSS {now['VmRSS']:.1f} MiB, "
            f"fds {now['fds']:.0f}, tasks {now['tasks']}, connections {now['connections']}",
            flush=True,
        )
    crashed = [result for result in work.result() if isinstance(result, BaseException)]
    # Let the server reap what the attacker left (silent sockets, aborted
    # connections): wait until only the control connection is left.
    settle = time.monotonic()
    while time.monotonic() - settle < 30:
        end = await stats()
        if end["connections"] == 1 and end["fds"] <= start["fds"]:
            break
        await asyncio.sleep(0.5)
    end = await stats()
    await control.close()
    parent.send("stop")
    final = await asyncio.to_thread(parent.recv)
    await asyncio.to_thread(process.join, 10)

    log_counts: dict[str, int] = end["log"]
    server_errors = sum(n for key, n in log_counts.items() if key.endswith(("ERROR", "CRITICAL")))
    leaked_fds = max(0, int(end["fds"] - start["fds"]))
    leftover_connections = end["connections"] - 1
    errors = (
        COUNTS.honest_failed
        + sum(COUNTS.unexpected.values())
        + server_errors
        + len(crashed)
        + leaked_fds
        + leftover_connections
    )
    print()
    print(f"duration            {time.monotonic() - began:.0f} s")
    print(f"honest calls        ok {COUNTS.honest_ok}, failed {COUNTS.honest_failed}")
    for what, n in COUNTS.honest_failures.most_common(10):
        print(f"    {n:6d} x {what}")
    print(f"attacker cases run  {sum(COUNTS.cases.values())}")
    for name, n in sorted(COUNTS.cases.items()):
        bad = COUNTS.unexpected.get(name, 0)
        print(f"    {name:18s} {n:6d}" + (f"   unexpected {bad}" if bad else ""))
    for example in COUNTS.unexpected_examples:
        print(f"    unexpected: {example}")
    print(
        f"server RSS          start {start['VmRSS']:.1f} MiB, peak {max(peak, end['VmHWM']):.1f} "
        f"MiB, end {end['VmRSS']:.1f} MiB (samples min {min(samples):.1f}, "
        f"max {max(samples):.1f})"
    )
    if len(quiet) >= 2:
        print(
            f"server RSS quiet    after the attacks stopped: first {quiet[0]:.1f} MiB, last "
            f"{quiet[-1]:.1f} MiB, {len(quiet)} samples (growth {quiet[-1] - quiet[0]:+.1f} MiB)"
        )
    print(f"server fds          start {start['fds']:.0f}, end {end['fds']:.0f} (control included)")
    print(
        f"server tasks at end {end['tasks']} with only the control connection open; "
        f"{final['tasks']} after close()"
    )
    print(f"server log          {dict(sorted(log_counts.items()))}")
    for line, n in end["warnings"].items():
        print(f"    {n:6d} x server warning: {line}")
    for line in end["errors"]:
        print(f"    server error: {line}")
    for exc in crashed:
        print(f"    client task crashed: {type(exc).__name__}: {exc}")
    print(
        f"errors              {errors} (honest failures {COUNTS.honest_failed}, unexpected "
        f"attacker outcomes {sum(COUNTS.unexpected.values())}, server error logs "
        f"{server_errors}, crashed tasks {len(crashed)}, leaked fds {leaked_fds}, leftover "
        f"connections {leftover_connections})"
    )
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--clients", type=int, default=20, help="honest clients (default 20)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent calls per client")
    parser.add_argument("--attackers", type=int, default=2, help="attackers (default 2)")
    parser.add_argument(
        "--only", action="append", metavar="CASE", help="attack with this case only (repeatable)"
    )
    parser.add_argument(
        "--transport",
        choices=["websockets", "picows"],
        default="websockets",
        help="the server's transport (the clients keep the default: both speak the same wire)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
