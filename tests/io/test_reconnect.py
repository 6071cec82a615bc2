"""
Reconnecting connectors: ``WebSocketConnector(..., reconnect=True)``.

Servers are real, and restart for real: the first binds 127.0.0.1 on port 0,
the next ones bind the port it released. Network faults go through
:class:`tests.io.tcp_proxy.TcpProxy`. Backoff delays are small multiples of
UNIT; nothing waits on sleep(): tests wait on the connector's hooks, on
calls and on join(), bounded by generous timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest

import wsrpc
import wsrpc.sync
from wsrpc import CloseInfo, ConnectorState, ReconnectPolicy

from ..conftest import UNIT, AnyAcceptor
from .tcp_proxy import TcpProxy

FAST = ReconnectPolicy(initial_delay=0.01 * UNIT, max_delay=0.05 * UNIT)
"""Small delays, for tests."""


# -- servers that come and go --------------------------------------------------


class Service:
    """The server's provider; ``generation`` tells which server answered."""

    def __init__(self, servers: Servers, generation: int) -> None:
        self._servers = servers
        self._generation = generation

    def whoami(self) -> int:
        return self._generation

    async def hold(self) -> None:
        self._servers.holds += 1
        self._servers.holding.set()
        await asyncio.get_running_loop().create_future()


class Remote(Protocol):
    async def whoami(self) -> int: ...

    async def hold(self) -> None: ...


class SyncRemote(Protocol):
    def whoami(self) -> int: ...


Connector = wsrpc.WebSocketConnector[Any, None, Remote]


