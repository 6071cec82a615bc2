"""
Behaviour under load, scaled to run in the suite (each test well under 15 s
on two cores). ``scripts/stress.py`` runs the full-size versions.

* Correctness under load: many clients, many concurrent calls with random
  payloads and nested callbacks up to 10 deep; every reply reaches its own
  caller, none is lost or duplicated, nothing deadlocks.
* Overload: a client flooding a slow method meets the per-connection
  concurrency limit (an honest client is held back by its credit, a raw one
  by the server no longer reading); the server's memory stays bounded, other
  clients are served, and every flooded call completes once the method is
  released.
* A slow reader: the server fires callbacks at a client that stopped reading
  its socket; memory stays bounded, another client is served, and the
  callbacks complete when the client reads again.
* Graceful shutdown with calls in flight: ``close()`` returns within the
  close timeout, clients see 1001, pending calls fail cleanly, new
  connections are refused.

Memory is measured with :mod:`tracemalloc` for the whole process (clients
included), which bounds the server's share from above.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

import wsrpc
from wsrpc._transports.base import Channel

from ..conftest import TRANSPORT, UNIT, AnyAcceptor, running_server, url_of

MiB = 2**20


# -- helpers --------------------------------------------------------------------


def random_payload(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack value: nested lists and maps of scalars, str and bytes."""
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


@contextmanager
def traced_memory() -> Iterator[dict[str, float]]:
    """Trace allocations; on exit the dict holds the peak growth in MiB."""
    result = {"peak": 0.0}
    started = not tracemalloc.is_tracing()  # python -X tracemalloc traces already
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        yield result
        result["peak"] = (tracemalloc.get_traced_memory()[1] - base) / MiB
    finally:
        if started:
            tracemalloc.stop()


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[ClientConnection]:
    """A bare websockets client that did wsrpc's handshake by hand, advertising no limits."""
    async with ws_connect(url, max_size=None) as ws:
        await ws.send(msgpack.packb([0, 1, "raw", {}]))
        async with asyncio.timeout(5 * UNIT):
            assert msgpack.unpackb(await ws.recv(decode=False))[0] == 1
        yield ws


def state_of(server: wsrpc.WebSocketServer[Any, Any, Any]) -> wsrpc.ServerState:
    """The server's state (a call, so that mypy does not narrow it across awaits)."""
    return server.state


def channel_of(connector: wsrpc.WebSocketConnector[Any, Any, Any]) -> Channel:
    """The channel under a connector (test-only: pausing reads has no public API)."""
    communicator = connector._communicator
    assert communicator is not None
    return communicator._channel


# -- correctness under load: nested callbacks -----------------------------------


class NestRemote(Protocol):
    async def nest(
        self, depth: int, uid: str, payload: Any, trail: list[str]
    ) -> dict[str, Any]: ...


class NestService:
    """The server's provider: nest() calls the same client back, one level down."""

    def __init__(self, acceptor: AnyAcceptor, top_level: collections.Counter[str]) -> None:
        self._acceptor = acceptor
        self._top_level = top_level

    async def nest(self, depth: int, uid: str, payload: Any, trail: list[str]) -> dict[str, Any]:
        if not trail:
            self._top_level[uid] += 1  # every top-level call is seen exactly once
        trail = [*trail, "s"]
        if depth == 0:
            return {"uid": uid, "payload": payload, "trail": trail}
        driver: NestRemote = self._acceptor.get_driver()
        return await driver.nest(depth - 1, uid, payload, trail)


