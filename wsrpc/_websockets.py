"""
The default transport: :class:`~wsrpc._transport.Channel` on `websockets`.

websockets parses frames in its protocol callback and queues messages for
``recv()``. wsrpc hooks in one step earlier: the connection classes below
hand every data frame to their :class:`WebsocketsChannel`, which joins
fragments and calls wsrpc back right there, so no reader task waits on a
queue and a message costs no task wake-up of its own. Control frames (ping,
pong, close) and the opening handshake stay websockets' business.

websockets still enforces its frame-level limits: ``max_size`` over whole
messages (fragments included), UTF-8 in close reasons, the closing handshake
and its timeout.
"""

from __future__ import annotations

import asyncio
import http
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State
from websockets.typing import BytesLike, Origin

from ._transport import (
    MAX_FRAGMENTS,
    Channel,
    ChannelClosed,
    CloseFrameCallback,
    CloseFrames,
    Listener,
    LostCallback,
    MessageCallback,
)
from .http import HeadersView, HttpHandler, HttpRequest, HttpResponse, Upgrade
from .messages import CloseCode

__all__ = ["WebsocketsChannel", "connect", "listen"]

_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
_OPEN = State.OPEN
_READ_SIZE = 64 * 1024


def _shrink_reads(transport: asyncio.BaseTransport) -> None:
    # asyncio's selector transport reads with recv(256 KiB): a buffer above
    # glibc's initial 128 KiB mmap threshold, so unless something in the
    # process happened to raise that threshold, every read of a few bytes
    # maps, shrinks and unmaps fresh pages (a third of the server's time with
    # 1,000 busy clients). 64 KiB reads come from the heap and cost the same
    # per byte for large messages. Other transports (uvloop, SSL) read into
    # buffers of their own and have no such attribute.
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = _READ_SIZE  # type: ignore[attr-defined]


