"""
Serving like a real service: several processes on one port
(``open(..., reuse_port=True)``) and the graceful stop (``server.shutdown()``).

Runs on the tests' transport (``WSRPC_TEST_TRANSPORT``); the other process
of the port-sharing test runs ``tests/serving_app.py`` on the same one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Protocol

import pytest

import wsrpc
from tests.serving_app import Service, handler

from ..conftest import TRANSPORT, UNIT, url_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServiceRemote(Protocol):
    async def pid(self) -> int: ...
    async def hold(self, seconds: float) -> str: ...
    async def release(self) -> None: ...


class Watched(Service):
    """A :class:`Service` whose ``hold()`` tells when it has started."""

    def __init__(self, started: asyncio.Event) -> None:
        super().__init__()
        self.started = started

    async def hold(self, seconds: float) -> str:
        self.started.set()
        return await super().hold(seconds)


async def watched_server(started: asyncio.Event) -> wsrpc.WebSocketServer[Any, Service, None]:
    async def accept(acceptor: wsrpc.WebSocketAcceptor[Any, Service, None]) -> None:
        await acceptor.accept(Watched(started))

    server = wsrpc.WebSocketServer[Any, Service, None]()
    await server.open(0, accept)
    return server


class LogEvent(logging.Handler):
    """Sets ``event`` when the ``wsrpc`` logger logs a message starting with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__(logging.INFO)
        self.prefix = prefix
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()


def connector() -> wsrpc.WebSocketConnector[Any, None, ServiceRemote]:
    return wsrpc.WebSocketConnector[Any, None, ServiceRemote](None)


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing is Linux's")
async def test_two_processes_serve_one_port() -> None:
    server = wsrpc.WebSocketServer[Any, Service, None]()
    await server.open(0, handler, reuse_port=True)  # a free port, shared from now on
    env = dict(os.environ, PYTHONPATH=ROOT, WSRPC_TEST_TRANSPORT=TRANSPORT)
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys, tests.conftest, tests.serving_app as app;"
        "asyncio.run(app.main(int(sys.argv[1])))",
        str(server.port),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        async with asyncio.timeout(30 * UNIT):
            assert await other.stdout.readline() == f"READY {server.port}\n".encode()
            # New connections land on either process: connect until both
            # answered, at most 200 times.
            pids: list[int] = []
            for _ in range(200):
                async with connector() as client:
                    await client.connect(url_of(server))
                    pids.append(await client.get_driver().pid())
                if {os.getpid(), other.pid} <= set(pids):
                    break
        assert set(pids) == {os.getpid(), other.pid}, pids
        other.stdin.close()
        assert await asyncio.wait_for(other.wait(), 30 * UNIT) == 0
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
        await server.close()


async def test_without_reuse_port_a_second_server_cannot_bind() -> None:
    async with wsrpc.WebSocketServer[Any, Service, None]() as first:
        await first.open(0, handler)
        second = wsrpc.WebSocketServer[Any, Service, None]()
        with pytest.raises(OSError):
            await second.open(first.port, handler, reuse_port=True)
        assert second.state is wsrpc.ServerState.NONE


async def test_shutdown_lets_a_running_call_finish_then_closes_with_1001() -> None:
    started = asyncio.Event()
    server = await watched_server(started)
    url = url_of(server)
    client = connector()
    await client.connect(url)
    remote = client.get_driver()
    stopped = LogEvent("stopped accepting connections; waiting up to")
    logger = logging.getLogger("wsrpc")
    logger.addHandler(stopped)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with asyncio.timeout(30 * UNIT):
            call = asyncio.ensure_future(remote.hold(60 * UNIT))
            await started.wait()
            shutdown = asyncio.ensure_future(server.shutdown(grace=60 * UNIT))
            await stopped.event.wait()
            await check_drain(url, remote, call, shutdown)
            info = await client.join()
    finally:
        logger.removeHandler(stopped)
        logger.setLevel(level)
    assert info.code == 1001 and info.by_peer
    assert server.state is wsrpc.ServerState.CLOSED


async def check_drain(
    url: str, remote: ServiceRemote, call: asyncio.Future[str], shutdown: asyncio.Future[None]
) -> None:
    # Stopped accepting: a new client is refused...
    with pytest.raises(wsrpc.ConnectError):
        await connector().connect(url, timeout=5 * UNIT)
    # ...while the connected one still calls, and its call runs on.
    assert not call.done() and not shutdown.done()
    await remote.release()
    assert await call == "released"
    await shutdown


async def test_shutdown_grace_runs_out() -> None:
    started = asyncio.Event()
    server = await watched_server(started)
    client = connector()
    await client.connect(url_of(server))
    loop = asyncio.get_running_loop()
    grace = 0.3 * UNIT
    async with asyncio.timeout(30 * UNIT):
        call = asyncio.ensure_future(client.get_driver().hold(60 * UNIT))
        await started.wait()
        begun = loop.time()
        await server.shutdown(grace=grace)
        took = loop.time() - begun
        with pytest.raises(wsrpc.ConnectionClosedError) as info:
            await call
    assert info.value.code == 1001
    assert grace <= took < grace + 10 * UNIT


async def test_shutdown_of_an_idle_server_is_immediate_and_idempotent() -> None:
    server = wsrpc.WebSocketServer[Any, Service, None]()
    await server.open(0, handler)
    client = connector()
    await client.connect(url_of(server))
    async with asyncio.timeout(5 * UNIT):  # well under the grace: nothing to wait for
        await server.shutdown(grace=60 * UNIT)
        await server.shutdown()
        assert (await client.join()).code == 1001
    with pytest.raises(ValueError):
        await wsrpc.WebSocketServer[Any, Service, None]().shutdown(grace=-1)
