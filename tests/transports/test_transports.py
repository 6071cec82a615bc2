"""
The transport setting: both transports speak the same wire, and what one of
them cannot do is refused at once with a clear error.

The behaviour of each transport is covered by the whole suite, which
``make test`` runs on both (see ``WSRPC_TEST_TRANSPORT`` in conftest.py);
tests/transports/test_picows_transport.py covers the picows channel on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import pytest

import wsrpc
from wsrpc.http import HttpResponse

from ..conftest import UNIT, AnyAcceptor, url_of

TRANSPORTS: list[wsrpc.TransportName] = ["websockets", "picows"]


class Client:
    def shout(self, text: str) -> str:
        return text.upper()


class ClientRemote(Protocol):
    async def shout(self, text: str) -> str: ...


class Service:
    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[Any, Any, ClientRemote]) -> None:
        self._acceptor = acceptor

    async def relay(self, text: str) -> str:
        # A callback in the middle of a call, so that both directions cross.
        return await self._acceptor.get_driver().shout(text)


class ServiceRemote(Protocol):
    async def relay(self, text: str) -> str: ...


@pytest.mark.parametrize("client_transport", TRANSPORTS)
@pytest.mark.parametrize("server_transport", TRANSPORTS)
async def test_every_pair_of_transports_talks(
    server_transport: wsrpc.TransportName, client_transport: wsrpc.TransportName
) -> None:
    seen: list[str] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        seen.append(acceptor.header["name"])
        await acceptor.accept(Service(acceptor))

    server: wsrpc.WebSocketServer[Any, Service, ClientRemote] = wsrpc.WebSocketServer(
        transport=server_transport
    )
    async with server:
        await server.open(0, handler)
        header = {"name": client_transport}
        connector: wsrpc.WebSocketConnector[Any, Client, ServiceRemote] = wsrpc.WebSocketConnector(
            header, Client(), transport=client_transport
        )
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            async with asyncio.timeout(5 * UNIT):
                assert await connector.get_driver().relay("hi") == "HI"
                (acceptor,) = server.acceptors.values()
                await acceptor.close(4000, "bye")
                info = await connector.join()
    assert seen == [client_transport]
    assert (info.code, info.reason, info.clean, info.by_peer) == (4000, "bye", True, True)


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport must be one of 'websockets', 'picows'"):
        wsrpc.WebSocketServer(transport="trio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transport must be one of"):
        wsrpc.WebSocketConnector(None, transport="aiohttp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transport must be one of"):
        wsrpc.sync.WebSocketConnector(None, transport="")  # type: ignore[arg-type]


def test_compression_needs_websockets() -> None:
    with pytest.raises(ValueError, match="compression is not available with transport='picows'"):
        wsrpc.WebSocketServer(compression=True, transport="picows")
    with pytest.raises(ValueError, match="compression is not available"):
        wsrpc.WebSocketConnector(None, compression=True, transport="picows")


async def test_http_handler_needs_websockets() -> None:
    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.reject()

    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer(transport="picows")
    with pytest.raises(ValueError, match="http_handler needs transport='websockets'"):
        await server.open(0, handler, http_handler=lambda request: HttpResponse(200, "ok"))
    assert server.state is wsrpc.ServerState.NONE


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_channel_tells_each_new_owner_it_is_gone(transport: wsrpc.TransportName) -> None:
    # The connector hands its channel from its handshake callbacks to its
    # communicator: a connection lost in between must reach the second too.
    from wsrpc._options import Options
    from wsrpc._transports import Channel, connect, listen

    options = Options(transport=transport)

    async def serve(channel: Channel) -> None:
        channel.abort()  # gone at once

    listener = await listen("127.0.0.1", 0, serve, options=options, origins=None, http_handler=None)
    try:
        channel, _ = await connect(
            f"ws://127.0.0.1:{listener.port}/", additional_headers=(), options=options
        )
        first, second = asyncio.Event(), asyncio.Event()
        channel.start(lambda data: None, first.set)
        async with asyncio.timeout(5 * UNIT):
            await first.wait()
        channel.start(lambda data: None, second.set)
        assert second.is_set()  # told before start() returned
    finally:
        listener.stop_accepting()
        async with asyncio.timeout(5 * UNIT):
            await listener.wait_closed()


@pytest.mark.parametrize("client_transport", TRANSPORTS)
@pytest.mark.parametrize("server_transport", TRANSPORTS)
async def test_several_pings_in_flight_are_all_answered(
    server_transport: wsrpc.TransportName, client_transport: wsrpc.TransportName
) -> None:
    # Either side answers only the latest ping of a read (one pong per read):
    # a pong must then answer the pings sent before it too, on both sides.
    from wsrpc._options import Options
    from wsrpc._transports import Channel, connect, listen

    served: asyncio.Queue[Channel] = asyncio.Queue()

    async def serve(channel: Channel) -> None:
        channel.start(lambda data: None, lambda: None)
        served.put_nowait(channel)
        await channel.wait_closed()

    listener = await listen(
        "127.0.0.1",
        0,
        serve,
        options=Options(transport=server_transport),
        origins=None,
        http_handler=None,
    )
    try:
        client, _ = await connect(
            f"ws://127.0.0.1:{listener.port}/",
            additional_headers=(),
            options=Options(transport=client_transport),
        )
        client.start(lambda data: None, lambda: None)
        server = await asyncio.wait_for(served.get(), 5 * UNIT)
        for side in (client, server):
            pongs = [side.ping() for _ in range(5)]  # sent in one go: likely one read
            await asyncio.wait_for(asyncio.gather(*pongs), 5 * UNIT)
        client.abort()
    finally:
        listener.stop_accepting()
        async with asyncio.timeout(5 * UNIT):
            await listener.wait_closed()
