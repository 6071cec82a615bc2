"""
The ceiling: a hand-written RPC, msgpack ``{id, method, args}`` over websockets.

What a careful programmer writes in an afternoon with websockets' asyncio
API (``websockets.asyncio``) and msgpack: a call is
``{"id": n, "method": name, "args": [...]}``, a reply
``{"id": n, "result": value}`` (or ``"error"``); one reader task per
connection resolves the caller's future, plain methods run inline, async
ones in a task. Both sides serve methods, so the server can call the client
back. No handshake, no limits beyond the frame size, no cancellation,
no flow control: every figure is reported as a ratio to this one.

Compression is off here; :mod:`systems.ws_msgpack_deflate` is the same code
with websockets' default permessage-deflate.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from . import common
from .common import AsyncClient, Params

Methods = dict[str, Callable[..., Any]]


class Peer:
    """One end of the hand-written RPC over one websockets connection."""

    def __init__(self, ws: Connection, methods: Methods) -> None:
        self.ws = ws
        self.methods = methods
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()

    def call(self, method: str, *args: Any) -> Awaitable[Any]:
        return self._call(method, args)

    async def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        uid = next(self.ids)
        future = self.loop.create_future()
        self.pending[uid] = future
        try:
            await self.ws.send(msgpack.packb({"id": uid, "method": method, "args": args}))
            return await future
        finally:
            self.pending.pop(uid, None)

    async def read_loop(self) -> None:
        unpackb, pending, methods = msgpack.unpackb, self.pending, self.methods
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    continue  # this protocol is binary
                message = unpackb(frame)
                method = message.get("method")
                if method is None:
                    future = pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        if "error" in message:
                            future.set_exception(RuntimeError(message["error"]))
                        else:
                            future.set_result(message["result"])
                    continue
                uid = message["id"]
                try:
                    result = methods[method](*message["args"])
                except Exception as exc:
                    await self.ws.send(msgpack.packb({"id": uid, "error": repr(exc)}))
                    continue
                if inspect.isawaitable(result):
                    task = self.loop.create_task(self._finish(uid, result))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                else:
                    await self.ws.send(msgpack.packb({"id": uid, "result": result}))
        except ConnectionClosed:
            pass
        finally:
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))

    async def _finish(self, uid: int, awaitable: Awaitable[Any]) -> None:
        try:
            reply = {"id": uid, "result": await awaitable}
        except Exception as exc:
            reply = {"id": uid, "error": repr(exc)}
        try:
            await self.ws.send(msgpack.packb(reply))
        except ConnectionClosed:
            pass


def add(a: int, b: int) -> int:
    return a + b


def echo(data: bytes) -> bytes:
    return data


def make_serve(compression: str | None) -> Callable[[Params], Awaitable[int]]:
    async def serve(p: Params) -> int:
        async def handler(ws: ServerConnection) -> None:
            peer: Peer

            async def run_callbacks(count: int, seconds: float) -> dict[str, float]:
                return await common.callback_loop(
                    lambda a, b: peer.call("add", a, b), count, seconds
                )

            peer = Peer(ws, {"add": add, "echo": echo, "run_callbacks": run_callbacks})
            await peer.read_loop()

        server = await ws_serve(
            handler,
            "127.0.0.1",
            0,
            compression=compression,
            max_size=common.MAX_MESSAGE_SIZE,
        )
        return int(server.sockets[0].getsockname()[1])

    return serve


def make_connect(compression: str | None) -> Callable[[Params], Awaitable[AsyncClient]]:
    async def connect(p: Params) -> AsyncClient:
        ws = await ws_connect(
            f"ws://127.0.0.1:{p.port}/",
            compression=compression,
            max_size=common.MAX_MESSAGE_SIZE,
            open_timeout=30,
        )
        peer = Peer(ws, {"add": add})
        task = asyncio.get_running_loop().create_task(peer.read_loop())
        peer.tasks.add(task)  # keep a reference
        call = peer.call
        return AsyncClient(
            add=lambda a, b: call("add", a, b),
            echo=lambda data: call("echo", data),
            run_callbacks=lambda count, seconds: call("run_callbacks", count, seconds),
            owner=peer,
        )

    return connect


def main(compression: str | None) -> None:
    common.main(serve=make_serve(compression), connect=make_connect(compression))


if __name__ == "__main__":
    main(None)
    sys.exit(0)