class NestClient:
    """A client's provider: nest() calls the server back, one level down."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hops: collections.Counter[str] = collections.Counter()
        self.connector: wsrpc.WebSocketConnector[str, NestClient, NestRemote] | None = None

    async def nest(self, depth: int, uid: str, payload: Any, trail: list[str]) -> dict[str, Any]:
        self.hops[uid] += 1
        trail = [*trail, self.name]
        if depth == 0:
            return {"uid": uid, "payload": payload, "trail": trail}
        assert self.connector is not None
        return await self.connector.get_driver().nest(depth - 1, uid, payload, trail)


async def nested_load(
    *, clients: int, calls: int, max_depth: int, seed: int, timeout: float, **limits: Any
) -> None:
    """Run the nested-callback load and check every reply against its caller."""
    top_level: collections.Counter[str] = collections.Counter()

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(NestService(acceptor, top_level))

    rng = random.Random(seed)
    async with running_server(handler, **limits) as server:
        providers = [NestClient(f"c{index}") for index in range(clients)]
        connectors: list[wsrpc.WebSocketConnector[str, NestClient, NestRemote]] = []
        try:
            for provider in providers:
                connector = wsrpc.WebSocketConnector[str, NestClient, NestRemote](
                    provider.name, provider, **limits
                )
                provider.connector = connector
                await connector.connect(url_of(server), timeout=5 * UNIT)
                connectors.append(connector)
            plan: dict[tuple[str, str], tuple[int, Any]] = {}
            tasks: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
            for index in range(calls):
                for provider, connector in zip(providers, connectors, strict=True):
                    key = provider.name, f"{provider.name}-{index}"
                    depth, payload = rng.randrange(max_depth + 1), random_payload(rng)
                    plan[key] = depth, payload
                    tasks[key] = asyncio.ensure_future(
                        connector.get_driver().nest(depth, key[1], payload, [])
                    )
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
            if pending:
                for connector in connectors:
                    await connector.close()
                await asyncio.gather(*pending, return_exceptions=True)
                pytest.fail(f"deadlock: {len(pending)} of {len(tasks)} calls never completed")
            for (name, uid), task in tasks.items():
                depth, payload = plan[name, uid]
                result = task.result()
                # Its own reply: same uid, same payload, through the same client.
                assert result["uid"] == uid
                assert result["payload"] == payload
                assert result["trail"] == [("s", name)[hop % 2] for hop in range(depth + 1)]
            # None lost, none duplicated, on either side.
            assert sorted(top_level) == sorted(uid for _, uid in plan)
            assert set(top_level.values()) == {1}
            for provider in providers:
                for (name, uid), (depth, _) in plan.items():
                    if name == provider.name:
                        assert provider.hops[uid] == (depth + 1) // 2, (uid, depth)
        finally:
            for connector in connectors:
                await connector.close()


async def test_nested_callbacks_under_load_reach_their_callers() -> None:
    # 4 clients x 1,000 concurrent calls, each nesting 0-10 levels of
    # callbacks. The limits exceed what the nesting can hold at once: see the
    # next test for what happens at the default limits.
    await nested_load(
        clients=4,
        calls=1_000,
        max_depth=10,
        seed=20240601,
        timeout=40 * UNIT,
        max_concurrent_calls=10_000,
    )


async def test_nested_callbacks_at_the_default_limits_do_not_deadlock() -> None:
    # 300 concurrent calls nesting up to 3 deep, default limits (128): top-level
    # calls take every slot, and their callbacks, marked as nested, go past.
    await nested_load(clients=1, calls=300, max_depth=3, seed=7, timeout=3 * UNIT)


# -- overload -----------------------------------------------------------------------


class SlowService:
    """A per-connection provider with a slow method held by a shared gate."""

    def __init__(self, release: asyncio.Event, full: asyncio.Event, limit: int) -> None:
        self._release = release
        self._full = full
        self._limit = limit
        self.running = 0
        self.most = 0

    async def slow(self, tag: int, payload: bytes) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running >= self._limit:
            self._full.set()
        try:
            await self._release.wait()
        finally:
            self.running -= 1
        return tag

    async def fast(self, x: int) -> int:
        await asyncio.sleep(0)
        return x + 1


class SlowRemote(Protocol):
    async def slow(self, tag: int, payload: bytes) -> int: ...
    async def fast(self, x: int) -> int: ...


async def test_overload_is_throttled_at_the_concurrency_limit() -> None:
    limit = 8
    release = asyncio.Event()
    services: dict[str, SlowService] = {}
    full = {name: asyncio.Event() for name in ("honest", "raw", "other")}

    async def handler(acceptor: AnyAcceptor) -> None:
        name = str(acceptor.header)
        services[name] = SlowService(release, full[name], limit)
        await acceptor.accept(services[name])

    payload = b"p" * 16_384
    flood = 2_000
    async with running_server(handler, max_concurrent_calls=limit) as server:
        honest: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector("honest")
        other: wsrpc.WebSocketConnector[str, None, SlowRemote] = wsrpc.WebSocketConnector("other")
        await honest.connect(url_of(server), timeout=5 * UNIT)
        await other.connect(url_of(server), timeout=5 * UNIT)
        with traced_memory() as memory:
            # A raw client that ignores the advertised limit and sends 2,000
            # calls of 16 KiB (31 MiB) without waiting.
            async with raw_client(url_of(server)) as raw:
                replies: list[list[Any]] = []

                async def raw_flood() -> None:
                    for uid in range(1, flood + 1):
                        await raw.send(msgpack.packb([2, uid, "slow", [uid, payload]]))

                async def raw_read() -> None:
                    while len(replies) < flood:
                        replies.append(msgpack.unpackb(await raw.recv(decode=False)))

                flooding = asyncio.ensure_future(raw_flood())
                reading = asyncio.ensure_future(raw_read())
                calls = [
                    asyncio.ensure_future(honest.get_driver().slow(i, payload))
                    for i in range(flood)
                ]
                async with asyncio.timeout(10 * UNIT):
                    for event in (full["honest"], full["raw"]):
                        await event.wait()
                    # Others are served while both floods are held: a
                    # connection of their own, slots of their own.
                    for i in range(50):
                        assert await other.get_driver().fast(i) == i + 1
                # The raw flood cannot get through: the server stopped reading.
                done, _ = await asyncio.wait({flooding}, timeout=UNIT)
                assert not done, "the server read a flood it cannot run"
                assert not any(call.done() for call in calls)
                release.set()
                async with asyncio.timeout(30 * UNIT):
                    results = await asyncio.gather(*calls)
                    await flooding
                    await reading
        assert results == list(range(flood))
        assert sorted(reply[1] for reply in replies) == list(range(1, flood + 1))
        assert all(reply == [3, reply[1], reply[1]] for reply in replies)
        assert services["honest"].most == limit
        assert services["raw"].most == limit  # never more than the limit at once
        await honest.close()
        await other.close()
    # 2 x 31 MiB of calls went through; never more than a few MiB at once on
    # websockets (3.8 MiB measured). On picows the peak is 24-28 MiB, the
    # same at 223a616, and reached 44.6 MiB once with the suite running on
    # both cores: where picows holds it is not found yet (see
    # docs/security.md, "Measured"). Bounded, not yet explained.
    bound = 32 if TRANSPORT == "websockets" else 64
    assert memory["peak"] < bound, f"peak memory growth {memory['peak']:.1f} MiB"


# -- slow reader ----------------------------------------------------------------------


class Callee:
    """A client's provider for callbacks."""

    def __init__(self) -> None:
        self.received = 0

    def cb(self, i: int, payload: bytes) -> int:
        self.received += 1
        return i