class WebsocketsChannel(Channel):
    """A :class:`Channel` over one websockets connection."""

    __slots__ = (
        "_closing_soon",
        "_closing_task",
        "_fragments",
        "_fragments_text",
        "_gone",
        "_held",
        "_held_size",
        "_on_close_frame",
        "_on_lost",
        "_on_message",
        "_ping_task",
        "_reading_paused",
        "ws",
    )

    def __init__(self, ws: Connection) -> None:
        self.ws = ws
        self._on_message: MessageCallback | None = None
        self._on_lost: LostCallback | None = None
        self._on_close_frame: CloseFrameCallback | None = None
        # Messages not delivered yet: those that arrived before start(), and
        # those read while reading is paused (see pause_reading()).
        self._held: deque[bytes | str] | None = None
        self._held_size = 0
        self._fragments: list[BytesLike] | None = None
        self._fragments_text = False
        self._gone = False
        self._reading_paused = False
        self._ping_task: asyncio.Task[None] | None = None
        self._closing_task: asyncio.Task[None] | None = None
        self._closing_soon = False

    # -- receiving ------------------------------------------------------------

    def start(
        self,
        on_message: MessageCallback,
        on_lost: LostCallback,
        on_close_frame: CloseFrameCallback | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_close_frame = on_close_frame
        self._deliver_held()
        if self._gone:
            on_lost()

    def _deliver_held(self) -> None:
        """Deliver held messages, in order, until none is left or reading pauses."""
        held = self._held
        while held and not self._reading_paused:
            on_message = self._on_message
            if on_message is None:
                return
            message = held.popleft()
            self._held_size -= len(message)
            on_message(message)
        if self._held is not None and not self._held:
            self._held = None
            self._held_size = 0

    def _data_frame(self, frame: Frame) -> None:
        """A data frame arrived (from the connection's protocol callback)."""
        if self.ws.protocol.state is not _OPEN or self._closing_soon:
            return  # closing: nobody can answer it any more
        opcode = frame.opcode
        data: BytesLike = frame.data
        if opcode is _CONT:
            # websockets checked the sequence: fragments are underway.
            assert self._fragments is not None
            self._fragments.append(data)
            if not frame.fin:
                if len(self._fragments) > MAX_FRAGMENTS:
                    # Each costs a frame header and a Python object for a
                    # few bytes of payload: websockets' own cap, and code.
                    self._fragments = None
                    self._close_soon(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return
            data = b"".join(self._fragments)
            self._fragments = None
            text = self._fragments_text
        elif not frame.fin:
            self._fragments = [data]
            self._fragments_text = opcode is _TEXT
            return
        else:
            text = opcode is _TEXT
        message: bytes | str
        if text:
            try:
                message = str(data, "utf-8")
            except UnicodeDecodeError:
                self._close_soon(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                return
        else:
            message = bytes(data)  # no copy when it is bytes already
        on_message = self._on_message
        if on_message is not None and not self._reading_paused and self._held is None:
            on_message(message)
            return
        # Not started, or paused: the transport stopped reading, but frames
        # of the read under way still arrive. Hold them, undecoded, until
        # start() or resume_reading(): what a paused channel holds is bounded
        # by one read.
        if self._held is None:
            self._held = deque()
        self._held.append(message)
        self._held_size += len(message)

    def _close_frame(self) -> None:
        """A close frame arrived and websockets processed it."""
        protocol = self.ws.protocol
        close = protocol.close_rcvd
        # Only a close the peer started: not its answer to the one we sent.
        if self._on_close_frame is not None and close is not None:
            if protocol.close_rcvd_then_sent:
                self._on_close_frame(close.code, close.reason)

    def _connection_lost(self) -> None:
        self._gone = True
        if self._on_lost is not None:
            self._on_lost()

    def pause_reading(self) -> None:
        # Takes effect at once, on the next message: those the read under
        # way still holds wait in _held.
        if not self._reading_paused:
            self._reading_paused = True
            self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        # The messages held while paused go first; if one of them pauses
        # reading again, the rest wait for the next resume_reading().
        if self._reading_paused:
            self._reading_paused = False
            self._deliver_held()
            if not self._reading_paused:
                self.ws.transport.resume_reading()

    # -- sending ----------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not _OPEN or ws.transport.is_closing():
            raise ChannelClosed(*self._why_closed())
        # What websockets' send() does, minus its async context manager:
        # frame the message and write it out (flow control is drain()'s).
        if type(data) is str:
            protocol.send_text(data.encode())
        else:
            protocol.send_binary(cast(bytes, data))
        ws.send_data()

    @property
    def writing_paused(self) -> bool:
        return self.ws.paused

    async def drain(self) -> None:
        if self.ws.paused:
            await self.ws.drain()

    def ping(self) -> asyncio.Future[None]:
        ws = self.ws
        if ws.protocol.state is not _OPEN:
            raise ChannelClosed(*self._why_closed())
        pong = ws.loop.create_future()
        task = ws.loop.create_task(self._ping(pong))
        self._ping_task = task  # one ping at a time: keep it referenced
        return pong

    async def _ping(self, pong: asyncio.Future[None]) -> None:
        try:
            waiter = await self.ws.ping()
            await waiter
        except ConnectionClosed:
            if not pong.done():
                pong.set_exception(ChannelClosed(*self._why_closed()))
        else:
            if not pong.done():
                pong.set_result(None)

    def _close_soon(self, code: int, reason: str) -> None:
        # Frames already read still arrive before the close goes out: drop them.
        self._closing_soon = True
        self._closing_task = self.ws.loop.create_task(self.close(code, reason))

    # -- closing ------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.ws.transport.abort()

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()

    @property
    def is_closing(self) -> bool:
        return self.ws.protocol.state is not _OPEN

    @property
    def close_frames(self) -> CloseFrames:
        protocol = self.ws.protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        return CloseFrames(
            (received.code, received.reason) if received is not None else None,
            (sent.code, sent.reason) if sent is not None else None,
            peer_first=received is not None and bool(protocol.close_rcvd_then_sent),
        )

    def _why_closed(self) -> tuple[int, str]:
        frames = self.close_frames
        frame = frames.received or frames.sent
        return frame if frame is not None else (CloseCode.ABNORMAL, "connection lost")

    # -- the opening request ----------------------------------------------------

    @property
    def remote_ip(self) -> str:
        address = self.ws.remote_address
        return str(address[0]) if address else ""

    @property
    def request_path(self) -> str:
        request = self.ws.request
        return request.path if request is not None else ""

    @property
    def request_headers(self) -> Sequence[tuple[str, str]]:
        request = self.ws.request
        return list(request.headers.raw_items()) if request is not None else []


class _Hooked(Connection):
    """The frame hooks, for either side: mixed in before the side's own class."""

    channel: WebsocketsChannel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _shrink_reads(transport)
        self.channel = WebsocketsChannel(self)

    def process_event(self, event: Event) -> None:
        # On every frame: keep the common case to a few identity tests.
        if type(event) is Frame:
            opcode = event.opcode
            if opcode is _BINARY or opcode is _TEXT or opcode is _CONT:
                self.channel._data_frame(event)
                return
            if opcode is _CLOSE:
                super().process_event(event)
                self.channel._close_frame()
                return
        super().process_event(event)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.channel._connection_lost()


class _ServerConnection(_Hooked, ServerConnection):
    upgrade_headers: Sequence[tuple[str, str]] = ()
    """Extra headers for the 101 response, set by the server's http_handler."""


class _ClientConnection(_Hooked, ClientConnection):
    pass


# -- the server ------------------------------------------------------------------


class WebsocketsListener(Listener):
    """A websockets server, as wsrpc's server uses it."""

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        self._server.close(close_connections=False)

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def listen(
    host: str,
    port: int,
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    options: dict[str, Any],
    origins: Sequence[str | None] | None,
    http_handler: HttpHandler | None,
) -> Listener:
    """Serve WebSocket on ``host``:``port``; ``on_channel`` runs once per connection."""

    async def handle(ws: ServerConnection) -> None:
        await on_channel(cast(_ServerConnection, ws).channel)

    async def process_request(ws: ServerConnection, request: Request) -> Response | None:
        assert http_handler is not None
        answer = http_handler(HttpRequest(request.path, HeadersView(request.headers.raw_items())))
        if inspect.isawaitable(answer):
            answer = await answer
        if isinstance(answer, Upgrade):
            cast(_ServerConnection, ws).upgrade_headers = answer.headers
            return None
        if isinstance(answer, HttpResponse):
            return _response(answer)
        return None

    def process_response(ws: ServerConnection, request: Request, response: Response) -> None:
        for name, value in cast(_ServerConnection, ws).upgrade_headers:
            response.headers[name] = value  # appends: several Set-Cookie are fine

    server = await serve(
        handle,
        host,
        port,
        origins=None if origins is None else [cast(Origin | None, o) for o in origins],
        create_connection=_ServerConnection,
        process_request=process_request if http_handler is not None else None,
        process_response=process_response if http_handler is not None else None,
        **options,
    )
    return WebsocketsListener(server)


def _response(answer: HttpResponse) -> Response:
    headers = Headers(answer.headers)
    body = answer.body
    if isinstance(body, str):
        body = body.encode()
        if "Content-Type" not in headers:
            headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Content-Length"] = str(len(body))
    try:
        phrase = http.HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    return Response(answer.status, phrase, headers, body)


# -- the client ----------------------------------------------------------------------


async def connect(
    url: str,
    *,
    additional_headers: Sequence[tuple[str, str]],
    options: dict[str, Any],
) -> tuple[Channel, list[tuple[str, str]]]:
    """
    Open a WebSocket to ``url``; return its channel and the response headers.

    Raises:
        OSError: the TCP (or TLS) connection failed.
        ValueError: a bad URL, or the server refused the upgrade.
    """
    try:
        ws = await ws_connect(
            url,
            open_timeout=None,
            additional_headers=list(additional_headers),
            create_connection=_ClientConnection,
            **options,
        )
    except WebSocketException as exc:
        raise ValueError(str(exc)) from exc
    response = ws.response
    headers = list(response.headers.raw_items()) if response is not None else []
    return cast(_ClientConnection, ws).channel, headers
