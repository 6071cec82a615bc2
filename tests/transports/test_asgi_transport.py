"""
The ASGI transport on its own, driven in-process by a fake ASGI server:
what real servers cannot be made to do on cue (a ``send`` that blocks, the
lifespan protocol, scopes of every type), and the server's states under
``asgi()``. ``tests/system/test_asgi.py`` runs it under real uvicorn and
hypercorn processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import wsrpc
from wsrpc._options import Options
from wsrpc._transports.asgi import HIGH_WATER, AsgiChannel, Message, make_app

from ..conftest import UNIT


class FakeAsgi:
    """One scope's ``receive`` and ``send``, with what the app sent recorded."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[Message] = []
        self.sent_one = asyncio.Event()
        self.send_gate = asyncio.Event()  # cleared: send() blocks, as on a full socket
        self.send_gate.set()

    async def receive(self) -> Message:
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        await self.send_gate.wait()
        self.sent.append(message)
        self.sent_one.set()

    async def next_sent(self, kind: str) -> Message:
        async with asyncio.timeout(10 * UNIT):
            while True:
                for message in self.sent:
                    if message["type"] == kind:
                        self.sent.remove(message)
                        return message
                self.sent_one.clear()
                await self.sent_one.wait()


def ws_scope(**extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/x",
        "raw_path": b"/rpc/x",
        "query_string": b"a=1",
        "headers": [(b"x-test", b"yes")],
        "client": ("198.51.100.9", 4242),
        "extensions": {"websocket.http.response": {}},
    }
    scope.update(extra)
    return scope


@asynccontextmanager
async def channel_of(**options: Any) -> AsyncIterator[tuple[AsgiChannel, FakeAsgi]]:
    fake = FakeAsgi()
    channel = AsgiChannel(
        ws_scope(),
        fake.receive,
        fake.send,
        max_message_size=options.get("max_message_size", 1024),
        close_timeout=options.get("close_timeout", 10 * UNIT),
        stall_timeout=options.get("stall_timeout"),
    )
    reader = asyncio.create_task(channel.run())
    try:
        yield channel, fake
    finally:
        channel.abort()
        async with asyncio.timeout(10 * UNIT):
            await reader


async def test_the_request_comes_from_the_scope() -> None:
    async with channel_of() as (channel, _):
        assert channel.remote_ip == "198.51.100.9"
        assert channel.request_path == "/rpc/x?a=1"
        assert list(channel.request_headers) == [("x-test", "yes")]


async def turns(count: int = 5) -> None:
    """Let the event loop run a few times (for what must *not* happen)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on every turn of the loop, with a deadline."""
    async with asyncio.timeout(10 * UNIT):
        while not condition():  # noqa: ASYNC110 - a plain condition, no event to wait on
            await asyncio.sleep(0)


async def test_messages_are_delivered_and_pausing_stops_pulling() -> None:
    got: list[bytes | str | memoryview] = []
    lost = asyncio.Event()
    async with channel_of() as (channel, fake):
        await fake.incoming.put({"type": "websocket.receive", "bytes": b"held"})
        await until(fake.incoming.empty)  # taken before start(): held
        channel.start(got.append, lost.set)
        assert got == [b"held"]
        channel.pause_reading()
        # The reader waits in receive() already: it takes one more, and holds it.
        await fake.incoming.put({"type": "websocket.receive", "text": "pulled"})
        await fake.incoming.put({"type": "websocket.receive", "text": "left"})
        await turns()
        assert got == [b"held"]
        assert fake.incoming.qsize() == 1  # not pulled while paused
        channel.resume_reading()
        assert got == [b"held", "pulled"]
        await until(lambda: len(got) == 3)
        assert got == [b"held", "pulled", "left"]
        await fake.incoming.put({"type": "websocket.disconnect", "code": 4001, "reason": "bye"})
        async with asyncio.timeout(10 * UNIT):
            await lost.wait()
        assert channel.close_frames.cause == (4001, "bye")
        assert channel.close_frames.peer_first


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    async with channel_of(max_message_size=64) as (channel, fake):
        channel.start(lambda data: None, lambda: None)
        await fake.incoming.put({"type": "websocket.receive", "text": "é" * 40})  # 80 bytes
        close = await fake.next_sent("websocket.close")
        assert close["code"] == 1009
        await fake.incoming.put({"type": "websocket.disconnect", "code": 1009})
        await channel.wait_closed()
        assert channel.close_frames.sent == (1009, "message over 64 bytes")