class Servers:
    """One server at a time on one port: start(), stop(), start() again (a restart)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.port = 0
        self.generation = 0
        self.server: wsrpc.WebSocketServer[Any, Service, None] | None = None
        self.headers: list[Any] = []
        """The header of every client accepted or rejected, in order, across servers."""
        self.acceptors: list[AnyAcceptor] = []
        self.holds = 0
        """How many hold() calls ran, across servers: a replayed call would count twice."""
        self.holding = asyncio.Event()
        self.reject: tuple[int, str] | None = None
        """If set, the handler rejects every client with this code and reason."""
        self.hang = False
        """If set, the handler never decides (the client's handshake hangs)."""
        self.hanging = asyncio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self.generation += 1
        server: wsrpc.WebSocketServer[Any, Service, None] = wsrpc.WebSocketServer(**self.options)
        await server.open(self.port, self._handler)  # port 0 the first time
        self.port, self.server = server.port, server

    async def stop(self) -> None:
        """Close the server: its clients get 1001."""
        assert self.server is not None
        server, self.server = self.server, None
        await server.close()

    async def _handler(self, acceptor: AnyAcceptor) -> None:
        self.headers.append(acceptor.header)
        if self.hang:
            self.hanging.set()
            await asyncio.get_running_loop().create_future()
        if self.reject is not None:
            await acceptor.reject(*self.reject)
            return
        self.acceptors.append(acceptor)
        await acceptor.accept(Service(self, self.generation))


@asynccontextmanager
async def servers_running(**options: Any) -> AsyncIterator[Servers]:
    servers = Servers(**options)
    await servers.start()
    try:
        yield servers
    finally:
        if servers.server is not None:
            await servers.stop()


class Watch:
    """What a connector's hooks saw: (hook, state at the time, info)."""

    def __init__(self, connector: wsrpc.WebSocketConnector[Any, Any, Any]) -> None:
        self.events: asyncio.Queue[tuple[str, ConnectorState, CloseInfo | None]] = asyncio.Queue()
        self.seen: list[str] = []
        connector.on_lost(lambda c, info: self._record("lost", c.state, info))
        connector.on_back(lambda c: self._record("back", c.state, None))
        connector.on_closed(lambda c, info: self._record("closed", c.state, info))

    def _record(self, hook: str, state: ConnectorState, info: CloseInfo | None) -> None:
        self.seen.append(hook)
        self.events.put_nowait((hook, state, info))

    async def next(self, hook: str) -> tuple[ConnectorState, CloseInfo | None]:
        async with asyncio.timeout(5 * UNIT):
            seen, state, info = await self.events.get()
        assert seen == hook, (seen, info)
        return state, info


@asynccontextmanager
async def connected(
    url: str, header: Any = None, **options: Any
) -> AsyncIterator[tuple[Connector, Watch]]:
    options.setdefault("reconnect", FAST)
    connector: Connector = wsrpc.WebSocketConnector(header, **options)
    watch = Watch(connector)
    await connector.connect(url, timeout=5 * UNIT)
    try:
        yield connector, watch
    finally:
        async with asyncio.timeout(5 * UNIT):
            await connector.close()


def state_of(connector: Any) -> ConnectorState:
    """The connector's state now (a call, so that mypy does not narrow it)."""
    state: ConnectorState = connector.state
    return state


async def within(awaitable: Awaitable[Any], units: float = 5) -> Any:
    async with asyncio.timeout(units * UNIT):
        return await awaitable


# -- a server restart ------------------------------------------------------------


async def test_a_server_restart_brings_the_client_back() -> None:
    tokens = itertools.count(1)
    async with servers_running() as servers:
        header = lambda: {"token": next(tokens)}  # noqa: E731 - a fresh token each handshake
        async with connected(servers.url, header) as (connector, watch):
            driver = connector.get_driver()
            assert await within(driver.whoami()) == 1
            pending = asyncio.ensure_future(driver.hold())
            await within(servers.holding.wait())

            await servers.stop()  # 1001 to the client
            # The call pending at the drop fails, once.
            with pytest.raises(wsrpc.ConnectionClosedError) as failed:
                await within(pending)
            assert failed.value.code == 1001
            assert state_of(connector) is ConnectorState.CONNECTING
            assert not connector.is_closed
            state, info = await watch.next("lost")
            assert state is ConnectorState.CONNECTING
            assert info is not None and (info.code, info.by_peer) == (1001, True)

            # While the server is down: a call waits; one with a timeout times out.
            waiting = asyncio.ensure_future(driver.whoami())
            with pytest.raises(wsrpc.RpcTimeoutError):
                await within(connector.get_driver(timeout=0.2 * UNIT).whoami())
            assert not waiting.done()

            await servers.start()  # on the same port
            assert await within(waiting) == 2
            state, _ = await watch.next("back")
            assert state is ConnectorState.OPEN
            assert connector.get_driver() is driver
            assert await within(driver.whoami()) == 2

            # The header was computed again for the new handshake (attempts
            # refused while the server was down called it too).
            assert servers.headers[0] == {"token": 1}
            assert servers.headers[1]["token"] > 1
            assert connector.header == servers.headers[1]
            assert servers.holds == 1  # never replayed
            assert connector.close_info is None
        info = await within(connector.join())
        assert (info.code, info.reason) == (1000, "")
        assert state_of(connector) is ConnectorState.CLOSED
        assert watch.seen == ["lost", "back", "closed"]


async def test_the_sync_connector_reconnects_too() -> None:
    async with servers_running() as servers:
        connector: wsrpc.sync.WebSocketConnector[Any, None, SyncRemote] = (
            wsrpc.sync.WebSocketConnector(None, reconnect=FAST)
        )
        await asyncio.to_thread(connector.connect, servers.url, timeout=5 * UNIT)
        try:
            driver = connector.get_driver()
            assert await within(asyncio.to_thread(driver.whoami)) == 1
            # The sync connector has no hooks: its async connector's tell the loss.
            lost = threading.Event()
            connector._inner.on_lost(lambda c, info: lost.set())
            await servers.stop()
            assert await asyncio.to_thread(lost.wait, 5 * UNIT)
            assert connector.state is ConnectorState.CONNECTING
            waiting = asyncio.ensure_future(asyncio.to_thread(driver.whoami))
            await servers.start()
            assert await within(waiting) == 2
            assert connector.get_driver() is driver
            assert state_of(connector) is ConnectorState.OPEN
        finally:
            await within(asyncio.to_thread(connector.close, 4000, "done"))
        info = await within(asyncio.to_thread(connector.join, 5 * UNIT))
        assert (info.code, info.reason) == (4000, "done")


async def test_the_first_connect_does_not_retry() -> None:
    async with servers_running() as servers:
        url = servers.url
    connector: Connector = wsrpc.WebSocketConnector(None, reconnect=FAST)
    with pytest.raises(wsrpc.ConnectError):
        await within(connector.connect(url, timeout=5 * UNIT))
    assert state_of(connector) is ConnectorState.CLOSED


async def test_a_callable_header_may_be_async() -> None:
    async def header() -> dict[str, str]:
        await asyncio.sleep(0)
        return {"token": "fresh"}

    connector: Connector = wsrpc.WebSocketConnector(header, reconnect=True)
    with pytest.raises(wsrpc.StateError):
        connector.header  # noqa: B018 - not called yet
    async with servers_running() as servers:
        async with connector:
            await connector.connect(servers.url, timeout=5 * UNIT)
            assert connector.header == {"token": "fresh"}
            assert servers.headers == [{"token": "fresh"}]


# -- what ends reconnection, and what does not ----------------------------------


async def test_a_rejection_on_the_new_handshake_stops_and_is_reported() -> None:
    async with servers_running() as servers:
        async with connected(servers.url) as (connector, watch):
            await servers.stop()
            await watch.next("lost")
            waiting = asyncio.ensure_future(connector.get_driver().whoami())
            servers.reject = (4001, "token expired")
            await servers.start()
            info = await within(connector.join())
            assert (info.code, info.reason, info.by_peer) == (4001, "token expired", True)
            assert connector.close_info == info
            _, hooked = await watch.next("closed")
            assert hooked == info
            with pytest.raises(wsrpc.ConnectionClosedError) as failed:
                await within(waiting)
            assert (failed.value.code, failed.value.reason) == (4001, "token expired")
            assert state_of(connector) is ConnectorState.CLOSED
            assert watch.seen == ["lost", "closed"]


@pytest.mark.parametrize("code", [1000, 1008, 4000])
async def test_a_deliberate_close_by_the_server_ends_reconnection(code: int) -> None:
    async with servers_running() as servers:
        async with connected(servers.url) as (connector, watch):
            await servers.acceptors[0].close(code, "kicked")
            info = await within(connector.join())
            assert (info.code, info.reason) == (code, "kicked")
            assert watch.seen == ["closed"]
            with pytest.raises(wsrpc.ConnectionClosedError):
                await within(connector.get_driver().whoami())
            assert len(servers.headers) == 1


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013, 1014])
async def test_transient_close_codes_reconnect(code: int) -> None:
    async with servers_running() as servers:
        async with connected(servers.url) as (connector, watch):
            await servers.acceptors[0].close(code, "transient")
            _, info = await watch.next("lost")
            assert info is not None and info.code == code
            await watch.next("back")
            assert await within(connector.get_driver().whoami()) == 1
            assert len(servers.headers) == 2


