"""
Full-size load scenarios for wsrpc, with a summary table at the end.

The server runs in a child process (so that its memory, file descriptors and
tasks are its own, measured from /proc) on 127.0.0.1, port 0; the clients run
in this process. A "control" connection asks the server for its numbers and
drives it (release the slow method, fire callbacks, close).

Scenarios (``--only NAME`` runs one; all run by default):

``nested-default``
    10 clients x 10,000 concurrent calls with random payloads, each nesting
    0-10 levels of callbacks (client -> server -> client ...), at the default
    limits (``max_concurrent_calls=128``). Reports a deadlock when no call
    completes for ``--stall`` seconds.
``nested``
    The same with ``max_concurrent_calls=100_000`` on both sides: every reply
    must reach its own caller (uid, payload and the path of the callbacks
    checked), none lost, none duplicated.
``flood``
    One raw client floods a slow method with 64 KiB calls as fast as it can,
    ignoring the advertised limit, while an honest wsrpc client fires 20,000
    calls and another client times fast calls. The server must run at most
    ``max_concurrent_calls`` (128) per connection, stop reading the flooder,
    stay within tens of MiB, serve the other client, and answer every flooded
    call once the slow method is released.
``slow-reader``
    The server fires 10,000 callbacks of 16 KiB at a client that stopped
    reading (transport paused) while another client is served; then the
    client reads again and every callback must complete. Run twice: the slow
    client advertising the default ``max_concurrent_calls`` (128), then a
    hostile one advertising 1,000,000.
``one-read``
    Floods that arrive in one TCP read (the hardening issue, round two,
    item 4): 3,000 calls to the slow method in one 48 KB write, after one
    large frame (on picows, it grows the connection's read buffer); then
    300 calls to a method returning 1 MiB, in one 6 KB write, from a client
    that never reads (plain and async methods). Reports the calls the server
    holds for the connection (running, queued, and messages read but not
    yet decoded) and the bytes in its write buffer, at their peak.
``expensive-frames``
    An attacker streams valid frames that are expensive to decode (item 5):
    trees of small arrays just under the per-frame container budget, then
    800 KB ones over it (refused with 1009, reconnecting each time), while
    an honest client times calls; reports its p50/p99 before and during.
``rejected-headers``
    60 clients in a row, each sending a valid header of about 1 MiB of empty
    msgpack maps (some 64 MiB once decoded) and rejected with 4001 by the
    token check. Nothing of a rejected connection may outlive it: the
    server's memory must come back to where it started, with no garbage
    collection asked for (the cycles that once kept every header are gone).
``shutdown``
    100 clients with 4 calls each running on the server (and one client that
    stopped reading, in the second run) when the server closes: clients must
    see 1001, in-flight calls fail with ConnectionClosedError, new
    connections are refused, and close() returns within ``close_timeout``.

Usage::

    .venv/bin/python scripts/stress.py            # everything, a few minutes
    .venv/bin/python scripts/stress.py --only flood
    .venv/bin/python scripts/stress.py --scale 0.1  # 10x fewer calls
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import multiprocessing
import multiprocessing.connection
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
from websockets.asyncio.client import connect as ws_connect

import wsrpc
from wsrpc._transports.base import Channel

MiB = 2**20
HOST = "127.0.0.1"


# -- measuring a process ------------------------------------------------------------


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


# -- the server process ---------------------------------------------------------------


class ServerState:
    """What the server process keeps about its clients."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.stop = asyncio.Event()
        self.acceptors: dict[str, wsrpc.WebSocketAcceptor[Any, Any, Any]] = {}
        self.running: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self.slow_done = 0
        self.top_level: collections.Counter[str] = collections.Counter()
        self.fired: dict[str, dict[str, int]] = {}
        self.background: set[asyncio.Task[Any]] = set()
        self.close_seconds: float | None = None
        self.blobs = 0