async def test_a_blocked_send_fills_the_queue_then_the_stall_timeout_aborts() -> None:
    lost = asyncio.Event()
    async with channel_of(stall_timeout=UNIT / 2) as (channel, fake):
        channel.start(lambda data: None, lost.set)
        fake.send_gate.clear()
        chunk = b"x" * 1024
        for _ in range(HIGH_WATER // len(chunk) + 1):
            channel.send(chunk)
        assert channel.writing_paused
        drained = asyncio.create_task(channel.drain())
        async with asyncio.timeout(10 * UNIT):
            await lost.wait()
            await drained  # returns once the connection is gone
        assert channel.close_frames.sent == (1008, "peer not reading")
        with pytest.raises(wsrpc._transports.ChannelClosed):
            channel.send(b"more")


async def test_drain_returns_once_the_queue_empties() -> None:
    async with channel_of() as (channel, fake):
        channel.start(lambda data: None, lambda: None)
        fake.send_gate.clear()
        for _ in range(HIGH_WATER // 1024 + 1):
            channel.send(b"x" * 1024)
        drained = asyncio.create_task(channel.drain())
        await turns()
        assert not drained.done()
        fake.send_gate.set()
        async with asyncio.timeout(10 * UNIT):
            await drained
        assert not channel.writing_paused


async def test_ping_runs_the_round_trip() -> None:
    answered = asyncio.Event()

    async def round_trip() -> None:
        answered.set()

    async with channel_of() as (channel, _):
        pong = channel.ping()
        assert pong.done()  # no round trip yet: nothing to wait for
        channel.set_round_trip(round_trip)
        async with asyncio.timeout(10 * UNIT):
            await channel.ping()
        assert answered.is_set()


# -- the application and the server's states ----------------------------------------


async def lifespan(app: Any, event: str) -> Message:
    fake = FakeAsgi()
    await fake.incoming.put({"type": f"lifespan.{event}"})
    task = asyncio.create_task(app({"type": "lifespan"}, fake.receive, fake.send))
    reply = await fake.next_sent(f"lifespan.{event}.complete")
    if event == "startup":
        task.cancel()
    else:
        await task
    return reply


async def test_http_gets_404_and_other_scopes_fail() -> None:
    app = make_app(
        lambda channel: asyncio.sleep(0),
        options=Options(),
        origins=None,
        accepting=lambda: True,
        on_shutdown=lambda: asyncio.sleep(0),
    )
    fake = FakeAsgi()
    await app({"type": "http"}, fake.receive, fake.send)
    assert (await fake.next_sent("http.response.start"))["status"] == 404
    with pytest.raises(ValueError, match="'nonsense'"):
        await app({"type": "nonsense"}, fake.receive, fake.send)


def state_of(server: wsrpc.WebSocketServer[Any, Any, Any]) -> wsrpc.ServerState:
    return server.state


async def test_the_server_under_asgi_opens_closes_and_refuses_after() -> None:
    server: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer()
    accepted = asyncio.Event()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        await acceptor.accept(object())
        accepted.set()

    app = server.asgi(handler)
    assert state_of(server) is wsrpc.ServerState.OPEN
    with pytest.raises(wsrpc.StateError):
        server.port  # noqa: B018
    with pytest.raises(wsrpc.StateError):
        server.asgi(handler)
    await lifespan(app, "startup")

    # A client (a TGrid one: a JSON text header) connects and is accepted.
    fake = FakeAsgi()
    await fake.incoming.put({"type": "websocket.connect"})
    task = asyncio.ensure_future(app(ws_scope(), fake.receive, fake.send))
    await fake.next_sent("websocket.accept")
    await fake.incoming.put({"type": "websocket.receive", "text": '{"header": 1}'})
    accepted_frame = await fake.next_sent("websocket.send")
    assert accepted_frame["text"] == "1"
    assert len(server.acceptors) == 1

    # The lifespan's shutdown closes the server: the client gets 1001.
    closing = asyncio.create_task(lifespan(app, "shutdown"))
    close = await fake.next_sent("websocket.close")
    assert (close["code"], close["reason"]) == (1001, "server closing")
    await fake.incoming.put({"type": "websocket.disconnect", "code": 1001})
    async with asyncio.timeout(10 * UNIT):
        await closing
        await task
    assert state_of(server) is wsrpc.ServerState.CLOSED
    assert server.acceptors == {}

    # A connection after the close is refused before its upgrade.
    late = FakeAsgi()
    await late.incoming.put({"type": "websocket.connect"})
    await app(ws_scope(), late.receive, late.send)
    assert (await late.next_sent("websocket.http.response.start"))["status"] == 503
