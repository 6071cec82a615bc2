"""
The picows transport at the channel level, with no RPC on top: wsrpc._transports.picows
against itself, against a raw picows peer that writes whatever frames a test
wants, and against websockets on either side (wire compliance).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import picows
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from wsrpc._options import Options
from wsrpc._transports import picows as _picows
from wsrpc._transports.base import Channel, ChannelClosed, CloseFrames, Listener
from wsrpc._transports.picows import PicowsChannel

from ..conftest import UNIT

MAX = 1 << 20
CLOSE_TIMEOUT = 5 * UNIT


def _options(max_message_size: int, close_timeout: float) -> Options:
    return Options(
        max_message_size=max_message_size, close_timeout=close_timeout, transport="picows"
    )


async def listen(
    host: str,
    port: int,
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    max_message_size: int,
    close_timeout: float,
    origins: list[str | None] | None = None,
) -> Listener:
    """The picows transport's listen(), with the two settings these tests vary."""
    options = _options(max_message_size, close_timeout)
    return await _picows.listen(host, port, on_channel, options=options, origins=origins)


async def connect(
    url: str,
    *,
    additional_headers: Sequence[tuple[str, str]] = (),
    max_message_size: int,
    close_timeout: float,
) -> tuple[Channel, list[tuple[str, str]]]:
    """The picows transport's connect(), with the two settings these tests vary."""
    options = _options(max_message_size, close_timeout)
    return await _picows.connect(url, additional_headers=additional_headers, options=options)


T = TypeVar("T")


async def within(aw: Awaitable[T], units: float = 5) -> T:
    """``aw``, failing the test if it takes more than ``units`` UNITs."""
    return await asyncio.wait_for(aw, units * UNIT)


class Sink:
    """Starts a channel and records what it delivers; ``echo`` sends messages back."""

    def __init__(self, channel: Channel, *, echo: bool = False, start: bool = True) -> None:
        self.channel = channel
        self.echo = echo
        self.messages: list[bytes | str] = []
        self.close_frames: list[tuple[int, str]] = []
        self.lost = 0
        self._arrived = asyncio.Event()
        self._lost = asyncio.Event()
        if start:
            self.start()

    def start(self) -> None:
        self.channel.start(self._on_message, self._on_lost, self._on_close_frame)

    def _on_message(self, message: bytes | str | memoryview) -> None:
        assert not self.lost, "a message after on_lost"
        if type(message) is memoryview:
            message = bytes(message)  # kept: a view is only valid during this call
        self.messages.append(message)
        self._arrived.set()
        if self.echo:
            self.channel.send(message)

    def _on_lost(self) -> None:
        self.lost += 1
        self._lost.set()

    def _on_close_frame(self, code: int, reason: str) -> None:
        self.close_frames.append((code, reason))

    async def wait_messages(self, count: int) -> list[bytes | str]:
        async def enough() -> None:
            while len(self.messages) < count:
                self._arrived.clear()
                await self._arrived.wait()

        await within(enough())
        return self.messages

    async def wait_lost(self) -> None:
        await within(self._lost.wait())


class Served:
    """A picows listener whose handler hands each channel over and holds it until released."""

    def __init__(self) -> None:
        self.listener: Listener
        self.channels: asyncio.Queue[Channel] = asyncio.Queue()
        self.seen: list[Channel] = []
        self.calls = 0
        self.release = asyncio.Event()

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.listener.port}{path}"

    async def on_channel(self, channel: Channel) -> None:
        self.calls += 1
        self.seen.append(channel)
        self.channels.put_nowait(channel)
        await self.release.wait()