class Service:
    """Each client's provider on the server."""

    def __init__(self, state: ServerState, acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]):
        self._state = state
        self._acceptor = acceptor
        self._name = str(acceptor.header)

    async def nest(self, depth: int, uid: str, payload: Any, trail: list[str]) -> dict[str, Any]:
        if not trail:
            self._state.top_level[uid] += 1
        trail = [*trail, "s"]
        if depth == 0:
            return {"uid": uid, "payload": payload, "trail": trail}
        result: dict[str, Any] = await self._acceptor.get_driver().nest(
            depth - 1, uid, payload, trail
        )
        return result

    async def slow(self, tag: int, payload: bytes) -> int:
        state, name = self._state, self._name
        state.running[name] += 1
        state.most[name] = max(state.most[name], state.running[name])
        try:
            await state.release.wait()
        finally:
            state.running[name] -= 1
        state.slow_done += 1
        return tag

    async def fast(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    def size(self, data: bytes) -> int:
        return len(data)

    def blob(self, size: int) -> bytes:
        self._state.blobs += 1
        return b"b" * size

    async def ablob(self, size: int) -> bytes:
        self._state.blobs += 1
        await asyncio.sleep(0)
        return b"a" * size

    def echo(self, *values: Any) -> int:
        return 1


class Control:
    """The control connection's provider: numbers and commands."""

    def __init__(self, state: ServerState, server: wsrpc.WebSocketServer[Any, Any, Any]):
        self._state = state
        self._server = server

    def stats(self) -> dict[str, Any]:
        state = self._state
        top = state.top_level
        digest = hashlib.sha256("\n".join(sorted(top)).encode()).hexdigest()
        return {
            **proc_status(),
            "cpu": sum(os.times()[:2]),
            "tasks": len(asyncio.all_tasks()),
            "connections": len(self._server.acceptors),
            "running": sum(state.running.values()),
            "most": dict(state.most),
            "slow_done": state.slow_done,
            "top_level": {"calls": sum(top.values()), "distinct": len(top), "digest": digest},
            "fired": state.fired,
        }

    def held(self, name: str) -> dict[str, int]:
        """What the server holds for client ``name``: calls (by kind) and buffered bytes."""
        acceptor = self._state.acceptors.get(name)
        communicator = acceptor._communicator if acceptor is not None else None
        if communicator is None:
            return {}
        channel: Any = communicator._channel
        held = channel._held or ()
        if hasattr(channel, "ws"):
            buffered = channel.ws.transport.get_write_buffer_size()
        else:
            buffered = channel._transport.underlying_transport.get_write_buffer_size()
        return {
            "running": len(communicator._running),
            "queued": len(communicator._backlog or ()),
            "undecoded": len(held),
            "undecoded_bytes": sum(len(message) for message in held),
            "write_buffer": buffered,
            "blobs": self._state.blobs,
        }

    def hold(self) -> None:
        self._state.release.clear()

    def release(self) -> None:
        self._state.release.set()

    def fire_at(self, name: str, count: int, size: int) -> None:
        """Start ``count`` callbacks of ``size`` bytes to client ``name``."""
        state = self._state
        driver = state.acceptors[name].get_driver()
        payload = b"f" * size
        tally = state.fired[name] = {"ok": 0, "failed": 0, "wrong": 0}

        async def one(i: int) -> None:
            try:
                result = await driver.cb(i, payload)
            except wsrpc.WsrpcError:
                tally["failed"] += 1
            else:
                tally["ok" if result == i else "wrong"] += 1

        for i in range(count):
            task = asyncio.get_running_loop().create_task(one(i))
            state.background.add(task)
            task.add_done_callback(state.background.discard)

    def shutdown(self) -> None:
        """Close the server (after this reply goes out), then stop the process."""

        async def close() -> None:
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            await self._server.close()
            self._state.close_seconds = time.perf_counter() - start
            self._state.stop.set()

        task = asyncio.get_running_loop().create_task(close())
        self._state.background.add(task)


def server_process(pipe: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    asyncio.run(serve(pipe, options))


async def serve(pipe: multiprocessing.connection.Connection, options: dict[str, Any]) -> None:
    state = ServerState()
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(**options)

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        if isinstance(acceptor.header, dict):  # a token check that fails
            await acceptor.reject(4001, "bad token")
            return
        name = str(acceptor.header)
        if name == "control":
            await acceptor.accept(Control(state, server))
            return
        state.acceptors[name] = acceptor
        await acceptor.accept(Service(state, acceptor))

    await server.open(0, handler, host=HOST)
    pipe.send(server.port)
    # The parent never writes: the pipe becomes readable (EOF) if it dies.
    loop = asyncio.get_running_loop()
    loop.add_reader(pipe.fileno(), state.stop.set)
    await state.stop.wait()
    loop.remove_reader(pipe.fileno())
    await server.close()
    pipe.send(
        {
            "close_seconds": state.close_seconds,
            "state": server.state.value,
            **proc_status(),
            "tasks": len(asyncio.all_tasks()),
        }
    )


@dataclass
class ServerHandle:
    process: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection
    port: int
    control: wsrpc.WebSocketConnector[str, None, Any]

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.control.get_driver().stats()
        return result

    async def stop(self) -> dict[str, Any]:
        """Close the server, wait for its process, and return its final report."""
        try:
            await self.control.get_driver().shutdown()
        except wsrpc.ConnectionClosedError:
            pass
        report: dict[str, Any] = await asyncio.to_thread(self.pipe.recv)
        await self.control.close()
        await asyncio.to_thread(self.process.join, 30)
        return report


async def start_server(**options: Any) -> ServerHandle:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    # A spawned process starts afresh: it is told the transport explicitly.
    options = {"transport": TRANSPORT, **options}
    process = context.Process(target=server_process, args=(child, options), daemon=True)
    process.start()
    port: int = await asyncio.to_thread(parent.recv)
    control: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector(
        "control", ping_interval=None
    )
    await control.connect(f"ws://{HOST}:{port}/")
    return ServerHandle(process, parent, port, control)


# -- reporting ---------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    verdict: str = "?"
    details: list[str] = field(default_factory=list)
    rss: str = ""
    fds: str = ""
    errors: int = 0


ROWS: list[Row] = []


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def memory_cells(row: Row, start: dict[str, Any], peak: float, end: dict[str, Any]) -> None:
    row.rss = f"{start['VmRSS']:.0f} / {peak:.0f} / {end['VmRSS']:.0f}"
    row.fds = f"{start['fds']:.0f} / {end['fds']:.0f}"


def print_table() -> None:
    print()
    print("Server RSS in MiB: start / peak / end; server fds: start / end.")
    header = ["scenario", "verdict", "server RSS", "fds", "errors", "details"]
    rows = [
        [row.scenario, row.verdict, row.rss, row.fds, str(row.errors), "; ".join(row.details)]
        for row in ROWS
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(5)]
    for line in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(line[:5], widths, strict=True)]
        print(" | ".join([*cells, line[5]]))


# -- scenario: nested callbacks ------------------------------------------------------


class NestClient:
    def __init__(self, name: str) -> None:
        self.name = name
        self.hops: collections.Counter[str] = collections.Counter()
        self.connector: wsrpc.WebSocketConnector[str, NestClient, Any] | None = None

    async def nest(self, depth: int, uid: str, payload: Any, trail: list[str]) -> dict[str, Any]:
        self.hops[uid] += 1
        trail = [*trail, self.name]
        if depth == 0:
            return {"uid": uid, "payload": payload, "trail": trail}
        assert self.connector is not None
        result: dict[str, Any] = await self.connector.get_driver().nest(
            depth - 1, uid, payload, trail
        )
        return result


def random_payload(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.25:
        return [random_payload(rng, depth + 1) for _ in range(rng.randrange(6))]
    if depth < 3 and roll < 0.45:
        return {f"k{rng.randrange(100)}": random_payload(rng, depth + 1) for _ in range(4)}
    if roll < 0.6:
        return rng.randrange(-(2**63), 2**63)
    if roll < 0.7:
        return rng.uniform(-1e9, 1e9)
    if roll < 0.85:
        return "".join(rng.choice("abcdé✓𝄞 ") for _ in range(rng.randrange(40)))
    if roll < 0.95:
        return rng.randbytes(rng.randrange(200))
    return rng.choice([None, True, False])


async def nested(name: str, clients: int, calls: int, limit: int | None, stall: float) -> None:
    row = Row(name)
    ROWS.append(row)
    limits: dict[str, Any] = {} if limit is None else {"max_concurrent_calls": limit}
    log(f"{name}: {clients} clients x {calls} concurrent calls, nesting 0-10, limits {limits}")
    server = await start_server(**limits)
    start_stats = await server.stats()
    rng = random.Random(1234)
    providers = [NestClient(f"c{i}") for i in range(clients)]
    connectors = []
    for provider in providers:
        connector: wsrpc.WebSocketConnector[str, NestClient, Any] = wsrpc.WebSocketConnector(
            provider.name, provider, ping_interval=None, **limits
        )
        provider.connector = connector
        await connector.connect(server.url)
        connectors.append(connector)
    plan: dict[str, tuple[str, int, Any]] = {}
    tasks: dict[str, asyncio.Future[Any]] = {}
    began = time.perf_counter()
    for index in range(calls):
        for provider, connector in zip(providers, connectors, strict=True):
            uid = f"{provider.name}-{index}"
            depth, payload = rng.randrange(11), random_payload(rng)
            plan[uid] = provider.name, depth, payload
            tasks[uid] = asyncio.ensure_future(connector.get_driver().nest(depth, uid, payload, []))
    total_rpcs = sum(depth + 1 for _, depth, _ in plan.values())
    peak = start_stats["VmRSS"]
    pending = set(tasks.values())
    last_done, last_progress = 0, time.perf_counter()
    stalled_cpu = start_stats["cpu"]
    while pending:
        _, pending = await asyncio.wait(pending, timeout=2)
        done = len(tasks) - len(pending)
        stats = await server.stats()
        peak = max(peak, stats["VmHWM"])
        if done != last_done:
            last_done, last_progress = done, time.perf_counter()
            stalled_cpu = stats["cpu"]
        elif time.perf_counter() - last_progress > stall:
            break
    elapsed = time.perf_counter() - began
    if pending:
        # Stuck calls and an idle server: a deadlock. A busy one: too slow.
        busy = (stats["cpu"] - stalled_cpu) / (time.perf_counter() - last_progress)
        row.verdict = "DEADLOCK" if busy < 0.1 else "STALLED"
        row.details.append(
            f"{len(pending)} of {len(tasks)} calls stuck, no progress for {stall:.0f} s, "
            f"server CPU {busy:.0%} meanwhile (server tasks: {stats['tasks']})"
        )
        log(f"{name}: {row.verdict}, {len(tasks) - len(pending)} of {len(tasks)} completed")
        for connector in connectors:
            await connector.close()
        await asyncio.gather(*pending, return_exceptions=True)
    else:
        wrong = 0
        for uid, task in tasks.items():
            client, depth, payload = plan[uid]
            result = task.result()
            expected = [("s", client)[hop % 2] for hop in range(depth + 1)]
            if (result["uid"], result["payload"], result["trail"]) != (uid, payload, expected):
                wrong += 1
        hop_errors = sum(
            1
            for uid, (client, depth, _) in plan.items()
            if providers[int(client[1:])].hops[uid] != (depth + 1) // 2
        )
        top = stats["top_level"]
        digest = hashlib.sha256("\n".join(sorted(plan)).encode()).hexdigest()
        lost_or_dup = top["calls"] != len(plan) or top["distinct"] != len(plan)
        ok = not wrong and not hop_errors and not lost_or_dup and top["digest"] == digest
        row.verdict = "OK" if ok else "FAIL"
        row.errors = wrong + hop_errors + int(lost_or_dup)
        row.details.append(
            f"{len(tasks)} calls ({total_rpcs} RPCs incl. callbacks) in {elapsed:.1f} s, "
            f"{total_rpcs / elapsed:.0f} RPC/s; misrouted {wrong}, callback-count errors "
            f"{hop_errors}, server saw {top['calls']} top-level calls ({top['distinct']} distinct)"
        )
        log(f"{name}: {row.verdict} in {elapsed:.1f} s")
        for connector in connectors:
            await connector.close()
    end_stats = await server.stats()
    memory_cells(row, start_stats, max(peak, end_stats["VmHWM"]), end_stats)
    await server.stop()


# -- scenario: flood -------------------------------------------------------------------


class SlowRemote(Protocol):
    async def slow(self, tag: int, payload: bytes) -> int: ...
    async def fast(self, x: int) -> int: ...


async def timed_calls(call: Callable[[int], Awaitable[int]], count: int) -> list[float]:
    """Latencies (ms) of ``count`` sequential calls, checking each result."""
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        assert await call(i) == i + 1
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def latency_text(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, max {ordered[-1]:.1f} ms"


async def flood(seconds: float, honest_calls: int) -> None:
    row = Row("flood")
    ROWS.append(row)
    limit = 128
    size = 65_536
    log(
        f"flood: raw client floods 64 KiB calls for {seconds:.0f} s; honest client fires "
        f"{honest_calls}; limit {limit}"
    )
    server = await start_server(max_concurrent_calls=limit)
    start_stats = await server.stats()
    await server.control.get_driver().hold()
    honest: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector(
        "honest", ping_interval=None
    )
    other: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector(
        "other", ping_interval=None
    )
    await honest.connect(server.url)
    await other.connect(server.url)
    payload = b"p" * size
    sent = 0
    replies: dict[int, int] = {}
    async with ws_connect(server.url, max_size=None, ping_interval=None) as raw:
        await raw.send(msgpack.packb([0, 1, "raw", {}]))
        assert msgpack.unpackb(await raw.recv(decode=False))[0] == 1

        async def raw_flood() -> None:
            nonlocal sent
            while True:
                # send() writes the frame before it waits for the buffer to
                # drain, its only pause: count the call as sent before it.
                sent += 1
                await raw.send(msgpack.packb([2, sent, "slow", [sent, payload]]))

        async def raw_read() -> None:
            while True:
                reply = msgpack.unpackb(await raw.recv(decode=False))
                replies[reply[1]] = reply[2]

        reading = asyncio.ensure_future(raw_read())
        flooding = asyncio.ensure_future(raw_flood())
        honest_tasks = [
            asyncio.ensure_future(honest.get_driver().slow(i, payload)) for i in range(honest_calls)
        ]
        began = time.perf_counter()
        latencies: list[float] = []
        peak = start_stats["VmRSS"]
        while time.perf_counter() - began < seconds:
            latencies += await timed_calls(other.get_driver().fast, 50)
            stats = await server.stats()
            peak = max(peak, stats["VmHWM"])
        flooding.cancel()  # the flood stops (its last send may be stuck in drain)
        await asyncio.gather(flooding, return_exceptions=True)
        mid = await server.stats()
        peak = max(peak, mid["VmHWM"])
        log(
            f"flood: {sent} raw calls sent ({sent * size / MiB:.0f} MiB), server RSS "
            f"{mid['VmRSS']:.0f} MiB, running {mid['running']}, most {mid['most']}"
        )
        await server.control.get_driver().release()
        released = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*honest_tasks), 120)
        while len(replies) < sent and time.perf_counter() - released < 120:
            await asyncio.wait({reading}, timeout=0.5)
        drain_seconds = time.perf_counter() - released
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    honest_ok = results == list(range(honest_calls))
    raw_ok = len(replies) == sent and all(replies[uid] == uid for uid in range(1, sent + 1))
    most = mid["most"]
    within = all(value <= limit for value in most.values())
    growth = peak - start_stats["VmRSS"]
    row.errors = int(not honest_ok) + int(not raw_ok) + int(not within)
    row.verdict = "OK" if not row.errors and growth < 64 else "FAIL"
    row.details += [
        f"raw flooder sent {sent} x 64 KiB ({sent * size / MiB:.0f} MiB) in {seconds:.0f} s "
        f"before backpressure held it; {len(replies)} answered",
        f"honest {honest_calls} calls all completed: {honest_ok}; both floods done "
        f"{drain_seconds:.1f} s after release",
        f"most running per connection {most} (limit {limit})",
        f"server RSS growth {growth:.0f} MiB",
        f"other client during flood: {len(latencies)} calls, {latency_text(latencies)}",
    ]
    await honest.close()
    await other.close()
    end_stats = await server.stats()
    memory_cells(row, start_stats, peak, end_stats)
    await server.stop()
    log(f"flood: {row.verdict}")


# -- scenario: floods in one read ---------------------------------------------------------


def client_frame(payload: bytes) -> bytes:
    """A masked binary client frame (zero key: the payload goes as it is)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 2**16:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw_connection(url: str, name: str) -> Any:
    raw = await ws_connect(url, max_size=None, ping_interval=None)
    await raw.send(msgpack.packb([0, 1, name, {}]))
    assert msgpack.unpackb(await raw.recv(decode=False))[0] == 1
    return raw


async def peak_held(server: ServerHandle, name: str, seconds: float) -> dict[str, int]:
    """The largest of each figure held() reports over ``seconds``."""
    peak: dict[str, int] = collections.Counter()
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        now = await server.control.get_driver().held(name)
        for key, value in now.items():
            peak[key] = max(peak[key], value)
        now["calls"] = now.get("running", 0) + now.get("queued", 0) + now.get("undecoded", 0)
        peak["calls"] = max(peak["calls"], now["calls"])
    return dict(peak)


async def one_read(calls: int, blobs: int) -> None:
    row = Row("one-read")
    ROWS.append(row)
    limit = 128
    log(f"one-read: {calls} slow calls in one write; {blobs} x 1 MiB answers to a non-reader")
    server = await start_server(max_concurrent_calls=limit, max_message_size=2 * MiB)
    start_stats = await server.stats()
    peak = start_stats["VmRSS"]
    await server.control.get_driver().hold()
    raw = await raw_connection(server.url, "flood1")
    # One large frame first: picows keeps a read buffer that fits it.
    await raw.send(msgpack.packb([2, 1, "size", [b"x" * 200_000]]))
    assert msgpack.unpackb(await raw.recv(decode=False)) == [3, 1, 200_000]
    data = b"".join(
        client_frame(msgpack.packb([2, uid, "slow", [uid, b""]])) for uid in range(2, calls + 2)
    )
    raw.transport.write(data)
    held = await peak_held(server, "flood1", 2.0)
    peak = max(peak, (await server.stats())["VmHWM"])
    await server.control.get_driver().release()
    answered = 1
    while answered < calls + 1:
        await asyncio.wait_for(raw.recv(decode=False), 60)
        answered += 1
    await raw.close()
    bound = 2 * limit
    row.details.append(
        f"{calls} calls in one {len(data) / 1000:.0f} KB write: held at most "
        f"{held.get('calls', 0)} (running {held.get('running', 0)}, queued "
        f"{held.get('queued', 0)}, undecoded {held.get('undecoded', 0)} = "
        f"{held.get('undecoded_bytes', 0) / 1024:.1f} KiB); all answered after release"
    )
    ok = held.get("running", 0) + held.get("queued", 0) <= bound
    for method in ("blob", "ablob"):
        name = f"reader-{method}"
        raw = await raw_connection(server.url, name)
        before = (await server.control.get_driver().held(name))["blobs"]
        raw.transport.pause_reading()
        size = MiB - 64
        data = b"".join(
            client_frame(msgpack.packb([2, uid, method, [size]])) for uid in range(1, blobs + 1)
        )
        raw.transport.write(data)
        held = await peak_held(server, name, 3.0)
        stats = await server.stats()
        peak = max(peak, stats["VmHWM"])
        row.details.append(
            f"{blobs} x {method}(1 MiB) in one {len(data) / 1000:.1f} KB write, never read: "
            f"write buffer at most {held.get('write_buffer', 0) / MiB:.2f} MiB, "
            f"{held.get('blobs', 0) - before} answers made, server RSS "
            f"{stats['VmRSS'] - start_stats['VmRSS']:+.0f} MiB"
        )
        ok = ok and held.get("write_buffer", 0) <= 4 * MiB
        raw.transport.resume_reading()
        for _ in range(blobs):
            await asyncio.wait_for(raw.recv(decode=False), 60)
        await raw.close()
    row.verdict = "OK" if ok else "FAIL"
    row.errors = int(not ok)
    end_stats = await server.stats()
    memory_cells(row, start_stats, peak, end_stats)
    await server.stop()
    log(f"one-read: {row.verdict}")


# -- scenario: frames that are expensive to decode -------------------------------------------


def tree_of_small_arrays(levels: int, width: int = 15) -> bytes:
    node = b"\x90"
    for _ in range(levels):
        node = bytes([0x90 | width]) + node * width
    return node


async def expensive_frames(seconds: float) -> None:
    row = Row("expensive-frames")
    ROWS.append(row)
    log(f"expensive-frames: {seconds:.0f} s under the budget, {seconds:.0f} s over it")
    server = await start_server()
    start_stats = await server.stats()
    honest: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector(
        "honest", ping_interval=None
    )
    await honest.connect(server.url)
    fast = honest.get_driver().fast
    base = await timed_calls(fast, 500)
    row.details.append(f"honest alone: {latency_text(base)}")
    # Two trees of 54,241 arrays (108 KB): under MAX_CONTAINERS, and with
    # no 16- or 32-bit header, so that the structure walk skips it too.
    under = msgpack.packb([2, 1, "echo", [None, None]])[:-2] + tree_of_small_arrays(4) * 2
    over = msgpack.packb([2, 1, "echo", [None]])[:-1] + tree_of_small_arrays(5)  # 813,616 arrays
    peak = start_stats["VmRSS"]
    for name, frame in (("under", under), ("over", over)):
        stop = asyncio.Event()
        sent = 0

        async def attack(frame: bytes = frame, stop: asyncio.Event = stop) -> None:
            nonlocal sent
            raw = await raw_connection(server.url, "attacker")
            uid = 1
            while not stop.is_set():
                payload = frame.replace(b"\x94\x02\x01", b"\x94\x02" + msgpack.packb(uid), 1)
                try:
                    await raw.send(payload)
                    sent += 1
                    await raw.recv(decode=False)  # the answer, or the close
                except Exception:
                    await raw.close()
                    raw = await raw_connection(server.url, "attacker")
                uid += 1
            await raw.close()

        task = asyncio.ensure_future(attack())
        began = time.perf_counter()
        latencies: list[float] = []
        while time.perf_counter() - began < seconds:
            latencies += await timed_calls(fast, 50)
        stop.set()
        await asyncio.wait_for(task, 30)
        peak = max(peak, (await server.stats())["VmHWM"])
        row.details.append(
            f"attacker streaming {len(frame) / 1000:.0f} KB frames ({name} the budget, "
            f"{sent} sent): honest {latency_text(latencies)}"
        )
    await honest.close()
    row.verdict = "OK"
    end_stats = await server.stats()
    memory_cells(row, start_stats, peak, end_stats)
    await server.stop()
    log(f"expensive-frames: {row.verdict}")


# -- scenario: slow reader ------------------------------------------------------------------


class Callee:
    def __init__(self) -> None:
        self.received = 0

    def cb(self, i: int, payload: bytes) -> int:
        self.received += 1
        return i


def channel_of(connector: wsrpc.WebSocketConnector[Any, Any, Any]) -> Channel:
    """The connector's channel (pausing reads has no public API)."""
    communicator = connector._communicator
    assert communicator is not None
    return communicator._channel


async def slow_reader(count: int, client_limit: int, hold_seconds: float) -> None:
    row = Row(f"slow-reader (client limit {client_limit})")
    ROWS.append(row)
    size = 16_384
    log(f"{row.scenario}: {count} callbacks of 16 KiB at a client that stopped reading")
    server = await start_server()
    start_stats = await server.stats()
    slow_callee = Callee()
    slow: wsrpc.WebSocketConnector[str, Callee, Any] = wsrpc.WebSocketConnector(
        "slow", slow_callee, max_concurrent_calls=client_limit, ping_interval=None
    )
    other_callee = Callee()
    other: wsrpc.WebSocketConnector[str, Callee, SlowRemote] = wsrpc.WebSocketConnector(
        "other", other_callee, ping_interval=None
    )
    await slow.connect(server.url)
    await other.connect(server.url)
    channel_of(slow).pause_reading()
    control = server.control.get_driver()
    await control.fire_at("slow", count, size)
    began = time.perf_counter()
    latencies: list[float] = []
    peak = start_stats["VmRSS"]
    callbacks_to_other = 0
    while time.perf_counter() - began < hold_seconds:
        latencies += await timed_calls(other.get_driver().fast, 50)
        await control.fire_at("other", 20, 100)
        callbacks_to_other += 20
        stats = await server.stats()
        peak = max(peak, stats["VmHWM"])
    held = await server.stats()
    peak = max(peak, held["VmHWM"])
    log(
        f"{row.scenario}: server RSS {held['VmRSS']:.0f} MiB while held, "
        f"fired {held['fired'].get('slow')}"
    )
    channel_of(slow).resume_reading()
    resumed = time.perf_counter()
    while time.perf_counter() - resumed < 120:
        stats = await server.stats()
        peak = max(peak, stats["VmHWM"])
        tally = stats["fired"]["slow"]
        if tally["ok"] + tally["failed"] + tally["wrong"] == count:
            break
        await asyncio.sleep(0.5)
    drain_seconds = time.perf_counter() - resumed
    tally = stats["fired"]["slow"]
    growth = peak - start_stats["VmRSS"]
    row.errors = tally["failed"] + tally["wrong"] + (count - sum(tally.values()))
    row.verdict = "OK" if not row.errors and growth < 64 else "FAIL"
    row.details += [
        f"{tally['ok']} of {count} callbacks completed {drain_seconds:.1f} s after the client "
        f"read again (payload total {count * size / MiB:.0f} MiB)",
        f"server RSS growth {growth:.0f} MiB",
        f"other client meanwhile: {len(latencies)} calls, {latency_text(latencies)}; "
        f"{other_callee.received} of {callbacks_to_other} callbacks to it answered",
    ]
    await slow.close()
    await other.close()
    end_stats = await server.stats()
    memory_cells(row, start_stats, peak, end_stats)
    await server.stop()
    log(f"{row.scenario}: {row.verdict}")


# -- scenario: graceful shutdown ----------------------------------------------------------


async def shutdown(clients: int, mute: bool) -> None:
    close_timeout = 10.0
    row = Row(f"shutdown ({clients} clients{' + 1 mute' if mute else ''})")
    ROWS.append(row)
    log(f"{row.scenario}: 4 calls each running on the server, then close()")
    server = await start_server(close_timeout=close_timeout)
    start_stats = await server.stats()
    await server.control.get_driver().hold()
    connectors: list[wsrpc.WebSocketConnector[str, None, SlowRemote]] = []
    for index in range(clients + int(mute)):
        connector: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector(
            f"c{index}", ping_interval=None
        )
        await connector.connect(server.url)
        connectors.append(connector)
    responsive = connectors[:clients]
    calls = {
        connector: [asyncio.ensure_future(connector.get_driver().slow(i, b"")) for i in range(4)]
        for connector in connectors
    }
    for connector in connectors:
        assert await connector.get_driver().fast(1) == 2
    while (await server.stats())["running"] < 4 * len(connectors):  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # polling another process
    peak_stats = await server.stats()
    if mute:
        channel_of(connectors[-1]).pause_reading()
    began = time.perf_counter()
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.wait_for(asyncio.gather(*(c.join() for c in responsive)), close_timeout + 5)
    joined = time.perf_counter() - began
    late: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("late")
    try:
        await late.connect(server.url, timeout=5)
        refused = "NOT refused"
    except wsrpc.ConnectError:
        refused = "refused (ConnectError)"
    except wsrpc.WsrpcError as exc:
        refused = f"failed with {type(exc).__name__}: {exc}"
    still_closing = not stopping.done()
    report = await stopping
    if mute:
        channel_of(connectors[-1]).resume_reading()
    codes: collections.Counter[str] = collections.Counter()
    for connector, pending in calls.items():
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, wsrpc.ConnectionClosedError):
                codes[f"closed {outcome.code}"] += 1
            elif isinstance(outcome, BaseException):
                codes[type(outcome).__name__] += 1
            else:
                codes["completed"] += 1
        await asyncio.wait_for(connector.join(), 15)
    responsive_codes = collections.Counter(
        str(connector.close_info.code) if connector.close_info else "?" for connector in responsive
    )
    close_seconds = report["close_seconds"]
    clean = (
        refused.startswith("refused")
        and close_seconds is not None
        and close_seconds <= close_timeout + 1
        and set(responsive_codes) == {"1001"}
        and set(codes) <= {"closed 1001", "closed 1006", "completed"}
    )
    row.verdict = "OK" if clean else "FAIL"
    row.errors = sum(n for key, n in codes.items() if not key.startswith(("closed", "compl")))
    row.details += [
        f"close() took {close_seconds:.2f} s (close_timeout {close_timeout:.0f} s); responsive "
        f"clients all closed after {joined:.2f} s with codes {dict(responsive_codes)}",
        f"in-flight calls: {dict(codes)}",
        f"a new connection while closing (close still running: {still_closing}): {refused}",
        f"server at the end: state {report['state']}, tasks {report['tasks']}",
    ]
    row.rss = f"{start_stats['VmRSS']:.0f} / {peak_stats['VmHWM']:.0f} / {report['VmRSS']:.0f}"
    row.fds = f"{start_stats['fds']:.0f} / {report['fds']:.0f}"
    log(f"{row.scenario}: {row.verdict}, close() {close_seconds:.2f} s")


