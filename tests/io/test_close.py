"""Closing from either side, or a dropped connection, fails every pending call on both sides."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

import wsrpc
from wsrpc import AcceptorState, ConnectorState, ServerState

from ..conftest import UNIT, AnyAcceptor, running_server, url_of


class Hold:
    """A provider whose `hold` method runs until cancelled, recording that it was."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def hold(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    def ping(self) -> str:
        return "pong"


@dataclass
class Pair:
    """A server and one connected client, each with a call pending on the other."""

    server: wsrpc.WebSocketServer[Any, Any, Any]
    acceptor: AnyAcceptor
    connector: wsrpc.WebSocketConnector[None, Hold, Any]
    server_side: Hold = field(default_factory=Hold)
    client_side: Hold = field(default_factory=Hold)
    client_call: asyncio.Future[Any] | None = None
    server_call: asyncio.Future[Any] | None = None


async def open_pair(server: wsrpc.WebSocketServer[Any, Any, Any], pair_box: list[Pair]) -> Pair:
    client_side = Hold()
    connector: wsrpc.WebSocketConnector[None, Hold, Any] = wsrpc.WebSocketConnector(
        None, client_side
    )
    await connector.connect(url_of(server), timeout=5 * UNIT)
    pair = pair_box[0]
    pair.connector = connector
    pair.client_side = client_side
    # A call pending in each direction.
    pair.client_call = asyncio.ensure_future(connector.get_driver().hold())
    pair.server_call = asyncio.ensure_future(pair.acceptor.get_driver().hold())
    async with asyncio.timeout(5 * UNIT):
        await pair.server_side.started.wait()
        await client_side.started.wait()
    return pair


def pair_handler(box: list[Pair]) -> Any:
    async def handler(acceptor: AnyAcceptor) -> None:
        server_side = Hold()
        box.append(Pair(None, acceptor, None, server_side))  # type: ignore[arg-type]
        await acceptor.accept(server_side)

    return handler


async def expect_closed(call: asyncio.Future[Any] | None, code: int, reason: str) -> None:
    assert call is not None
    with pytest.raises(wsrpc.ConnectionClosedError) as info:
        async with asyncio.timeout(5 * UNIT):
            await call
    assert (info.value.code, info.value.reason) == (code, reason)


async def test_client_close_fails_pending_calls_on_both_sides() -> None:
    box: list[Pair] = []
    async with running_server(pair_handler(box)) as server:
        pair = await open_pair(server, box)
        await pair.connector.close(4001, "client leaving")
        assert pair.connector.state is ConnectorState.CLOSED
        await expect_closed(pair.client_call, 4001, "client leaving")
        await expect_closed(pair.server_call, 4001, "client leaving")
        async with asyncio.timeout(5 * UNIT):
            await pair.acceptor.join()
            # Running provider calls are cancelled on both sides.
            await pair.server_side.cancelled.wait()
            await pair.client_side.cancelled.wait()
        assert pair.acceptor.state is AcceptorState.CLOSED
        # A call after close fails at once with the same reason.
        with pytest.raises(wsrpc.ConnectionClosedError) as info:
            await pair.connector.get_driver().ping()
        assert info.value.code == 4001
        with pytest.raises(wsrpc.ConnectionClosedError):
            await pair.acceptor.get_driver().ping()


async def test_acceptor_close_fails_pending_calls_on_both_sides() -> None:
    box: list[Pair] = []
    async with running_server(pair_handler(box)) as server:
        pair = await open_pair(server, box)
        await pair.acceptor.close(4002, "kicked")
        assert pair.acceptor.state is AcceptorState.CLOSED
        await expect_closed(pair.server_call, 4002, "kicked")
        await expect_closed(pair.client_call, 4002, "kicked")
        async with asyncio.timeout(5 * UNIT):
            await pair.connector.join()
            await pair.client_side.cancelled.wait()
        assert pair.connector.state is ConnectorState.CLOSED
        # close() is idempotent.
        await pair.acceptor.close()
        await pair.connector.close()


async def test_dropped_connection_fails_pending_calls_with_1006() -> None:
    box: list[Pair] = []
    async with running_server(pair_handler(box)) as server:
        pair = await open_pair(server, box)
        communicator = pair.connector._communicator
        assert communicator is not None
        communicator._channel.abort()  # the TCP connection vanishes
        await expect_closed(pair.server_call, 1006, "connection lost")
        await expect_closed(pair.client_call, 1006, "connection lost")
        async with asyncio.timeout(5 * UNIT):
            await pair.acceptor.join()
            await pair.connector.join()