class CalleeRemote(Protocol):
    async def cb(self, i: int, payload: bytes) -> int: ...


class Echo:
    async def echo(self, value: Any) -> Any:
        await asyncio.sleep(0)
        return value


async def slow_reader(client_limit: int) -> float:
    """Fire 2,000 callbacks of 32 KiB at a client that stopped reading."""
    acceptors: dict[str, AnyAcceptor] = {}

    async def handler(acceptor: AnyAcceptor) -> None:
        acceptors[str(acceptor.header)] = acceptor
        await acceptor.accept(Echo())

    payload = b"c" * 32_768
    count = 2_000
    async with running_server(handler) as server:
        slow_callee, other_callee = Callee(), Callee()
        slow: wsrpc.WebSocketConnector[str, Callee, Any] = wsrpc.WebSocketConnector(
            "slow", slow_callee, max_concurrent_calls=client_limit
        )
        other: wsrpc.WebSocketConnector[str, Callee, Any] = wsrpc.WebSocketConnector(
            "other", other_callee
        )
        await slow.connect(url_of(server), timeout=5 * UNIT)
        await other.connect(url_of(server), timeout=5 * UNIT)
        channel_of(slow).pause_reading()
        to_slow: CalleeRemote = acceptors["slow"].get_driver()
        to_other: CalleeRemote = acceptors["other"].get_driver()
        with traced_memory() as memory:
            calls = [asyncio.ensure_future(to_slow.cb(i, payload)) for i in range(count)]
            async with asyncio.timeout(10 * UNIT):
                # The other client is served both ways meanwhile.
                for i in range(50):
                    assert await to_other.cb(i, b"x") == i
                    assert await other.get_driver().echo(i) == i
            done, _ = await asyncio.wait(calls, timeout=UNIT)
            assert not done and slow_callee.received == 0
        channel_of(slow).resume_reading()
        async with asyncio.timeout(30 * UNIT):
            assert await asyncio.gather(*calls) == list(range(count))
        assert slow_callee.received == count
        await slow.close()
        await other.close()
    return memory["peak"]