@asynccontextmanager
async def serving(
    handler: Callable[[Channel], Awaitable[None]] | None = None,
    *,
    max_message_size: int = MAX,
    origins: list[str | None] | None = None,
) -> AsyncIterator[Served]:
    """A listener on 127.0.0.1, port 0; every connection aborted and waited for on exit."""
    served = Served()
    served.listener = await listen(
        "127.0.0.1",
        0,
        handler or served.on_channel,
        max_message_size=max_message_size,
        close_timeout=CLOSE_TIMEOUT,
        origins=origins,
    )
    try:
        yield served
    finally:
        served.listener.stop_accepting()
        for channel in served.seen:
            channel.abort()
        served.release.set()
        await within(served.listener.wait_closed())


@asynccontextmanager
async def pair(
    *, max_message_size: int = MAX, close_timeout: float = CLOSE_TIMEOUT, path: str = "/"
) -> AsyncIterator[tuple[Channel, Channel]]:
    """A picows client channel and its server channel, neither started."""
    async with serving(max_message_size=max_message_size) as served:
        client, _ = await within(
            connect(
                served.url(path), max_message_size=max_message_size, close_timeout=close_timeout
            )
        )
        try:
            server = await within(served.channels.get())
            yield client, server
        finally:
            client.abort()
            await within(client.wait_closed())


