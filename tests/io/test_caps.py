"""
Server-wide caps: however many sockets clients open, the server holds at
most ``max_connections`` connections, and at most ``max_pending_headers`` of
them before their header; one more is closed with 1013 (try again later).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

import wsrpc

from ..conftest import UNIT, AnyAcceptor, running_server, url_of


class Echo:
    def echo(self, value: Any) -> Any:
        return value


HEADER_FRAME = msgpack.packb([0, 1, {"token": "t"}, {}])
"""A wsrpc client's header frame (kind 0, protocol 1, value, limits)."""


async def accept_all(acceptor: AnyAcceptor) -> None:
    await acceptor.accept(Echo())


async def connect(
    server: wsrpc.WebSocketServer[Any, Any, Any],
) -> wsrpc.WebSocketConnector[Any, None, Any]:
    connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector({"token": "t"})
    await connector.connect(url_of(server), timeout=5 * UNIT)
    return connector


async def test_connections_before_their_header_are_capped() -> None:
    async with running_server(accept_all, max_pending_headers=2) as server:
        silent: list[ClientConnection] = [
            await ws_connect(url_of(server), ping_interval=None) for _ in range(2)
        ]
        try:
            with pytest.raises(wsrpc.RejectedError) as refused:
                await connect(server)
            assert (refused.value.code, refused.value.reason) == (
                1013,
                "server busy, try again later",
            )
            # One of them identifies itself: a place frees at once.
            await silent[0].send(HEADER_FRAME)
            await asyncio.wait_for(silent[0].recv(), 5 * UNIT)  # the verdict
            connector = await connect(server)
            assert await connector.get_driver().echo(1) == 1
            await connector.close()
        finally:
            for ws in silent:
                await ws.close()


async def test_connections_are_capped() -> None:
    accepted: asyncio.Queue[AnyAcceptor] = asyncio.Queue()

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Echo())
        accepted.put_nowait(acceptor)

    async with running_server(handler, max_connections=2) as server:
        first, second = await connect(server), await connect(server)
        with pytest.raises(wsrpc.RejectedError) as refused:
            await connect(server)
        assert refused.value.code == 1013
        assert wsrpc.CloseCode.TRY_AGAIN_LATER.value == 1013
        assert len(server.acceptors) == 2  # the refused one left no trace
        # Those already in keep working while others are refused.
        assert await second.get_driver().echo("still here") == "still here"
        await first.close()
        acceptor = await asyncio.wait_for(accepted.get(), 5 * UNIT)
        await asyncio.wait_for(acceptor.join(), 5 * UNIT)  # released once joined
        third = await connect(server)
        assert await third.get_driver().echo(3) == 3
        await third.close()
        await second.close()


@pytest.mark.parametrize("option", ["max_connections", "max_pending_headers"])
def test_caps_must_be_positive(option: str) -> None:
    with pytest.raises(ValueError, match=option):
        options: dict[str, Any] = {option: 0}
        wsrpc.WebSocketServer(**options)
