"""
Server push: a ticker, a health check, and reaching one client later.

The server serves no methods at all (its provider is None): it only calls
its clients, which serve ``on_tick(n)`` and ``on_message(text)``. Two clients,
ann and bob, connect to ``ws://host/ws``; a background task pushes three ticks
to every connection on a timer; the server then reaches bob alone through the
connection id it stored, and bob leaves.

Things worth noticing:

* ``open(..., http_handler=...)`` puts plain HTTP beside the WebSocket
  endpoint: ``GET /health`` is answered with 200 and a JSON body,
  ``/ws`` goes on to the upgrade with an extra ``Set-Cookie`` header
  (``wsrpc.Upgrade(headers=...)``), any other path gets 404;
* :attr:`~wsrpc.WebSocketServer.acceptors` lists connections from their
  upgrade on, before their header has arrived: the health check counts only
  those that are ``OPEN`` (accepted);
* the ticker calls ``server.notify(...)``, fire and forget: it starts
  ``on_tick(n)`` on every open connection, each in a task of its own, and
  returns at once with how many it started (a failure is logged at DEBUG
  level, and ``server.close()`` waits for calls still running);
* keep a connection's *id*, not the acceptor: the server stores ``name ->
  id`` and later finds bob's connection with ``server.acceptors[id]``; once
  he has left, the same id finds nothing (ids are never reused), and the
  ``on_disconnect`` hook has removed him, with ``info.clean`` telling a
  graceful close from a lost connection;
* the script's own timing uses no sleep: the ticker's timer is the feature
  shown, but the script waits on events for the ticks to arrive, and prints
  from one place, in a fixed order, so its output is always the same.

The health check is fetched with :mod:`urllib` in a thread (it blocks), and
the cookie is read with a plain ``websockets`` client, as a browser would
see it (a wsrpc client reads it as ``connector.response_headers``).

Run it::

    python examples/push.py
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypedDict
from urllib.parse import urlsplit

from websockets.asyncio.client import connect as websocket_connect

import wsrpc


class Header(TypedDict):
    """Who is connecting."""

    name: str


class ListenerRemote(Protocol):
    """What the server may call on each client."""

    async def on_tick(self, n: int) -> None: ...

    async def on_message(self, text: str) -> str:
        """Show ``text`` to the user; returns an acknowledgement."""
        ...


# -- the server ---------------------------------------------------------------

NAME_REQUIRED = 4000
PUSH_TIMEOUT = 5.0
"""Seconds a client has to take a push; a stuck one cannot pile up calls."""
COOKIE = "node=push-1; Path=/; HttpOnly; SameSite=Strict"
"""Set on every upgrade: a sticky-session cookie, say, for a load balancer."""

Server = wsrpc.WebSocketServer[Header, None, ListenerRemote]
Acceptor = wsrpc.WebSocketAcceptor[Header, None, ListenerRemote]


class Push:
    """The server's routes, handler and hooks, and its directory of clients."""

    def __init__(self, server: Server) -> None:
        self.server = server
        # Name -> connection id, what a session store would keep. An id is
        # a plain int: it can be stored anywhere, and never keeps a dead
        # connection alive.
        self.directory: dict[str, int] = {}
        server.on_disconnect(self._disconnected)

    def connected(self) -> int:
        """How many clients are connected (accepted and open)."""
        return sum(
            1
            for acceptor in self.server.acceptors.values()
            if acceptor.state is wsrpc.AcceptorState.OPEN
        )

    def routes(self, request: wsrpc.HttpRequest) -> wsrpc.HttpResponse | wsrpc.Upgrade:
        """Every HTTP request, before any upgrade."""
        path = urlsplit(request.path).path
        if path == "/health":
            body = json.dumps({"status": "ok", "clients": self.connected()})
            return wsrpc.HttpResponse(200, body, headers=[("Content-Type", "application/json")])
        if path == "/ws":
            # Returning None would let the upgrade go on unchanged; a plain
            # GET /ws (no upgrade asked) gets websockets' 426 either way.
            return wsrpc.Upgrade(headers=[("Set-Cookie", COOKIE)])
        return wsrpc.HttpResponse(404, "not found\n")

    async def handler(self, acceptor: Acceptor) -> None:
        # The header is untrusted: whatever the client sent, whatever its type says.
        header: object = acceptor.header
        name = header.get("name") if isinstance(header, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 20 or not name.isprintable():
            await acceptor.reject(NAME_REQUIRED, "a name of 1 to 20 characters is required")
            return
        # Recorded before accept(): once accept() has begun, the disconnect
        # hook that removes the entry may run at any time (a client can
        # leave at once), even before accept() returns.
        self.directory[name] = acceptor.id
        await acceptor.accept(None)  # nothing to call here: this server only pushes

    def _disconnected(self, acceptor: Acceptor, info: wsrpc.CloseInfo) -> None:
        name = acceptor.header["name"]  # checked by the handler before accept()
        if self.directory.get(name) == acceptor.id:
            del self.directory[name]
        how = "clean close" if info.clean else "connection lost"
        print(f"[server] {name} (connection #{acceptor.id}) disconnected: code {info.code}, {how}")

    async def ticker(self, count: int, interval: float) -> list[int]:
        """Push ``count`` ticks, one every ``interval`` s; return how many clients each went to."""
        started: list[int] = []
        for n in range(1, count + 1):
            await asyncio.sleep(interval)  # the timer; a real ticker would loop for ever
            started.append(self.server.notify(tick(n), timeout=PUSH_TIMEOUT))
        return started


def tick(n: int) -> Callable[[ListenerRemote], Awaitable[None]]:
    """The call that pushes tick ``n`` to one client, typed against ``ListenerRemote``."""
    # One function per tick keeps each call's ``n`` explicit (notify() makes
    # its calls at once, so a lambda in the loop would work too).
    return lambda client: client.on_tick(n)


def http_get(url: str) -> str:
    """GET ``url``; its status, content type and body (blocking: run it in a thread)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
        return f"{response.status} {response.headers['Content-Type']} {body}"


# -- the clients --------------------------------------------------------------


class Inbox:
    """What one client has received, in order, and a way to wait for it."""

    def __init__(self) -> None:
        self.ticks: list[int] = []
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait_for_ticks(self, count: int) -> None:
        while len(self.ticks) < count:
            self._changed.clear()
            await self._changed.wait()


class Listener:
    """
    The client's provider: what the server may call.

    Every public method of a provider can be called by the peer, so the
    waiting helper lives in :class:`Inbox`, out of the server's reach.
    """

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    def on_tick(self, n: int) -> None:
        self._inbox.ticks.append(n)
        self._inbox.changed()

    def on_message(self, text: str) -> str:
        self._inbox.messages.append(text)
        self._inbox.changed()
        return "got it"


Connector = wsrpc.WebSocketConnector[Header, Listener, None]


@dataclass
class Client:
    name: str
    inbox: Inbox
    connector: Connector


async def connect(url: str, name: str) -> Client:
    inbox = Inbox()
    connector = Connector({"name": name}, Listener(inbox))
    await connector.connect(url)
    print(f"[{name}] connected")
    return Client(name, inbox, connector)


async def main() -> None:
    async with Server() as server:
        push = Push(server)
        await server.open(0, push.handler, http_handler=push.routes)
        base = f"127.0.0.1:{server.port}"

        # What the upgrade answers, read with a plain websockets client. It
        # sends no wsrpc header: it is connection #1 in server.acceptors for a
        # moment, but never OPEN, so the health check does not count it.
        async with websocket_connect(f"ws://{base}/ws") as websocket:
            response = websocket.response
            assert response is not None
            cookie = response.headers["Set-Cookie"]
            print(f"[http] /ws upgraded ({response.status_code}), Set-Cookie: {cookie}")

        ann = await connect(f"ws://{base}/ws", "ann")
        bob = await connect(f"ws://{base}/ws", "bob")
        print(f"[http] GET /health -> {await asyncio.to_thread(http_get, f'http://{base}/health')}")

        # The ticker runs on its own; the clients wait for what it pushes.
        ticker = asyncio.create_task(push.ticker(count=3, interval=0.05))
        for client in (ann, bob):
            await client.inbox.wait_for_ticks(3)
        for n, started in enumerate(await ticker, start=1):
            print(f"[server] tick {n} pushed to {started} clients")
        for client in (ann, bob):
            print(f"[{client.name}] ticks received: {client.inbox.ticks}")

        # Later, from anywhere in the server: reach bob by his stored id.
        bob_id = push.directory["bob"]
        acceptor = server.acceptors[bob_id]
        answer = await acceptor.get_driver().on_message("your export is ready")
        print(f"[server] connection #{bob_id} answered {answer!r}")
        print(f"[bob] messages: {bob.inbox.messages}")

        await bob.connector.close()
        # Returns once the server's side is closed too: its hooks have run and
        # it has left server.acceptors.
        await acceptor.join()
        print(f"[server] server.acceptors.get({bob_id}) -> {server.acceptors.get(bob_id)}")
        print(f"[server] directory: {push.directory}")
        print(f"[http] GET /health -> {await asyncio.to_thread(http_get, f'http://{base}/health')}")
        # Leaving the block closes the server, and ann with it (1001: going away).
    print("[server] closed")


if __name__ == "__main__":
    asyncio.run(main())