async def test_the_policy_decides_which_codes_reconnect() -> None:
    policy = ReconnectPolicy(
        initial_delay=0.01 * UNIT,
        max_delay=0.05 * UNIT,
        should_reconnect=lambda info: info.code == 4000,
    )
    async with servers_running() as servers:
        async with connected(servers.url, reconnect=policy) as (connector, watch):
            await servers.acceptors[0].close(4000, "come back")
            await watch.next("lost")
            await watch.next("back")
            await servers.acceptors[1].close(1001, "going away")  # not in this policy
            info = await within(connector.join())
            assert info.code == 1001
            assert watch.seen == ["lost", "back", "closed"]


async def test_max_attempts_gives_up_and_reports() -> None:
    policy = ReconnectPolicy(initial_delay=0.01 * UNIT, max_delay=0.02 * UNIT, max_attempts=3)
    async with servers_running() as servers:
        async with connected(servers.url, reconnect=policy) as (connector, watch):
            await servers.stop()
            info = await within(connector.join())
            assert info.code == 1006
            assert info.reason.startswith("gave up reconnecting after 3 attempts: ConnectError")
            assert watch.seen == ["lost", "closed"]


# -- close() stops everything ----------------------------------------------------


async def test_close_during_backoff_returns_at_once() -> None:
    slow = ReconnectPolicy(initial_delay=60 * UNIT, max_delay=60 * UNIT)
    async with servers_running() as servers:
        async with connected(servers.url, reconnect=slow) as (connector, watch):
            await servers.stop()
            await watch.next("lost")
            waiting = asyncio.ensure_future(connector.get_driver().whoami())
            started = time.monotonic()
            await within(connector.close(4000, "bye"))
            assert time.monotonic() - started < 1 * UNIT
            assert state_of(connector) is ConnectorState.CLOSED
            assert connector.close_info == CloseInfo(4000, "bye", clean=True, by_peer=False)
            with pytest.raises(wsrpc.ConnectionClosedError) as failed:
                await within(waiting)
            assert (failed.value.code, failed.value.reason) == (4000, "bye")
            await watch.next("closed")


