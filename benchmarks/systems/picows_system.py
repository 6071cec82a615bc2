"""
The raw picows ceiling: the ceiling's msgpack RPC on picows, on uvloop.

picows (a Cython WebSocket library) calls ``on_ws_frame`` for every frame,
with no reader task and no per-message await: replies to plain methods go out
from inside that callback. Same messages as :mod:`systems.ws_msgpack`
(``{id, method, args}`` → ``{id, result}``); uvloop on both sides when it is
installed (``--no-uvloop`` turns it off). No compression, no fragmentation.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
    ws_create_server,
)

from . import common
from .common import AsyncClient, Params

Methods = dict[str, Callable[..., Any]]


class Peer(WSListener):
    """One end of the RPC: serves ``methods`` and calls the other end's."""

    def __init__(self, methods: Methods) -> None:
        super().__init__()
        self.methods = methods
        self.transport: WSTransport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.tasks: set[asyncio.Task[None]] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("disconnected"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if kind is not WSMsgType.BINARY:
            return
        message = msgpack.unpackb(frame.get_payload_as_memoryview())
        method = message.get("method")
        if method is None:
            future = self.pending.pop(message["id"], None)
            if future is not None and not future.done():
                if "error" in message:
                    future.set_exception(RuntimeError(message["error"]))
                else:
                    future.set_result(message["result"])
            return
        uid = message["id"]
        try:
            result = self.methods[method](*message["args"])
        except Exception as exc:
            transport.send(WSMsgType.BINARY, msgpack.packb({"id": uid, "error": repr(exc)}))
            return
        if inspect.isawaitable(result):
            task = asyncio.get_running_loop().create_task(self._finish(uid, result))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            transport.send(WSMsgType.BINARY, msgpack.packb({"id": uid, "result": result}))

    async def _finish(self, uid: int, awaitable: Awaitable[Any]) -> None:
        try:
            reply = {"id": uid, "result": await awaitable}
        except Exception as exc:
            reply = {"id": uid, "error": repr(exc)}
        if self.transport is not None:
            self.transport.send(WSMsgType.BINARY, msgpack.packb(reply))

    def call(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """Send a call; the returned future resolves to its result."""
        assert self.transport is not None
        uid = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.pending[uid] = future
        self.transport.send(
            WSMsgType.BINARY, msgpack.packb({"id": uid, "method": method, "args": args})
        )
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


def add(a: int, b: int) -> int:
    return a + b


def echo(data: bytes) -> bytes:
    return data


def server_peer() -> Peer:
    peer: Peer

    async def run_callbacks(count: int, seconds: float) -> dict[str, float]:
        return await common.callback_loop(lambda a, b: peer.call("add", a, b), count, seconds)

    peer = Peer({"add": add, "echo": echo, "run_callbacks": run_callbacks})
    return peer


async def serve(p: Params) -> int:
    server = await ws_create_server(
        lambda request: server_peer(),
        "127.0.0.1",
        0,
        max_frame_size=common.MAX_MESSAGE_SIZE,
        backlog=1024,
    )
    return int(server.sockets[0].getsockname()[1])


async def connect(p: Params) -> AsyncClient:
    _, peer = await ws_connect(
        lambda: Peer({"add": add}),
        f"ws://127.0.0.1:{p.port}/",
        max_frame_size=common.MAX_MESSAGE_SIZE,
        websocket_handshake_timeout=30,
    )
    assert isinstance(peer, Peer)
    call = peer.call
    return AsyncClient(
        add=lambda a, b: call("add", a, b),
        echo=lambda data: call("echo", data),
        run_callbacks=lambda count, seconds: call("run_callbacks", count, seconds),
        owner=peer,
    )


if __name__ == "__main__":
    common.main(serve=serve, connect=connect, default_uvloop=True)
