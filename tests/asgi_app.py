"""
The ASGI application that ``tests/system/test_asgi.py`` runs under real
uvicorn and hypercorn processes: a Starlette app with a plain HTTP route
(``/health``) and wsrpc mounted at ``/rpc``.

    python -m uvicorn tests.asgi_app:app --port 8000
    python -m hypercorn tests.asgi_app:app --bind 127.0.0.1:8000

Its server's keepalive and message size are small, so that the tests see
them act: ``ping_interval`` is ``WSRPC_TEST_UNIT`` / 4 seconds, and the
largest message is :data:`MAX_MESSAGE_SIZE` bytes.

Clients send ``{"token": "secret"}`` (anything else is rejected with 4003
``"bad token"``) and may be wsrpc or TGrid clients. Each gets a
:class:`Session`: what the tests ask of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import wsrpc

TOKEN = "secret"
MAX_MESSAGE_SIZE = 4096
UNIT = float(os.environ.get("WSRPC_TEST_UNIT", "1.0"))

Acceptor = wsrpc.WebSocketAcceptor[Any, "Session", Any]


class Outcomes:
    """How the server's calls to each client ended, by the client's tag."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[list[Any]]] = {}

    def future(self, tag: str) -> asyncio.Future[list[Any]]:
        if tag not in self._futures:
            self._futures[tag] = asyncio.get_running_loop().create_future()
        return self._futures[tag]


outcomes = Outcomes()
close_requests: dict[str, asyncio.Future[list[Any]]] = {}


class Session:
    """What the server provides to one client (wsrpc or TGrid)."""

    def __init__(self, acceptor: Acceptor) -> None:
        self._acceptor = acceptor
        self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def whoami(self) -> dict[str, Any]:
        acceptor = self._acceptor
        return {
            "ip": acceptor.ip,
            "path": acceptor.path,
            "test_header": acceptor.request_headers.get("x-test", None),
            "codec": acceptor.codec,
            "peers": len(server.acceptors),
        }

    async def greet(self, name: str) -> str:
        """Calls the client back during the client's call."""
        reply = await self._acceptor.get_driver(timeout=10 * UNIT).onMessage(f"hello {name}")
        return f"client said: {reply}"

    async def welcomed(self) -> Any:
        """What the client answered to the call made right after accepting it."""
        return await asyncio.shield(self.welcome)

    def call_me_and_wait(self, tag: str) -> None:
        """Call the client's ``wait()``, which never answers; record how it ends."""
        future = outcomes.future(tag)

        async def call() -> None:
            try:
                await self._acceptor.get_driver().wait()
            except wsrpc.ConnectionClosedError as exc:
                future.set_result(["ConnectionClosedError", exc.code])
            except Exception as exc:
                future.set_result([type(exc).__name__, str(exc)])
            else:
                future.set_result(["returned"])

        asyncio.get_running_loop().create_task(call())

    async def outcome(self, tag: str) -> list[Any]:
        """How the call that ``call_me_and_wait(tag)`` started ended (waits for it)."""
        return await outcomes.future(tag)

    def watch_close_request(self, tag: str) -> None:
        """Record the close request hook's arguments under ``tag``."""
        future = close_requests.setdefault(tag, asyncio.get_running_loop().create_future())

        def hook(code: int, reason: str) -> None:
            if not future.done():
                future.set_result([code, reason])

        self._acceptor.on_close_request(hook)

    async def close_request(self, tag: str) -> list[Any]:
        future = close_requests.setdefault(tag, asyncio.get_running_loop().create_future())
        return await future


async def handler(acceptor: Acceptor) -> None:
    header = acceptor.header
    if not isinstance(header, dict) or header.get("token") != TOKEN:
        await acceptor.reject(4003, "bad token")
        return
    session = Session(acceptor)
    await acceptor.accept(session)
    if acceptor.codec != "tgrid":
        return
    # Call a TGrid client at once: accept() made sure that its handler is in place.
    try:
        reply = await acceptor.get_driver(timeout=10 * UNIT).onMessage("welcome")
    except wsrpc.WsrpcError as exc:
        session.welcome.set_result(f"failed: {exc!r}")
    else:
        session.welcome.set_result(reply)


server: wsrpc.WebSocketServer[Any, Session, Any] = wsrpc.WebSocketServer(
    max_message_size=MAX_MESSAGE_SIZE,
    ping_interval=UNIT / 4,
    ping_timeout=UNIT,
    origins=[None, "https://good.example"],
)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await server.close()


app = Starlette(
    routes=[Route("/health", health), Mount("/rpc", app=server.asgi(handler))],
    lifespan=lifespan,
)