class RawPeer(WSListener):
    """A plain picows client: sends what the test writes, records what comes back."""

    def __init__(self) -> None:
        self.messages: list[tuple[WSMsgType, bytes]] = []
        self.close: tuple[int, bytes] | None = None
        self.disconnected = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            self.close = (frame.get_close_code().value, frame.get_payload_as_bytes())
            transport.send_close(frame.get_close_code())  # answer, so nobody waits
            transport.disconnect()
        else:
            self.messages.append((frame.msg_type, frame.get_payload_as_bytes()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected.set()


async def raw_peer(url: str) -> tuple[WSTransport, RawPeer]:
    transport, listener = await within(picows.ws_connect(RawPeer, url))
    assert isinstance(listener, RawPeer)
    return transport, listener


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


# -- messages ----------------------------------------------------------------------


async def test_echo_both_directions() -> None:
    async with pair() as (client, server):
        Sink(server, echo=True)
        client_sink = Sink(client)
        client.send(b"\x00binary\xff")
        client.send("text, é ✓")
        client.send(b"")
        client.send("")
        assert await client_sink.wait_messages(4) == [b"\x00binary\xff", "text, é ✓", b"", ""]
        big = bytes(range(256)) * 1000  # several TCP segments, the 64-bit length form
        server.send(big)
        server.send("from the server")
        messages = await client_sink.wait_messages(6)
        assert messages[4:] == [big, "from the server"]
        assert type(messages[0]) is bytes and type(messages[1]) is str


async def test_large_binary_messages_come_as_a_view_valid_during_the_callback() -> None:
    # Over 16 KiB, a binary message is handed over as a view of picows'
    # buffer, not copied first (base.Channel.start() documents it); held
    # messages are kept, so they are bytes.
    seen: list[tuple[type, bytes | str]] = []

    def record(message: bytes | str | memoryview) -> None:
        seen.append((type(message), bytes(message) if type(message) is memoryview else message))

    large, small = os.urandom(16 * 1024 + 1), os.urandom(16 * 1024)
    async with pair() as (client, server):
        client.send(large)  # before start(): held
        await within(client.ping())
        done = asyncio.Event()
        server.start(record, done.set)
        client.send(large)
        client.send(small)
        client.send("text")
        await within(client.ping())
        assert seen == [(bytes, large), (memoryview, large), (bytes, small), (str, "text")]


async def test_messages_before_start_are_held_in_order() -> None:
    async with pair() as (client, server):
        for n in range(3):
            server.send(f"s{n}")
            client.send(b"c%d" % n)
        # Each pong comes back after the messages sent before its ping.
        await within(client.ping())
        await within(server.ping())
        client_sink = Sink(client)  # start() delivers the held messages, synchronously
        server_sink = Sink(server)
        assert client_sink.messages == ["s0", "s1", "s2"]
        assert server_sink.messages == [b"c0", b"c1", b"c2"]
        server.send("live")
        assert (await client_sink.wait_messages(4))[3] == "live"


async def test_start_after_the_connection_is_gone() -> None:
    async with pair() as (client, server):
        server.send(b"one")
        server.send(b"two")
        await within(server.close(4001, "done"))
        await within(client.wait_closed())
        sink = Sink(client)
        # Held messages first, then on_lost, all within start().
        assert sink.messages == [b"one", b"two"]
        assert sink.lost == 1
        assert client.close_frames.received == (4001, "done")
        sink.start()  # again: whoever starts it now hears of the loss too
        assert sink.lost == 2


async def test_fragments_are_joined() -> None:
    async with serving() as served, ws_connect(served.url(), proxy=None) as ws:
        sink = Sink(await within(served.channels.get()))
        await ws.send(iter([b"ab", b"", b"cd"]))
        await ws.send(iter(["hé", "llo"]))
        assert await sink.wait_messages(2) == [b"abcd", "héllo"]
    async with serving() as served:
        transport, _ = await raw_peer(served.url())
        sink = Sink(await within(served.channels.get()))
        # A character split across fragments, and a ping between fragments.
        transport.send(WSMsgType.TEXT, b"caf\xc3", fin=False)
        transport.send_ping(b"between")
        transport.send(WSMsgType.CONTINUATION, b"\xa9", fin=True)
        assert await sink.wait_messages(1) == ["café"]
        transport.disconnect()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([(WSMsgType.CONTINUATION, b"x", True, False)], 1002, id="continuation"),
        pytest.param(
            [(WSMsgType.BINARY, b"a", False, False), (WSMsgType.TEXT, b"b", True, False)],
            1002,
            id="new-message-inside-one",
        ),
        pytest.param([(WSMsgType.BINARY, b"a", True, True)], 1002, id="reserved-bit"),
        pytest.param([(WSMsgType.TEXT, b"\xff\xfe", True, False)], 1007, id="bad-utf8"),
        pytest.param(
            [
                (WSMsgType.TEXT, b"ok\xc3", False, False),
                (WSMsgType.CONTINUATION, b"(", True, False),
            ],
            1007,
            id="bad-utf8-fragmented",
        ),
        pytest.param(
            [
                (WSMsgType.BINARY, bytes(600), False, False),
                (WSMsgType.CONTINUATION, bytes(600), False, False),
                (WSMsgType.CONTINUATION, b"", True, False),
            ],
            1009,
            id="too-big-fragmented",
        ),
        pytest.param([(WSMsgType.BINARY, bytes(1001), True, False)], 1009, id="too-big-frame"),
    ],
)
async def test_bad_input_closes_the_connection(
    frames: list[tuple[WSMsgType, bytes, bool, bool]], code: int
) -> None:
    async with serving(max_message_size=1000) as served:
        transport, peer = await raw_peer(served.url())
        server = await within(served.channels.get())
        sink = Sink(server)
        for msg_type, payload, fin, rsv1 in frames:
            transport.send(msg_type, payload, fin=fin, rsv1=rsv1)
        await within(peer.disconnected.wait())
        await sink.wait_lost()
        assert peer.close is not None and peer.close[0] == code
        assert server.close_frames.sent is not None and server.close_frames.sent[0] == code
        assert not server.close_frames.peer_first
        assert sink.messages == [] and sink.close_frames == []


async def test_message_too_big_between_channels() -> None:
    async with pair(max_message_size=1000) as (client, server):
        client_sink, server_sink = Sink(client), Sink(server)
        client.send(bytes(1000))  # the limit itself is fine
        await server_sink.wait_messages(1)
        client.send(bytes(1001))
        await client_sink.wait_lost()
        await server_sink.wait_lost()
        received = client.close_frames.received
        assert received is not None and received[0] == 1009
        assert client_sink.close_frames == [received]
        assert len(server_sink.messages) == 1


