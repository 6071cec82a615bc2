"""
wsrpc inside a web app: mounted in Starlette (FastAPI is the same), run by
uvicorn, on the web app's own port.

``server.asgi(handler)`` is an ASGI application serving the same handler,
limits, hooks and groups as ``server.open()`` would, for any ASGI server to
run. Here a Starlette app serves a page at ``/`` and wsrpc at ``/rpc``; a
client connects to ``ws://host/rpc/``, calls the server, and the server
calls it back. Things worth noticing:

* the acceptor's ``ip``, ``path`` and headers come from the ASGI scope: run
  uvicorn with ``--proxy-headers`` behind a proxy, and ``acceptor.ip`` is
  the client's, not the proxy's;
* at shutdown uvicorn closes every WebSocket itself, with 1012 (service
  restart), before the app's lifespan ends; the lifespan's
  ``server.close()`` then closes whatever is left with 1001 and waits for
  the close hooks;
* the ASGI server owns the socket: its frame-size limit, its pings and its
  compression settings apply; wsrpc's own limits (``max_message_size``,
  ``max_connections``, keepalive) still hold (docs/deployment.md, "Inside an
  ASGI app").

Run it under uvicorn, and call it with ``wsrpc call``::

    uvicorn examples.asgi_app:app --port 8000
    wsrpc call ws://127.0.0.1:8000/rpc/ add 1 2

or run this script, which starts uvicorn on a free port and calls it once::

    python examples/asgi_app.py
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import wsrpc


class Listener(Protocol):
    """What the server calls on its clients."""

    async def on_news(self, text: str) -> None: ...


class Service:
    """What each client calls."""

    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[Any, Service, Listener]) -> None:
        self._acceptor = acceptor

    def add(self, a: float, b: float) -> float:
        return a + b

    def where_am_i(self) -> str:
        return f"{self._acceptor.path} from {self._acceptor.ip}"

    async def shout(self, text: str) -> int:
        """Send ``text`` to every client in the room; return how many got it."""
        outcomes = await server.group("room").broadcast(lambda peer: peer.on_news(text))
        return sum(outcome.ok for outcome in outcomes)


server: wsrpc.WebSocketServer[Any, Service, Listener] = wsrpc.WebSocketServer()


async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Service, Listener]) -> None:
    await acceptor.accept(Service(acceptor))
    server.group("room").add(acceptor)


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("a web app, with wsrpc at /rpc/\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await server.close()  # what uvicorn left open gets 1001 (going away)


app = Starlette(
    routes=[Route("/", home), Mount("/rpc", app=server.asgi(handler))],
    lifespan=lifespan,
)


# -- the demonstration: python examples/asgi_app.py -------------------------------


class Client:
    def __init__(self) -> None:
        self.news: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_news(self, text: str) -> None:
        self.news.set_result(text)


class Remote(Protocol):
    async def add(self, a: float, b: float) -> float: ...
    async def where_am_i(self) -> str: ...
    async def shout(self, text: str) -> int: ...


async def main() -> None:
    # A socket of our own, listening already: its port is known before
    # uvicorn starts, and a client connecting early waits in its backlog.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(web.serve(sockets=[sock]))
    client = Client()
    connector = wsrpc.WebSocketConnector[None, Client, Remote](None, client)
    await connector.connect(f"ws://127.0.0.1:{port}/rpc/?name=ann")
    remote = connector.get_driver()
    print("1 + 2 =", await remote.add(1, 2))
    print("the server sees", await remote.where_am_i())
    print("shout reached", await remote.shout("hello room"), "client(s)")
    print("news:", await client.news)
    web.should_exit = True  # as on SIGTERM: the lifespan closes wsrpc's server
    await serving
    info = await connector.join()
    print("closed by the server:", info.code, info.reason)


if __name__ == "__main__":
    asyncio.run(main())