# -- main -------------------------------------------------------------------------------------


TRANSPORT: wsrpc.TransportName = "websockets"
"""The transport of this run (``--transport``), for the server's process too."""


# -- scenario: rejected large headers -------------------------------------------


async def rejected_headers(count: int) -> None:
    row = Row("rejected-headers")
    ROWS.append(row)
    server = await start_server()
    # 1 MiB frames of empty maps: one byte each on the wire, a dict each
    # once decoded.
    padding = 2**20 - 64
    header = {"token": "wrong", "padding": [{}] * padding}
    start = await server.stats()
    peak = start["VmRSS"]
    log(f"{row.scenario}: {count} clients, headers of {padding:,} empty maps")
    rejected = 0
    after_first = start["VmRSS"]
    for i in range(count):
        connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector(header)
        try:
            await connector.connect(server.url, timeout=30)
        except wsrpc.RejectedError as exc:
            rejected += exc.code == 4001
        stats = await server.stats()
        peak = max(peak, stats["VmRSS"])
        if i == 0:
            after_first = stats["VmRSS"]
    end = await server.stats()
    for _ in range(100):  # the last one's release may trail its rejection a little
        if end["connections"] == 1:
            break
        await asyncio.sleep(0.05)
        end = await server.stats()
    await server.stop()
    memory_cells(row, start, peak, end)
    # The allocator keeps the pages of one decoded header for the next one
    # (freed, not returned to the system): what matters is that the later
    # headers add nothing. Each decodes to some 64 MiB, so keeping them
    # would grow the server by gigabytes.
    growth = end["VmRSS"] - after_first
    row.details = [
        f"{rejected}/{count} rejected with 4001",
        f"RSS after the first {after_first - start['VmRSS']:+.1f} MiB, "
        f"then {growth:+.1f} MiB over the next {count - 1}",
        f"connections left {end['connections'] - 1}",
    ]
    ok = rejected == count and growth < 16 and end["connections"] == 1
    row.verdict = "OK" if ok else "FAIL"
    log(f"{row.scenario}: {row.verdict}: {'; '.join(row.details)}")