async def test_server_close_closes_clients_with_1001() -> None:
    box: list[Pair] = []
    async with running_server(pair_handler(box)) as server:
        pair = await open_pair(server, box)
        url = url_of(server)
        async with asyncio.timeout(5 * UNIT):
            await server.close()
        assert server.state is ServerState.CLOSED
        await expect_closed(pair.client_call, 1001, "server closing")
        await expect_closed(pair.server_call, 1001, "server closing")
        async with asyncio.timeout(5 * UNIT):
            await pair.connector.join()
        assert pair.acceptor.state is AcceptorState.CLOSED
        assert not server.acceptors
        with pytest.raises(wsrpc.ConnectError):
            # The listening socket is closed: its port refuses connections.
            await wsrpc.WebSocketConnector(None).connect(url, timeout=5 * UNIT)


async def test_server_close_stops_undecided_handlers_and_silent_sockets() -> None:
    handler_cancelled = asyncio.Event()
    handler_started = asyncio.Event()

    async def handler(acceptor: AnyAcceptor) -> None:
        handler_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    async with running_server(handler) as server:
        connecting = asyncio.ensure_future(
            wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
        )
        async with asyncio.timeout(5 * UNIT):
            await handler_started.wait()
            await server.close()
            await handler_cancelled.wait()
            with pytest.raises(wsrpc.RejectedError) as info:
                await connecting
        assert info.value.code == 1001


async def test_keepalive_detects_a_frozen_peer() -> None:
    box: list[Pair] = []
    async with running_server(
        pair_handler(box), ping_interval=0.1 * UNIT, ping_timeout=0.2 * UNIT
    ) as server:
        pair = await open_pair(server, box)
        communicator = pair.connector._communicator
        assert communicator is not None
        # The client stops reading: it answers no pings any more.
        communicator._channel.pause_reading()
        assert pair.server_call is not None
        with pytest.raises(wsrpc.ConnectionClosedError) as info:
            async with asyncio.timeout(5 * UNIT):
                await pair.server_call
        assert info.value.code == 1011
        assert "keepalive" in info.value.reason
        communicator._channel.abort()
        assert pair.client_call is not None
        with pytest.raises(wsrpc.ConnectionClosedError):
            async with asyncio.timeout(5 * UNIT):
                await pair.client_call
        async with asyncio.timeout(5 * UNIT):
            await pair.connector.join()


async def test_async_with_closes_connector_and_server() -> None:
    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Hold())

    async with wsrpc.WebSocketServer[None, Hold, Any]() as server:
        await server.open(0, handler)
        async with wsrpc.WebSocketConnector[None, None, Any](None) as connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            assert await connector.get_driver().ping() == "pong"
        assert connector.state is ConnectorState.CLOSED
    assert server.state is ServerState.CLOSED


async def test_handler_outliving_its_connection_is_cancelled_after_close_timeout() -> None:
    cancelled = asyncio.Event()

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Hold())
        try:
            await asyncio.Event().wait()  # a handler that never returns
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running_server(handler, close_timeout=0.2 * UNIT) as server:
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            await connector.close()
            await cancelled.wait()
        async with asyncio.timeout(5 * UNIT):
            await server.close()


async def test_server_close_is_bounded_however_the_hooks_behave(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Close hooks that never return: server.close() still ends, each step of
    # its sequence (close frames, unwinding calls, hooks, the handlers' grace)
    # bounded by close_timeout; the hooks are cancelled and logged.
    close_timeout = 0.3 * UNIT
    hung: list[str] = []
    release = asyncio.Event()
    stubborn_started = asyncio.Event()

    async def hang(*args: Any) -> None:
        hung.append("hook")
        await asyncio.Event().wait()

    class Stubborn:
        async def stubborn(self) -> None:
            stubborn_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await release.wait()  # ignores its cancellation until the test ends

    async def handler(acceptor: AnyAcceptor) -> None:
        acceptor.on_closed(hang)
        await acceptor.accept(Stubborn())
        await asyncio.Event().wait()  # a handler that outlives its connection

    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(
        close_timeout=close_timeout
    )
    server.on_disconnect(hang)
    await server.open(0, handler)
    connectors = []
    for _ in range(3):
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(
            None, close_timeout=close_timeout
        )
        connector.on_closed(hang)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        connectors.append(connector)
    pending = asyncio.ensure_future(connectors[0].get_driver().stubborn())
    await asyncio.wait_for(stubborn_started.wait(), 5 * UNIT)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(server.close(), 4 * close_timeout + 5 * UNIT)
    assert server.state is wsrpc.ServerState.CLOSED
    for connector in connectors:  # the clients' own hooks are bounded too
        info = await asyncio.wait_for(connector.join(), 2 * close_timeout + 5 * UNIT)
        assert info.code == 1001
    assert loop.time() - started < 6 * close_timeout + 5 * UNIT
    assert hung.count("hook") == 3 + 3  # on_closed ran for the 3 clients, each side
    messages = [record.getMessage() for record in caplog.records]
    assert any("still running after close_timeout" in message for message in messages)
    assert any("ignore their cancellation" in message for message in messages)
    with pytest.raises(wsrpc.ConnectionClosedError):
        await pending
    release.set()  # the stubborn method may end now