async def test_slow_reader_costs_bounded_memory() -> None:
    # An honest client advertises 128 calls: the server sends 128 callbacks
    # and holds the others back (2,000 x 32 KiB = 62 MiB if it did not).
    peak = await slow_reader(client_limit=128)
    assert peak < 32, f"peak memory growth {peak:.1f} MiB"


async def test_slow_reader_advertising_a_huge_limit_costs_bounded_memory() -> None:
    # The server caps its calls in flight at its own max_concurrent_calls,
    # whatever the client advertises.
    peak = await slow_reader(client_limit=1_000_000)
    assert peak < 32, f"peak memory growth {peak:.1f} MiB"


# -- graceful shutdown -----------------------------------------------------------------


async def test_graceful_shutdown_with_calls_in_flight() -> None:
    # 20 clients with calls running on the server, and one more that stops
    # reading so that it never answers the closing handshake.
    clients = 20
    close_timeout = 2 * UNIT
    release = asyncio.Event()
    services: list[SlowService] = []
    full: list[asyncio.Event] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        full.append(asyncio.Event())
        services.append(SlowService(release, full[-1], limit=4))
        await acceptor.accept(services[-1])

    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(
        close_timeout=close_timeout
    )
    await server.open(0, handler)
    url = url_of(server)
    connectors: list[wsrpc.WebSocketConnector[str, None, SlowRemote]] = []
    try:
        for index in range(clients + 1):
            connector = wsrpc.WebSocketConnector[str, None, SlowRemote](f"c{index}")
            await connector.connect(url, timeout=5 * UNIT)
            connectors.append(connector)
        *responsive, mute = connectors
        # Each client: one call completed, 4 held running in the slow method.
        slow_calls = {
            connector: [
                asyncio.ensure_future(connector.get_driver().slow(i, b"")) for i in range(4)
            ]
            for connector in connectors
        }
        async with asyncio.timeout(10 * UNIT):
            for connector in connectors:
                assert await connector.get_driver().fast(1) == 2
            for event in full:  # every slow call is running on the server
                await event.wait()
        channel_of(mute).pause_reading()
        start = time.perf_counter()
        closing = asyncio.ensure_future(server.close())
        async with asyncio.timeout(close_timeout + 5 * UNIT):
            for connector in responsive:
                await connector.join()  # closed by the server with 1001
            # The mute client holds close() up to close_timeout; meanwhile
            # new connections are refused.
            assert not closing.done() and state_of(server) is wsrpc.ServerState.CLOSING
            late: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("late")
            with pytest.raises(wsrpc.ConnectError):
                await late.connect(url, timeout=5 * UNIT)
            await closing
        elapsed = time.perf_counter() - start
        # Within the close timeout, plus a margin for the loop's own work.
        assert elapsed < close_timeout + UNIT, f"close() took {elapsed:.2f} s"
        assert state_of(server) is wsrpc.ServerState.CLOSED and not server.acceptors
        refused: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("refused")
        with pytest.raises(wsrpc.ConnectError):
            await refused.connect(url, timeout=5 * UNIT)
        # Every in-flight call failed cleanly: 1001 for those who heard the
        # close frame; the mute client's connection was dropped (1006) unless
        # the frame reached it first. It notices once it reads again.
        channel_of(mute).resume_reading()
        for connector, calls in slow_calls.items():
            codes = {1001, 1006} if connector is mute else {1001}
            async with asyncio.timeout(5 * UNIT):
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for outcome in outcomes:
                assert isinstance(outcome, wsrpc.ConnectionClosedError), outcome
                assert outcome.code in codes, outcome
        async with asyncio.timeout(5 * UNIT):
            for connector in connectors:
                await connector.join()
                assert connector.state is wsrpc.ConnectorState.CLOSED
        # The server cancelled every running call.
        assert sum(service.running for service in services) == 0
    finally:
        release.set()
        await server.close()
        for connector in connectors:
            await connector.close()


