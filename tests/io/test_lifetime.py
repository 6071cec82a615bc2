"""
Nothing of a closed connection outlives it.

Python frees an object the moment its last reference goes, unless the object
is part of a reference cycle: then it waits for the cyclic garbage collector,
which runs rarely (its thresholds count allocations, not bytes), so that a
cycle holding a large header can keep megabytes alive indefinitely. These
tests turn the collector off and check, with weak references, that a closed
or rejected connection's objects (the acceptor with its header, the
provider holding its peer's driver, the connector) are freed by reference
counting alone.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

import wsrpc

from ..conftest import UNIT, running_server, url_of


@pytest.fixture(autouse=True)
def no_cycle_collection() -> Iterator[None]:
    gc.collect()  # what earlier tests left: not ours to count
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _referrers(obj: object) -> str:
    return "; ".join(type(r).__name__ for r in gc.get_referrers(obj))


class Freed:
    """Weak references to objects that must die; :meth:`wait` for all of them."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Any]] = []
        self._alive = 0
        self._all_gone = asyncio.Event()

    def track(self, *objects: object) -> None:
        for obj in objects:
            self._alive += 1
            self.refs.append(weakref.ref(obj, self._gone))

    def _gone(self, ref: weakref.ref[Any]) -> None:
        # Runs at the moment the object is freed.
        self._alive -= 1
        if self._alive == 0:
            self._all_gone.set()

    async def wait(self) -> None:
        """Wait until every tracked object is freed; fail, naming the rest, if not."""
        # The last references go with tasks that end and with done callbacks
        # that run on later loop iterations: give them a generous time.
        try:
            await asyncio.wait_for(self._all_gone.wait(), 5 * UNIT)
        except TimeoutError:
            alive = [ref() for ref in self.refs if ref() is not None]
            pytest.fail(f"still alive: {[f'{o!r} held by {_referrers(o)}' for o in alive]}")


class ClientRemote(Protocol):
    async def notify(self, text: str) -> str: ...


class Room:
    def __init__(self, client: ClientRemote) -> None:
        self.client = client

    async def say(self, text: str) -> str:
        return await self.client.notify(text)


class Client:
    def __init__(self) -> None:
        self.server: Any = None

    async def notify(self, text: str) -> str:
        return text


class Payload:
    """Stands for a large header: weak-referenceable, unlike a dict."""


async def test_a_rejected_connection_with_a_large_header_is_freed() -> None:
    freed = Freed()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Room, ClientRemote]) -> None:
        # The documented token check, after a TGrid-style driver was fetched.
        freed.track(acceptor, Room(acceptor.get_driver()))
        await acceptor.reject(4001, "bad token")

    header = {"token": "wrong", "padding": [{} for _ in range(20_000)]}
    async with running_server(handler) as server:
        for _ in range(3):
            connector = wsrpc.WebSocketConnector[Any, Client, Any](header, Client())
            freed.track(connector)
            with pytest.raises(wsrpc.RejectedError):
                await connector.connect(url_of(server), timeout=5 * UNIT)
            del connector
        assert len(freed.refs) == 9
        await freed.wait()


async def test_an_accepted_connection_is_freed_after_either_side_closes() -> None:
    freed = Freed()
    accepted: asyncio.Queue[wsrpc.WebSocketAcceptor[Any, Room, ClientRemote]] = asyncio.Queue()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Room, ClientRemote]) -> None:
        room = Room(acceptor.get_driver())  # the provider holds its client's driver
        freed.track(acceptor, room)

        @acceptor.on_closed
        def forget(closed: object, info: wsrpc.CloseInfo) -> None:
            assert closed is acceptor  # a hook that closes over the acceptor

        await acceptor.accept(room)
        accepted.put_nowait(acceptor)

    closers: list[Callable[[Any, Any], Any]] = [
        lambda connector, acceptor: connector.close(),
        lambda connector, acceptor: acceptor.close(4000, "server closes"),
    ]
    async with running_server(handler) as server:
        for close in closers:
            client = Client()
            connector = wsrpc.WebSocketConnector[None, Client, Any](None, client)
            client.server = connector.get_driver()  # the client's provider holds it too
            freed.track(connector, client)
            await connector.connect(url_of(server), timeout=5 * UNIT)
            assert await client.server.say("hi") == "hi"
            acceptor = await asyncio.wait_for(accepted.get(), 5 * UNIT)
            await close(connector, acceptor)
            await asyncio.wait_for(connector.join(), 5 * UNIT)
            await asyncio.wait_for(acceptor.join(), 5 * UNIT)
            del connector, client, acceptor
        assert len(freed.refs) == 8
        await freed.wait()


async def test_a_closed_server_is_freed() -> None:
    freed = Freed()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Room, ClientRemote]) -> None:
        await acceptor.accept(Room(acceptor.get_driver()))

    server: wsrpc.WebSocketServer[Any, Room, ClientRemote] = wsrpc.WebSocketServer()
    server.on_connect(lambda acceptor: None)
    await server.open(0, handler)
    connector = wsrpc.WebSocketConnector[None, Client, Any](None, Client())
    await connector.connect(url_of(server), timeout=5 * UNIT)
    server.group("room").add(next(iter(server.acceptors.values())))
    freed.track(server, connector)
    await server.close()
    await asyncio.wait_for(connector.join(), 5 * UNIT)
    del server, connector
    await freed.wait()
