"""
Faults: a killed peer process, a cut or a frozen network, a clean close.

Whatever happens, every call pending on the surviving side fails with
ConnectionClosedError within the documented time — at once (here: within one
UNIT) after a close or a dropped connection, within ping_interval +
ping_timeout (plus one UNIT of slack) when the peer goes silent — the provider
calls running for the lost peer are cancelled, and no task or file descriptor
outlives the connections.

Network faults go through :class:`tests.tcp_proxy.TcpProxy`; the killed peer
is ``tests/io/faults_helpers/sigkill_client.py`` in a process of its own. Times
are measured with time.monotonic() from the moment the fault is injected to
the moment the pending call raised; each test prints its figures (``-s``).
(test_close.py checks the codes and reasons of each kind of close; this file
checks timing, cancellation and leaks.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

import wsrpc

from ..conftest import UNIT, AnyAcceptor, running_server, url_of
from .tcp_proxy import TcpProxy

HELPERS = Path(__file__).parent / "faults_helpers"


class Hold:
    """A provider whose `hold` runs until cancelled, recording when it was."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cancelled_at = 0.0

    async def hold(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            self.cancelled.set()
            raise

    def ping(self) -> str:
        return "pong"


class HoldRemote(Protocol):
    async def hold(self) -> None: ...

    async def ping(self) -> str: ...


Connector = wsrpc.WebSocketConnector[Any, Hold, HoldRemote]
Acceptor = wsrpc.WebSocketAcceptor[Any, Hold, HoldRemote]
Failure = tuple[wsrpc.ConnectionClosedError, float]
"""How a pending call ended: its error and the time.monotonic() it was raised."""


async def fails(call: Awaitable[object]) -> Failure:
    """Await a call that must fail with ConnectionClosedError."""
    try:
        await call
    except wsrpc.ConnectionClosedError as exc:
        return exc, time.monotonic()
    raise AssertionError("the pending call returned instead of failing")


class Accepting:
    """A handler that accepts each client with a new Hold, by header."""

    def __init__(self) -> None:
        self._accepted: dict[object, asyncio.Future[tuple[Acceptor, Hold]]] = {}

    def expect(self, header: object) -> asyncio.Future[tuple[Acceptor, Hold]]:
        """The acceptor and provider of the client that will send ``header``."""
        future = self._accepted[header] = asyncio.get_running_loop().create_future()
        return future

    async def __call__(self, acceptor: AnyAcceptor) -> None:
        provider = Hold()
        await acceptor.accept(provider)
        self._accepted[acceptor.header].set_result((acceptor, provider))


@dataclass
class Link:
    """An open connection with a call pending in each direction, each running."""

    acceptor: Acceptor
    connector: Connector
    server_side: Hold
    """The server's provider, running the client's call."""
    client_side: Hold
    """The client's provider, running the server's call."""
    server_call: asyncio.Task[Failure]
    """The server's call to the client, pending."""
    client_call: asyncio.Task[Failure]
    """The client's call to the server, pending."""

    async def joined(self) -> None:
        async with asyncio.timeout(5 * UNIT):
            await self.acceptor.join()
            await self.connector.join()


async def open_link(accepting: Accepting, url: str, header: object, **options: Any) -> Link:
    accepted = accepting.expect(header)
    client_side = Hold()
    connector: Connector = wsrpc.WebSocketConnector(header, client_side, **options)
    await connector.connect(url, timeout=5 * UNIT)
    async with asyncio.timeout(5 * UNIT):
        acceptor, server_side = await accepted
    link = Link(
        acceptor,
        connector,
        server_side,
        client_side,
        server_call=asyncio.ensure_future(fails(acceptor.get_driver().hold())),
        client_call=asyncio.ensure_future(fails(connector.get_driver().hold())),
    )
    async with asyncio.timeout(5 * UNIT):
        await server_side.started.wait()
        await client_side.started.wait()
    return link


@asynccontextmanager
async def proxied_link(**options: Any) -> AsyncIterator[tuple[Link, TcpProxy]]:
    """A server, a proxy in front of it, and a client connected through the proxy."""
    accepting = Accepting()
    async with running_server(accepting, **options) as server, TcpProxy(server.port) as proxy:
        link = await open_link(accepting, f"ws://127.0.0.1:{proxy.port}/", None, **options)
        try:
            yield link, proxy
        finally:
            await link.connector.close()


async def failed_after(call: asyncio.Task[Failure], since: float) -> Failure:
    """The error a pending call failed with, and the seconds from ``since``."""
    async with asyncio.timeout(5 * UNIT):
        exc, at = await call
    return exc, at - since


async def cancelled_after(provider: Hold, since: float) -> float:
    """Seconds from ``since`` until the provider's running call was cancelled."""
    async with asyncio.timeout(5 * UNIT):
        await provider.cancelled.wait()
    return provider.cancelled_at - since


def report(fault: str, **seconds: float) -> None:
    figures = ", ".join(f"{name} {value * 1000:.1f} ms" for name, value in seconds.items())
    print(f"\n[{fault}] {figures}")


# -- a killed peer ------------------------------------------------------------


class ChildClient:
    """faults_helpers/sigkill_client.py, running in a process of its own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._stderr: str | None = None

    async def reap(self) -> str:
        """Kill the process unless it has ended, wait for it; its stderr."""
        if self._stderr is None:
            if self.process.returncode is None:
                with suppress(ProcessLookupError):
                    self.process.kill()
            _, stderr = await self.process.communicate()
            self._stderr = stderr.decode(errors="replace")
        return self._stderr


@asynccontextmanager
async def child_client(url: str) -> AsyncIterator[ChildClient]:
    """Start the client process; it is killed and reaped on exit, whatever happens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPERS / "sigkill_client.py"),
        url,
        str(5 * UNIT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    child = ChildClient(process)
    try:
        yield child
    finally:
        await child.reap()


async def test_sigkilled_client_fails_the_servers_pending_call_with_1006() -> None:
    accepting = Accepting()
    accepted = accepting.expect(None)
    async with running_server(accepting) as server, child_client(url_of(server)) as child:
        process = child.process
        assert process.stdout is not None
        try:
            async with asyncio.timeout(10 * UNIT):
                acceptor, server_side = await accepted
                # The client's hold() runs until the process dies.
                server_call = asyncio.ensure_future(fails(acceptor.get_driver().hold()))
                # READY: the client's hold() runs and its call to ours is sent;
                # started: ours runs.
                ready = await process.stdout.readline()
                if ready == b"READY\n":
                    await server_side.started.wait()
        except TimeoutError:
            pytest.fail(f"the client process did not get ready; stderr:\n{await child.reap()}")
        assert ready == b"READY\n", await child.reap()

        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        exc, failed = await failed_after(server_call, killed)
        cancelled = await cancelled_after(server_side, killed)
        async with asyncio.timeout(5 * UNIT):
            await acceptor.join()
            assert await process.wait() == -signal.SIGKILL
        report("SIGKILL", server_call_failed=failed, server_provider_cancelled=cancelled)
        assert exc.code == 1006
        assert failed <= 1 * UNIT
        assert cancelled <= 1 * UNIT


# -- a cut or frozen network ----------------------------------------------------


async def test_network_cut_fails_pending_calls_on_both_sides_with_1006() -> None:
    async with proxied_link() as (link, proxy):
        proxy.drop()
        cut = time.monotonic()
        server_exc, server_failed = await failed_after(link.server_call, cut)
        client_exc, client_failed = await failed_after(link.client_call, cut)
        server_cancelled = await cancelled_after(link.server_side, cut)
        client_cancelled = await cancelled_after(link.client_side, cut)
        await link.joined()
        report(
            "drop",
            server_call_failed=server_failed,
            client_call_failed=client_failed,
            server_provider_cancelled=server_cancelled,
            client_provider_cancelled=client_cancelled,
        )
        assert (server_exc.code, client_exc.code) == (1006, 1006)
        assert max(server_failed, client_failed) <= 1 * UNIT
        assert max(server_cancelled, client_cancelled) <= 1 * UNIT


async def test_frozen_network_fails_pending_calls_on_both_sides_by_keepalive() -> None:
    interval = timeout = 0.2 * UNIT
    bound = interval + timeout + 1 * UNIT
    async with proxied_link(
        ping_interval=interval, ping_timeout=timeout, close_timeout=0.2 * UNIT
    ) as (link, proxy):
        proxy.stall()
        stalled = time.monotonic()
        server_exc, server_failed = await failed_after(link.server_call, stalled)
        client_exc, client_failed = await failed_after(link.client_call, stalled)
        server_cancelled = await cancelled_after(link.server_side, stalled)
        client_cancelled = await cancelled_after(link.client_side, stalled)
        # The closing handshake cannot cross the proxy: close_timeout ends it.
        await link.joined()
        report(
            "stall",
            server_call_failed=server_failed,
            client_call_failed=client_failed,
            server_provider_cancelled=server_cancelled,
            client_provider_cancelled=client_cancelled,
            interval_plus_timeout=interval + timeout,
        )
        for exc in (server_exc, client_exc):
            assert exc.code == 1011
            assert "keepalive" in exc.reason
        assert max(server_failed, client_failed) < bound
        assert max(server_cancelled, client_cancelled) < bound


async def test_proxy_stall_holds_traffic_until_resume() -> None:
    # The proxy itself: a stalled proxy forwards nothing, a resumed one does.
    async with proxied_link(ping_interval=None) as (link, proxy):
        proxy.stall()
        pings = {
            asyncio.ensure_future(link.connector.get_driver().ping()),
            asyncio.ensure_future(link.acceptor.get_driver().ping()),
        }
        done, _ = await asyncio.wait(pings, timeout=0.2 * UNIT)
        assert not done
        proxy.resume()
        async with asyncio.timeout(5 * UNIT):
            assert await asyncio.gather(*pings) == ["pong", "pong"]
        await link.connector.close(4000, "done")
        for call in (link.server_call, link.client_call):
            exc, _ = await failed_after(call, 0.0)
            assert (exc.code, exc.reason) == (4000, "done")
        await link.joined()


# -- a clean close ------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_clean_close_fails_the_peers_pending_call_at_once(
    closer: Literal["client", "server"],
) -> None:
    accepting = Accepting()
    async with running_server(accepting) as server:
        link = await open_link(accepting, url_of(server), None)
        if closer == "client":
            closing: Connector | Acceptor = link.connector
            own_call, peer_call = link.client_call, link.server_call
            peer_side = link.server_side
        else:
            closing = link.acceptor
            own_call, peer_call = link.server_call, link.client_call
            peer_side = link.client_side
        started = time.monotonic()
        close = asyncio.ensure_future(closing.close(4000, f"{closer} leaving"))
        peer_exc, peer_failed = await failed_after(peer_call, started)
        own_exc, own_failed = await failed_after(own_call, started)
        peer_cancelled = await cancelled_after(peer_side, started)
        async with asyncio.timeout(5 * UNIT):
            await close
        await link.joined()
        report(
            f"close by {closer}",
            peer_call_failed=peer_failed,
            own_call_failed=own_failed,
            peer_provider_cancelled=peer_cancelled,
        )
        for exc in (peer_exc, own_exc):
            assert (exc.code, exc.reason) == (4000, f"{closer} leaving")
        assert max(peer_failed, own_failed, peer_cancelled) <= 1 * UNIT


