"""
wsrpc, through its public API only.

The server accepts every client (header ``None``) with a :class:`Provider`;
``run_callbacks`` calls the client's own provider back through
``acceptor.get_driver()``. ``max_message_size`` is 4 MiB on both sides so
that the 1 MiB echo fits; every other option is wsrpc's default.
"""

from __future__ import annotations

from typing import Protocol

import wsrpc

from . import common
from .common import AsyncClient, Params


class ClientRemote(Protocol):
    """The client's provider, as the server calls it."""

    async def add(self, a: int, b: int) -> int: ...


class ServerRemote(Protocol):
    """The server's provider, as the client calls it."""

    async def add(self, a: int, b: int) -> int: ...

    async def echo(self, data: bytes) -> bytes: ...

    async def run_callbacks(self, count: int, seconds: float) -> dict[str, float]: ...


class Provider:
    """What the server serves to each client."""

    def __init__(self, acceptor: Acceptor) -> None:
        self._acceptor = acceptor

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, data: bytes) -> bytes:
        return data

    async def run_callbacks(self, count: int, seconds: float) -> dict[str, float]:
        client = self._acceptor.get_driver()
        return await common.callback_loop(client.add, count, seconds)


Acceptor = wsrpc.WebSocketAcceptor[None, Provider, ClientRemote]

TRANSPORT: wsrpc.TransportName = "websockets"
"""Set to "picows" by systems/wsrpc_fast_system.py."""

VALIDATE = False
"""
Set by the ``*_validate_system`` modules: ``validate=True`` on both sides
(the server checks the client's calls, the client the server's callbacks).
"""


class ClientProvider:
    """What each client serves to the server (for the callbacks scenario)."""

    def add(self, a: int, b: int) -> int:
        return a + b


async def serve(p: Params) -> int:
    server = wsrpc.WebSocketServer[None, Provider, ClientRemote](
        max_message_size=common.MAX_MESSAGE_SIZE, transport=TRANSPORT, validate=VALIDATE
    )

    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(Provider(acceptor))

    await server.open(0, handler)
    return server.port


async def connect(p: Params) -> AsyncClient:
    connector = wsrpc.WebSocketConnector[None, ClientProvider, ServerRemote](
        None,
        ClientProvider(),
        max_message_size=common.MAX_MESSAGE_SIZE,
        transport=TRANSPORT,
        validate=VALIDATE,
    )
    await connector.connect(f"ws://127.0.0.1:{p.port}/", timeout=30)
    driver = connector.get_driver()
    return AsyncClient(
        add=driver.add,
        echo=driver.echo,
        run_callbacks=driver.run_callbacks,
        owner=connector,
    )


if __name__ == "__main__":
    common.main(serve=serve, connect=connect)