# -- writes that back up, keepalive that goes on --------------------------------------


class Blobs:
    def blob(self, size: int) -> bytes:
        return b"b" * size


class BlobsRemote(Protocol):
    async def blob(self, size: int) -> bytes: ...


async def test_answers_a_caller_does_not_read_pause_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client fires calls whose answers are large and stops reading: the
    # server's answers back up in its write buffer, so it stops reading the
    # client (instead of answering without bound). Once the client reads
    # again, every call completes and the server reads again.
    paused = asyncio.Event()
    accepted: list[AnyAcceptor] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Blobs())
        accepted.append(acceptor)

    async with running_server(handler, max_message_size=1 << 20) as server:
        connector: wsrpc.WebSocketConnector[None, None, BlobsRemote] = wsrpc.WebSocketConnector(
            None, max_message_size=1 << 20
        )
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            (acceptor,) = accepted
            server_channel = acceptor._channel
            original = type(server_channel).pause_reading

            def pause_reading(channel: Channel) -> None:
                if channel is server_channel:
                    paused.set()
                original(channel)

            monkeypatch.setattr(type(server_channel), "pause_reading", pause_reading)
            channel_of(connector).pause_reading()
            blobs = connector.get_driver()
            calls = [asyncio.ensure_future(blobs.blob(256 * 1024)) for _ in range(32)]
            async with asyncio.timeout(5 * UNIT):
                await paused.wait()
            assert acceptor._communicator is not None
            assert acceptor._communicator._draining
            channel_of(connector).resume_reading()
            async with asyncio.timeout(10 * UNIT):
                results = await asyncio.gather(*calls)
            assert [len(result) for result in results] == [256 * 1024] * 32
            assert not acceptor._communicator._draining


async def test_keepalive_pings_are_answered_and_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # One ping in flight at a time: a third ping means two pongs came back,
    # and the connection stays open and usable all along.
    pings = 0
    third = asyncio.Event()
    accepted: list[AnyAcceptor] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Blobs())
        accepted.append(acceptor)

    async with running_server(handler, ping_interval=0.02, ping_timeout=5 * UNIT) as server:
        connector: wsrpc.WebSocketConnector[None, None, BlobsRemote] = wsrpc.WebSocketConnector(
            None, ping_interval=None
        )
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            (acceptor,) = accepted
            server_channel = acceptor._channel
            original = type(server_channel).ping

            def ping(channel: Channel) -> asyncio.Future[None]:
                nonlocal pings
                if channel is server_channel:
                    pings += 1
                    if pings == 3:
                        third.set()
                return original(channel)

            monkeypatch.setattr(type(server_channel), "ping", ping)
            async with asyncio.timeout(5 * UNIT):
                await third.wait()
                assert await connector.get_driver().blob(3) == b"bbb"
            assert acceptor.state is wsrpc.AcceptorState.OPEN
