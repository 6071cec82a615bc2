"""
python-socketio: ``AsyncServer`` on aiohttp, ``AsyncClient.call()``.

Each RPC is an event whose handler's return value comes back as the
acknowledgement. The client uses the WebSocket transport only (no long
polling); the payload is socket.io's default JSON with binary attachments.
For the callbacks scenario the server calls ``sio.call("add", ..., to=sid)``
and the client's ``add`` handler answers. ``max_http_buffer_size`` is raised
to 4 MiB for the 1 MiB echo.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import socketio
from aiohttp import web

from . import common
from .common import AsyncClient, Params

CALL_TIMEOUT = 60


async def serve(p: Params) -> int:
    sio = socketio.AsyncServer(
        async_mode="aiohttp", max_http_buffer_size=common.MAX_MESSAGE_SIZE, cors_allowed_origins="*"
    )
    app = web.Application()
    sio.attach(app)

    async def add(sid: str, data: list[int]) -> int:
        return data[0] + data[1]

    async def echo(sid: str, data: bytes) -> bytes:
        return data

    async def run_callbacks(sid: str, data: list[Any]) -> dict[str, float]:
        count, seconds = data

        def client_add(a: int, b: int) -> Awaitable[int]:
            call: Awaitable[int] = sio.call("add", [a, b], to=sid, timeout=CALL_TIMEOUT)
            return call

        return await common.callback_loop(client_add, int(count), float(seconds))

    sio.on("add", add)
    sio.on("echo", echo)
    sio.on("run_callbacks", run_callbacks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return int(runner.addresses[0][1])


async def connect(p: Params) -> AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)

    async def add(data: list[int]) -> int:
        return data[0] + data[1]

    sio.on("add", add)
    await sio.connect(f"http://127.0.0.1:{p.port}", transports=["websocket"], wait_timeout=30)
    call = sio.call

    async def run_callbacks(count: int, seconds: float) -> dict[str, float]:
        result: dict[str, float] = await call(
            "run_callbacks", [count, seconds], timeout=CALL_TIMEOUT + seconds
        )
        return result

    return AsyncClient(
        add=lambda a, b: call("add", [a, b], timeout=CALL_TIMEOUT),
        echo=lambda data: call("echo", data, timeout=CALL_TIMEOUT),
        run_callbacks=run_callbacks,
        owner=sio,
    )


if __name__ == "__main__":
    common.main(serve=serve, connect=connect)