# -- leaks --------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_no_task_or_descriptor_outlives_its_connections() -> None:
    connections, dropped = 50, 5
    me = asyncio.current_task()
    assert asyncio.all_tasks() == {me}
    fds_before = open_fds()

    accepting = Accepting()
    async with running_server(accepting) as server, TcpProxy(server.port) as proxy:
        direct, proxied = url_of(server), f"ws://127.0.0.1:{proxy.port}/"
        async with asyncio.TaskGroup() as group:
            opening = [
                group.create_task(open_link(accepting, proxied if i < dropped else direct, i))
                for i in range(connections)
            ]
        links = [task.result() for task in opening]
        assert proxy.connections == dropped

        # A few cut, then the rest closed, by the client and by the server in turn.
        proxy.drop()
        expected = {i: (1006, "connection lost") for i in range(dropped)}
        closes: list[Awaitable[None]] = []
        for i in range(dropped, connections):
            if i % 2:
                closes.append(links[i].connector.close(4000, "client"))
                expected[i] = (4000, "client")
            else:
                closes.append(links[i].acceptor.close(4001, "server"))
                expected[i] = (4001, "server")
        async with asyncio.timeout(10 * UNIT):
            await asyncio.gather(*closes)
            for i, link in enumerate(links):
                for call in (link.server_call, link.client_call):
                    exc, _ = await call
                    assert (exc.code, exc.reason) == expected[i]
                await link.server_side.cancelled.wait()
                await link.client_side.cancelled.wait()
                await link.joined()
        assert not server.acceptors
        assert proxy.connections == 0

    # server.close() and the proxy's close() have returned: nothing may be left.
    assert asyncio.all_tasks() == {me}
    assert open_fds() == fds_before