def use_transport(name: wsrpc.TransportName) -> None:
    """Make ``name`` the default transport of every server and connector made here."""
    global TRANSPORT
    TRANSPORT = name
    for cls in (wsrpc.WebSocketServer, wsrpc.WebSocketConnector):
        defaults = cls.__init__.__kwdefaults__
        assert defaults is not None
        defaults["transport"] = name


async def main(args: argparse.Namespace) -> int:
    scale = args.scale
    only = args.only
    if only in (None, "nested-default"):
        await nested("nested-default", 10, int(10_000 * scale), None, args.stall)
    if only in (None, "nested"):
        await nested("nested", 10, int(10_000 * scale), 100_000, args.stall)
    if only in (None, "flood"):
        await flood(args.flood_seconds, int(20_000 * scale))
    if only in (None, "one-read"):
        await one_read(3_000, 300)
    if only in (None, "expensive-frames"):
        await expensive_frames(args.flood_seconds)
    if only in (None, "slow-reader"):
        await slow_reader(int(10_000 * scale), 128, args.hold_seconds)
        await slow_reader(int(10_000 * scale), 1_000_000, args.hold_seconds)
    if only in (None, "rejected-headers"):
        await rejected_headers(max(1, int(60 * min(scale, 1.0))))
    if only in (None, "shutdown"):
        await shutdown(int(100 * max(scale, 0.1)), mute=False)
        await shutdown(int(100 * max(scale, 0.1)), mute=True)
    print_table()
    return 0 if all(row.verdict == "OK" for row in ROWS) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=[
            "nested-default",
            "nested",
            "flood",
            "one-read",
            "expensive-frames",
            "slow-reader",
            "rejected-headers",
            "shutdown",
        ],
        help="run one scenario",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply call counts")
    parser.add_argument(
        "--stall", type=float, default=15.0, help="seconds without progress that mean deadlock"
    )
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--hold-seconds", type=float, default=5.0)
    parser.add_argument(
        "--transport",
        choices=["websockets", "picows"],
        default="websockets",
        help="wsrpc's transport, on both sides (picows: the fast one)",
    )
    arguments = parser.parse_args()
    use_transport(arguments.transport)
    sys.exit(asyncio.run(main(arguments)))