async def test_frame_too_big_for_the_client() -> None:
    # picows itself stops the frame, on the client side, where it keeps the
    # error for wait_disconnected(): nobody may leave it unretrieved.
    async with serving() as served:
        client, _ = await within(
            connect(served.url(), max_message_size=1000, close_timeout=CLOSE_TIMEOUT)
        )
        client_sink = Sink(client)
        server_sink = Sink(await within(served.channels.get()))
        served.seen[0].send(bytes(1001))
        await client_sink.wait_lost()
        await server_sink.wait_lost()
        sent = client.close_frames.sent
        assert sent is not None and sent[0] == 1009
        with pytest.raises(ChannelClosed) as caught:
            client.send(b"late")
        assert caught.value.code == 1009
        del client
        gc.collect()


# -- ping --------------------------------------------------------------------------


async def test_ping_pong() -> None:
    async with pair() as (client, server):
        Sink(client)
        Sink(server)
        await within(client.ping())
        await within(server.ping())
        pings = [client.ping() for _ in range(5)]
        await within(asyncio.gather(*pings))


async def test_ping_fails_when_the_connection_goes() -> None:
    async with pair() as (client, server):
        Sink(client)
        Sink(server)
        server.pause_reading()  # the ping stays unread: no pong
        pong = client.ping()
        forgotten = client.ping()  # nobody awaits this one: asyncio must not complain
        client.abort()
        with pytest.raises(ChannelClosed) as caught:
            await within(pong)
        assert caught.value.code == 1006
        del forgotten
        gc.collect()
        with pytest.raises(ChannelClosed):
            client.ping()


# -- closing -----------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_close_handshake(closer: str) -> None:
    async with pair() as (client, server):
        sinks = {"client": Sink(client), "server": Sink(server)}
        channels = {"client": client, "server": server}
        other = "server" if closer == "client" else "client"
        await within(channels[closer].close(4000, "bye"))
        assert channels[closer].is_closing
        await sinks[other].wait_lost()
        assert channels[closer].close_frames == CloseFrames((4000, "bye"), (4000, "bye"), False)
        assert channels[other].close_frames == CloseFrames((4000, "bye"), (4000, "bye"), True)
        assert sinks[other].close_frames == [(4000, "bye")]
        assert sinks[closer].close_frames == []
        for name in ("client", "server"):
            assert sinks[name].lost == 1
            with pytest.raises(ChannelClosed) as caught:
                channels[name].send(b"late")
            assert (caught.value.code, caught.value.reason) == (4000, "bye")


async def test_close_is_idempotent_and_concurrent() -> None:
    async with pair() as (client, server):
        sink = Sink(client)
        Sink(server)
        await within(asyncio.gather(client.close(1000, ""), client.close(1001, "second")))
        await within(client.close(1002, "third"))
        await within(client.wait_closed())
        assert client.close_frames == CloseFrames((1000, ""), (1000, ""), False)
        assert sink.lost == 1


async def test_close_while_reading_is_paused() -> None:
    async with pair() as (client, server):
        sink = Sink(client)
        Sink(server)
        client.pause_reading()
        server.send(b"unread")
        await within(client.close(1000, ""), CLOSE_TIMEOUT / UNIT / 2)  # no timeout
        assert client.close_frames == CloseFrames((1000, ""), (1000, ""), False)
        assert sink.messages == [] and sink.lost == 1


async def test_close_without_answer_times_out() -> None:
    async with pair(close_timeout=0.2 * UNIT) as (client, server):
        sink = Sink(client)
        Sink(server)
        server.pause_reading()  # our close frame stays unread
        started = time.monotonic()
        await within(client.close(1000, "are you there"))
        assert 0.15 * UNIT <= time.monotonic() - started < 4 * UNIT
        assert sink.lost == 1
        assert client.close_frames == CloseFrames(None, (1000, "are you there"), False)