async def test_close_during_an_attempt_abandons_it() -> None:
    async with servers_running() as servers:
        async with connected(servers.url) as (connector, watch):
            servers.hang = True  # the next handshake never gets a verdict
            await servers.acceptors[0].close(1012, "restart")
            await watch.next("lost")
            await within(servers.hanging.wait())
            assert state_of(connector) is ConnectorState.CONNECTING
            started = time.monotonic()
            await within(connector.close())
            assert time.monotonic() - started < 1 * UNIT
            assert state_of(connector) is ConnectorState.CLOSED
            assert watch.seen == ["lost", "closed"]


# -- network faults ----------------------------------------------------------------


async def test_a_network_cut_reconnects() -> None:
    async with servers_running() as servers, TcpProxy(servers.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with connected(url) as (connector, watch):
            pending = asyncio.ensure_future(connector.get_driver().hold())
            await within(servers.holding.wait())
            proxy.drop()
            with pytest.raises(wsrpc.ConnectionClosedError) as failed:
                await within(pending)
            assert failed.value.code == 1006
            _, info = await watch.next("lost")
            assert info is not None and info.code == 1006
            await watch.next("back")
            assert await within(connector.get_driver().whoami()) == 1
            assert servers.holds == 1


async def test_a_keepalive_loss_is_reported_at_once_then_reconnects() -> None:
    interval = timeout = 0.2 * UNIT
    close_timeout = 30 * UNIT  # far beyond the bound below: the loss must not wait for it
    async with servers_running() as servers, TcpProxy(servers.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with connected(
            url, ping_interval=interval, ping_timeout=timeout, close_timeout=close_timeout
        ) as (connector, watch):
            proxy.stall()
            stalled = time.monotonic()
            _, info = await watch.next("lost")
            elapsed = time.monotonic() - stalled
            assert info == CloseInfo(1011, "keepalive ping timeout", clean=False, by_peer=False)
            assert elapsed < interval + timeout + 1 * UNIT
            proxy.resume()
            await watch.next("back")
            assert await within(connector.get_driver().whoami()) == 1


async def test_a_keepalive_loss_ends_a_plain_connector_at_once() -> None:
    # Without reconnect too, join() does not wait close_timeout for a silent peer.
    interval = timeout = 0.2 * UNIT
    async with servers_running() as servers, TcpProxy(servers.port) as proxy:
        connector: Connector = wsrpc.WebSocketConnector(
            None, ping_interval=interval, ping_timeout=timeout, close_timeout=30 * UNIT
        )
        await connector.connect(f"ws://127.0.0.1:{proxy.port}/", timeout=5 * UNIT)
        proxy.stall()
        stalled = time.monotonic()
        info = await within(connector.join(), 10)
        assert time.monotonic() - stalled < interval + timeout + 1 * UNIT
        assert (info.code, info.reason, info.by_peer) == (1011, "keepalive ping timeout", False)


# -- the policy itself -------------------------------------------------------------


def test_backoff_grows_to_the_maximum_with_jitter_below_it() -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=5, multiplier=2, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittery = ReconnectPolicy(initial_delay=1, max_delay=5, jitter=0.5)
    assert jittery.delay(2, rand=lambda: 1.0) == 1.0
    assert jittery.delay(2, rand=lambda: 0.0) == 2.0
    assert ReconnectPolicy(jitter=0).delay(10_000) == 30.0  # no overflow


def test_default_codes() -> None:
    policy = ReconnectPolicy()
    reconnect = [
        code
        for code in (1000, 1001, 1002, 1006, 1008, 1011, 1012, 1013, 1014, 4000)
        if policy.reconnects_after(CloseInfo(code, "", clean=False, by_peer=True))
    ]
    assert reconnect == [1001, 1006, 1011, 1012, 1013, 1014]


@pytest.mark.parametrize(
    "options",
    [
        {"initial_delay": -1},
        {"max_delay": 0.1, "initial_delay": 1},
        {"multiplier": 0.5},
        {"jitter": 2},
        {"max_attempts": 0},
        {"initial_delay": float("nan")},
    ],
)
def test_bad_policies_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**options)


def test_reconnect_must_be_a_bool_or_a_policy() -> None:
    with pytest.raises(TypeError):
        wsrpc.WebSocketConnector(None, reconnect="yes")  # type: ignore[arg-type]