async def test_peer_close_without_code_is_echoed_without_code() -> None:
    async with serving() as served:
        transport, peer = await raw_peer(served.url())
        server = await within(served.channels.get())
        sink = Sink(server)
        transport.send(WSMsgType.CLOSE, b"")
        await within(peer.disconnected.wait())
        await sink.wait_lost()
        assert peer.close == (0, b"")  # picows' "no code"; an empty payload on the wire
        assert server.close_frames == CloseFrames((1005, ""), (1005, ""), True)
        assert sink.close_frames == [(1005, "")]


async def test_abort() -> None:
    async with pair() as (client, server):
        client_sink, server_sink = Sink(client), Sink(server)
        client.abort()
        assert client.is_closing
        with pytest.raises(ChannelClosed):
            client.send(b"now")
        await client_sink.wait_lost()
        await server_sink.wait_lost()
        client.abort()  # again: nothing
        await within(client.close(1000, ""))  # gone already: returns
        for channel, sink in ((client, client_sink), (server, server_sink)):
            assert sink.lost == 1
            assert channel.close_frames == CloseFrames(None, None, False)
            with pytest.raises(ChannelClosed) as caught:
                channel.send(b"late")
            assert caught.value.code == 1006


# -- flow control ------------------------------------------------------------------


async def fill(channel: Channel) -> int:
    """Send 64 KiB messages until the channel's writing pauses; return how many."""
    chunk = bytes(64 * 1024)
    for sent in range(1, 4000):  # 256 MB: far above any socket buffer
        channel.send(chunk)
        if channel.writing_paused:
            return sent
    raise AssertionError("writing never paused")


async def test_drain_waits_for_a_peer_that_stops_reading() -> None:
    async with pair() as (client, server):
        Sink(client)
        server_sink = Sink(server)
        server.pause_reading()
        server.pause_reading()  # idempotent
        sent = await fill(client)
        drained = asyncio.ensure_future(client.drain())
        done, _ = await asyncio.wait({drained}, timeout=0.1 * UNIT)
        assert not done, "drain() returned while the peer did not read"
        server.resume_reading()
        server.resume_reading()
        await within(drained)
        assert not client.writing_paused
        await within(client.drain())  # not paused: at once
        await server_sink.wait_messages(sent)


async def test_drain_returns_when_the_connection_goes() -> None:
    async with pair() as (client, server):
        Sink(client)
        Sink(server)
        server.pause_reading()
        await fill(client)
        drained = asyncio.ensure_future(client.drain())
        client.abort()
        await within(drained)
        assert not client.writing_paused


# -- the server --------------------------------------------------------------------


async def test_request_details() -> None:
    async with serving() as served:
        client, response_headers = await within(
            connect(
                served.url("/some/path?q=1&r=%20"),
                additional_headers=[("X-One", "1"), ("X-Two", "2")],
                max_message_size=MAX,
                close_timeout=CLOSE_TIMEOUT,
            )
        )
        server = await within(served.channels.get())
        assert server.remote_ip == "127.0.0.1"
        assert server.request_path == "/some/path?q=1&r=%20"
        headers = list(server.request_headers)
        assert headers.index(("X-One", "1")) + 1 == headers.index(("X-Two", "2"))
        assert ("Upgrade", "websocket") in headers
        assert client.request_path == "/some/path?q=1&r=%20"
        assert client.remote_ip == "127.0.0.1"
        assert {name.lower(): value for name, value in response_headers}["upgrade"] == "websocket"
        client.abort()


@pytest.mark.parametrize("outcome", ["return", "raise"])
async def test_handler_end_closes_the_channel(
    outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(channel: Channel) -> None:
        if outcome == "raise":
            raise RuntimeError("handler failed")

    async with serving(handler) as served:
        client, _ = await within(
            connect(served.url(), max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        )
        sink = Sink(client)
        await sink.wait_lost()
        code = 1000 if outcome == "return" else 1011
        # Likely before start(), hence no on_close_frame: close_frames tells.
        assert client.close_frames == CloseFrames((code, ""), (code, ""), True)
    failures = [r for r in caplog.records if r.name == "wsrpc" and r.levelno >= logging.ERROR]
    assert len(failures) == (outcome == "raise")


async def test_origins() -> None:
    async with serving(origins=["https://good.example", None]) as served:
        async with ws_connect(served.url(), origin=Origin("https://good.example"), proxy=None):
            await within(served.channels.get())
        async with ws_connect(served.url(), proxy=None):
            await within(served.channels.get())
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(served.url(), origin=Origin("https://evil.example"), proxy=None):
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(ValueError, match="403"):
            await connect(
                served.url(),
                additional_headers=[("Origin", "https://evil.example")],
                max_message_size=MAX,
                close_timeout=CLOSE_TIMEOUT,
            )
        assert served.calls == 2
    async with serving(origins=["https://good.example"]) as served:
        with pytest.raises(ValueError, match="403"):
            await connect(served.url(), max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        assert served.calls == 0


async def test_stop_accepting_and_wait_closed() -> None:
    async with serving() as served:
        client, _ = await within(
            connect(served.url(), max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        )
        server = await within(served.channels.get())
        client_sink = Sink(client)
        Sink(server, echo=True)
        served.listener.stop_accepting()
        with pytest.raises(OSError):
            await connect(served.url(), max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        client.send("still open")  # open connections go on
        assert await client_sink.wait_messages(1) == ["still open"]
        closed = asyncio.ensure_future(served.listener.wait_closed())
        done, _ = await asyncio.wait({closed}, timeout=0.1 * UNIT)
        assert not done, "wait_closed() returned with a handler still running"
        served.release.set()  # the handler returns: its channel closes with 1000
        await within(closed)
        await client_sink.wait_lost()
        assert client.close_frames.received == (1000, "")


# -- the client --------------------------------------------------------------------


async def test_connect_errors() -> None:
    options: dict[str, Any] = {"max_message_size": MAX, "close_timeout": CLOSE_TIMEOUT}
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
    with pytest.raises(OSError):
        await within(connect(f"ws://127.0.0.1:{free_port}/", **options))
    for bad_url in ("http://127.0.0.1/", "ws:///nohost", "ws://127.0.0.1:99999/", "nonsense"):
        with pytest.raises(ValueError):
            await within(connect(bad_url, **options))

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    for handler, error, match in (
        (plain_http, ValueError, "HTTP 200"),
        (hang_up, OSError, "closed during the upgrade"),
    ):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(error, match=match):
                await within(connect(f"ws://127.0.0.1:{port}/", **options))
        finally:
            server.close()
            await server.wait_closed()


async def test_cancelled_connect_drops_the_socket() -> None:
    request: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    answer = asyncio.Event()
    dropped = asyncio.Event()

    async def late_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request.set_result(await reader.readuntil(b"\r\n\r\n"))
        await answer.wait()
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.result().split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        try:
            await reader.read()  # until the client drops the socket
        except ConnectionError:
            pass
        dropped.set()
        writer.close()

    server = await asyncio.start_server(late_upgrade, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connecting = asyncio.ensure_future(
            connect(f"ws://127.0.0.1:{port}/", max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        )
        await within(request)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        answer.set()  # the upgrade completes after all: the client must hang up
        await within(dropped.wait())
    finally:
        server.close()
        await server.wait_closed()


# -- interoperability with websockets ---------------------------------------------------


@pytest.mark.parametrize("closer", ["websockets", "picows"])
async def test_websockets_client_against_picows_listener(closer: str) -> None:
    async with serving() as served, ws_connect(served.url(), proxy=None) as ws:
        # websockets offered permessage-deflate; picows negotiates no extension.
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        server = await within(served.channels.get())
        sink = Sink(server, echo=True)
        await ws.send(b"binary")
        await ws.send("text é")
        assert await within(ws.recv()) == b"binary"
        assert await within(ws.recv()) == "text é"
        await within(server.ping())  # websockets answers
        pong = await ws.ping(b"abc")
        await within(pong)
        if closer == "websockets":
            await within(ws.close(4002, "from websockets"))
            await sink.wait_lost()
            assert sink.close_frames == [(4002, "from websockets")]
            assert server.close_frames == CloseFrames(
                (4002, "from websockets"), (4002, "from websockets"), True
            )
        else:
            await within(server.close(4003, "from picows"))
            with pytest.raises(ConnectionClosed):
                await within(ws.recv())
            assert sink.close_frames == []
            assert server.close_frames == CloseFrames(
                (4003, "from picows"), (4003, "from picows"), False
            )
        assert ws.close_code == (4002 if closer == "websockets" else 4003)


@pytest.mark.parametrize("closer", ["websockets", "picows"])
async def test_picows_client_against_websockets_server(closer: str) -> None:
    server_closed: asyncio.Future[tuple[int | None, str | None]] = (
        asyncio.get_running_loop().create_future()
    )

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if message == "fragments, please":
                    await ws.send(iter([b"frag", b"men", b"ted"]))
                    await ws.send(iter(["tex", "té"]))
                elif message == "close, please":
                    await ws.close(4004, "from websockets")
                else:
                    await ws.send(message)
        finally:
            server_closed.set_result((ws.close_code, ws.close_reason))

    async with ws_serve(handler, "127.0.0.1", 0, ping_interval=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        client, _ = await within(
            connect(f"ws://127.0.0.1:{port}/", max_message_size=MAX, close_timeout=CLOSE_TIMEOUT)
        )
        try:
            sink = Sink(client)
            client.send(b"binary")
            client.send("text é")
            client.send("fragments, please")
            assert await sink.wait_messages(4) == [b"binary", "text é", b"fragmented", "texté"]
            await within(client.ping())
            if closer == "picows":
                await within(client.close(4005, "from picows"))
                assert await within(server_closed) == (4005, "from picows")
                assert client.close_frames == CloseFrames(
                    (4005, "from picows"), (4005, "from picows"), False
                )
                assert sink.close_frames == []
            else:
                client.send("close, please")
                await sink.wait_lost()
                assert await within(server_closed) == (4004, "from websockets")
                assert client.close_frames == CloseFrames(
                    (4004, "from websockets"), (4004, "from websockets"), True
                )
                assert sink.close_frames == [(4004, "from websockets")]
            assert sink.lost == 1
        finally:
            client.abort()
            await within(client.wait_closed())


# -- uvloop ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        test_echo_both_directions,
        test_messages_before_start_are_held_in_order,
        test_fragments_are_joined,
        partial(test_close_handshake, "client"),
        partial(test_close_handshake, "server"),
        test_abort,
        test_ping_fails_when_the_connection_goes,
        test_drain_waits_for_a_peer_that_stops_reading,
        test_stop_accepting_and_wait_closed,
        test_cancelled_connect_drops_the_socket,
        partial(test_websockets_client_against_picows_listener, "picows"),
        partial(test_picows_client_against_websockets_server, "websockets"),
    ],
    ids=lambda scenario: (
        getattr(scenario, "__name__", None) or f"{scenario.func.__name__}-{scenario.args[0]}"
    ),
)
def test_on_uvloop(
    scenario: Callable[[], Coroutine[Any, Any, None]], caplog: pytest.LogCaptureFixture
) -> None:
    uvloop = pytest.importorskip("uvloop")
    caplog.set_level(logging.ERROR, logger="asyncio")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
    gc.collect()
    errors = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not errors


async def test_no_write_once_the_socket_is_closing() -> None:
    # The socket can start closing under picows (a write failed) before
    # picows reports the disconnection: sends must stop there, not pile up
    # on a dead socket (aiofastnet would warn once per write).
    async with pair() as (client, server):
        Sink(client)
        Sink(server)
        assert isinstance(server, PicowsChannel)
        server._transport.underlying_transport.close()
        assert server.is_closing
        for _ in range(10):
            with pytest.raises(ChannelClosed):
                server.send(b"late")
        await within(server.wait_closed())
