"""
The default transport: :class:`~wsrpc._transports.base.Channel` on `websockets`.

websockets parses frames in its protocol callback and queues messages for
``recv()``. wsrpc hooks in one step earlier: the connection classes below
hand every data frame to their :class:`WebsocketsChannel`, which joins
fragments and calls wsrpc back right there, so no reader task waits on a
queue and a message costs no task wake-up of its own. Control frames (ping,
pong, close) and the opening handshake stay websockets' business.

websockets still enforces its frame-level limits: ``max_size`` over whole
messages (fragments included), UTF-8 in close reasons, and runs the closing
handshake. Its time limits are wsrpc's, so that none waits on a peer that
stopped reading (websockets' ``close()`` drains the write buffer before its
close timeout starts):

* every close ends within ``close_timeout`` of its start (our close frame,
  the peer's, a protocol error websockets caught, an EOF): the transport is
  aborted then;
* while our write buffer is over its high-water mark (``write_limit``,
  32 KiB) the peer's pings get no pong each: the latest one is answered
  when the buffer drains (RFC 6455 5.5.3 allows this), so pongs never pile
  up; a peer that keeps the buffer over the mark for ``stall_timeout`` is
  aborted, its close code :data:`~wsrpc._transports.base.STALL_CODE`;
* while reading is paused, the socket is checked every
  :data:`~wsrpc._transports.base.LOSS_POLL_INTERVAL` seconds, so that a reset is
  noticed though nothing reads it.

Layer: the transports (docs/architecture.md). Imports the core and
:mod:`wsrpc._transports.base`; nothing of the connections above.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Origin

from .._options import Options
from ..http import HeadersView, HttpHandler, HttpRequest, HttpResponse, Upgrade
from .assembly import Assembler, AssemblyError
from .base import (
    LOSS_POLL_INTERVAL,
    STALL_CODE,
    STALL_REASON,
    TLS_CLOSED,
    CallbackChannel,
    Channel,
    ChannelClosed,
    CloseFrameCallback,
    CloseFrames,
    Listener,
    LostCallback,
    MessageCallback,
    socket_gone,
)

__all__ = ["WebsocketsChannel", "connect", "listen"]

_TEXT, _BINARY, _CONT, _CLOSE = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE
_send_frame = Protocol.send_frame
"""websockets' own send_frame, without the override of :class:`_HoldsPongs`."""
_PONG = Opcode.PONG
_OPEN, _CLOSING, _CLOSED = State.OPEN, State.CLOSING, State.CLOSED
_READ_SIZE = 64 * 1024

_logger = logging.getLogger("wsrpc")


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


class WebsocketsChannel(CallbackChannel):
    """A :class:`Channel` over one websockets connection."""

    __slots__ = (
        "_abort_timer",
        "_assembler",
        "_closing",
        "_closing_soon",
        "_closing_task",
        "_flushing_pong",
        "_gone",
        "_held",
        "_held_size",
        "_loss_timer",
        "_on_close_frame",
        "_on_lost",
        "_on_message",
        "_pending_pong",
        "_ping_task",
        "_reading_paused",
        "_stall_timeout",
        "_stall_timer",
        "_transport_paused",
        "ws",
    )

    def __init__(
        self, ws: Connection, max_message_size: int, stall_timeout: float | None = None
    ) -> None:
        self.ws = ws
        self._stall_timeout = stall_timeout
        self._stall_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._loss_timer: asyncio.TimerHandle | None = None
        self._pending_pong: bytes | None = None  # the latest ping's, until flushed
        self._flushing_pong = False
        self._transport_paused = False  # the owner's pause, as applied to the transport
        self._on_message: MessageCallback | None = None
        self._on_lost: LostCallback | None = None
        self._on_close_frame: CloseFrameCallback | None = None
        # Messages not delivered yet: those that arrived before start(), and
        # those read while reading is paused (see pause_reading()).
        self._held: deque[bytes | str] | None = None
        self._held_size = 0
        self._assembler = Assembler(max_message_size, check_sequence=False, check_reserved=False)
        self._gone = False
        self._reading_paused = False
        self._ping_task: asyncio.Task[None] | None = None
        self._closing_task: asyncio.Task[None] | None = None
        self._closing_soon = False
        self._closing = False  # the closing handshake began (or an EOF came)

    # -- receiving ------------------------------------------------------------

    def _data_frame(self, frame: Frame) -> None:
        """A data frame arrived (from the connection's protocol callback)."""
        if self.ws.protocol.state is not _OPEN or self._closing_soon:
            return  # closing: nobody can answer it any more
        message: bytes | str | None
        assembler = self._assembler
        if frame.opcode is _BINARY and frame.fin and not assembler.in_message:
            # Nearly every wsrpc message: one whole binary frame (websockets
            # checked the sequence, the reserved bits and the size). The
            # assembler would return it as it is.
            message = bytes(frame.data)  # no copy when it is bytes already
        else:
            try:
                message = assembler.frame(frame.opcode, frame.fin, bytes(frame.data))
            except AssemblyError as exc:
                self._close_soon(exc.code, exc.reason)
                return
            if message is None:
                return  # a fragment of a message under way
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
        self._closing_started()
        protocol = self.ws.protocol
        close = protocol.close_rcvd
        # Only a close the peer started: not its answer to the one we sent.
        if self._on_close_frame is not None and close is not None:
            if protocol.close_rcvd_then_sent:
                self._on_close_frame(close.code, close.reason)

    def _connection_lost(self) -> None:
        self._gone = True
        self._pending_pong = None
        for timer in (self._abort_timer, self._stall_timer, self._loss_timer):
            if timer is not None:
                timer.cancel()
        self._abort_timer = self._stall_timer = self._loss_timer = None
        on_lost = self._on_lost
        self._drop_callbacks()
        if on_lost is not None:
            on_lost()

    def pause_reading(self) -> None:
        # Takes effect at once, on the next message: those the read under
        # way still holds wait in _held.
        if not self._reading_paused:
            self._reading_paused = True
            self._apply_reading()

    def resume_reading(self) -> None:
        # The messages held while paused go first; if one of them pauses
        # reading again, the rest wait for the next resume_reading().
        if self._reading_paused:
            self._reading_paused = False
            self._deliver_held()
            if not self._reading_paused:
                self._apply_reading()

    def _apply_reading(self) -> None:
        # The owner's pause holds while the connection is open; once closing,
        # only the peer's close frame is left to read (data frames are dropped).
        paused = (
            self._reading_paused
            and not self._closing
            and self.ws.protocol.state is _OPEN
            and not self._gone
        )
        if paused is self._transport_paused:
            return
        self._transport_paused = paused
        transport = self.ws.transport
        if paused:
            transport.pause_reading()
            self._loss_timer = self.ws.loop.call_later(LOSS_POLL_INTERVAL, self._check_lost)
        else:
            if not transport.is_closing():
                transport.resume_reading()
            if self._loss_timer is not None:
                self._loss_timer.cancel()
                self._loss_timer = None

    def _check_lost(self) -> None:
        """While reading is paused: has the peer reset or closed the connection?"""
        self._loss_timer = None
        transport = self.ws.transport
        if self._gone or not self._transport_paused:
            return
        if socket_gone(transport.get_extra_info("socket")):
            transport.abort()  # connection_lost reports it
            return
        self._loss_timer = self.ws.loop.call_later(LOSS_POLL_INTERVAL, self._check_lost)

    # -- the write bound -----------------------------------------------------------

    def _pong_held(self, frame: Frame) -> bool:
        """
        Whether to hold ``frame``, a pong websockets is about to queue.

        Every pong is held: only the latest ping of a read is answered, once
        the read is parsed (:meth:`_flush_pong`), and not while the write
        buffer is over its mark (RFC 6455 5.5.3 lets an endpoint answer only
        the most recent ping). So a read full of pings costs one pong, and a
        peer that does not read costs none.
        """
        if self._flushing_pong:
            return False  # the one we send
        if not self.ws.transport.is_closing():
            if self._pending_pong is None:
                # Once the read under way is parsed: the pings of one read
                # get one pong (and data_received needs no hook of ours).
                self.ws.loop.call_soon(self._flush_pong)
            self._pending_pong = bytes(frame.data)
        return True

    def _flush_pong(self) -> None:
        """Send the held pong, if the write buffer has room and the socket is there."""
        pong = self._pending_pong
        ws = self.ws
        if pong is None or ws.paused or ws.transport.is_closing():
            return
        self._pending_pong = None
        protocol = ws.protocol
        if protocol.state is not _OPEN and protocol.state is not _CLOSING:
            return
        self._flushing_pong = True
        try:
            protocol.send_pong(pong)
        finally:
            self._flushing_pong = False
        try:
            ws.send_data()
        except Exception:  # pragma: no cover - the transport reports it
            ws.transport.abort()

    def _writing_paused(self) -> None:
        # The write buffer went over its high-water mark.
        if self._stall_timeout is not None and self._stall_timer is None and not self._gone:
            self._stall_timer = self.ws.loop.call_later(self._stall_timeout, self._stalled)

    def _writing_resumed(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._flush_pong()

    def _stalled(self) -> None:
        """The peer kept the write buffer over its mark for ``stall_timeout``."""
        self._stall_timer = None
        ws = self.ws
        _logger.info(
            "closing connection: the peer read nothing for %s s (write buffer full)",
            self._stall_timeout,
        )
        if ws.protocol.state is _OPEN:
            # Recorded as ours (close_frames), never delivered: it would wait
            # behind what the peer does not read.
            ws.protocol.send_close(STALL_CODE, STALL_REASON)
        ws.transport.abort()

    def _closing_started(self) -> None:
        """The closing handshake began, either way, or the peer's EOF came: bound it."""
        self._closing = True
        if self._abort_timer is None and not self._gone:
            timeout = self.ws.close_timeout
            if timeout is not None:
                self._abort_timer = self.ws.loop.call_later(timeout, self.abort)
        self._apply_reading()

    # -- sending ----------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not _OPEN or ws.transport.is_closing():
            raise ChannelClosed(*self.close_frames.cause)
        # What websockets' send() does, minus its async context manager and
        # send_binary()'s checks (the state is checked above; wsrpc never
        # fragments): frame the message and write it out (flow control is
        # drain()'s). The base class's send_frame: data frames skip the
        # override that watches control frames (_HoldsPongs).
        if type(data) is str:
            _send_frame(protocol, Frame(_TEXT, data.encode()))
        else:
            _send_frame(protocol, Frame(_BINARY, cast(bytes, data)))
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
            raise ChannelClosed(*self.close_frames.cause)
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
                pong.set_exception(ChannelClosed(*self.close_frames.cause))
        else:
            if not pong.done():
                pong.set_result(None)

    def _close_soon(self, code: int, reason: str) -> None:
        # Frames already read still arrive before the close goes out: drop them.
        self._closing_soon = True
        self._closing_task = self.ws.loop.create_task(self.close(code, reason))

    # -- closing ------------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        # Not websockets' close(): it drains the write buffer before its close
        # timeout starts, so a peer that stops reading would hold it for ever.
        ws = self.ws
        if not self._gone:
            if ws.protocol.state is _OPEN and not ws.transport.is_closing():
                ws.protocol.send_close(code, reason)
                try:
                    ws.send_data()
                except Exception:  # the socket failed: nothing to wait for
                    ws.transport.abort()
            self._closing_started()
        await self.wait_closed()

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


class _HoldsPongs(Protocol):
    """
    A websockets protocol that shows its channel the control frames it sends.

    It lets the channel hold pongs (see ``_pong_held``) and start the close
    bound when a close frame goes out (ours, or websockets' own after a
    protocol error). Data frames do not come through here (see ``send()``).
    """

    channel: WebsocketsChannel

    def send_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _PONG:
            if not self.channel._pong_held(frame):
                super().send_frame(frame)
            return
        super().send_frame(frame)
        if opcode is _CLOSE:
            self.channel._closing_started()


class _ServerProtocol(_HoldsPongs, ServerProtocol):
    pass


class _ClientProtocol(_HoldsPongs, ClientProtocol):
    pass


class _Hooked(Connection):
    """The frame hooks, for either side: mixed in before the side's own class."""

    channel: WebsocketsChannel
    stall_timeout: float | None = None
    """Set on a subclass per server or client (see :func:`_connection_class`)."""
    max_message_size: int = 2**20
    """Likewise."""

    def __init__(self, protocol: Protocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.channel = WebsocketsChannel(self, self.max_message_size, self.stall_timeout)
        # websockets makes the protocol; make it hold pongs. Same layout, so
        # changing its class costs nothing per connection.
        if isinstance(protocol, ServerProtocol):
            protocol.__class__ = _ServerProtocol
        elif isinstance(protocol, ClientProtocol):
            protocol.__class__ = _ClientProtocol
        cast(_HoldsPongs, protocol).channel = self.channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _shrink_reads(transport)

    def eof_received(self) -> None:
        super().eof_received()
        self.channel._closing_started()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.channel._writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.channel._writing_resumed()

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


def _connection_class(
    base: type[_ServerConnection] | type[_ClientConnection], options: Options
) -> Any:
    """``base`` with its channels' settings (one class per server or client)."""
    settings = {
        "stall_timeout": options.stall_timeout,
        "max_message_size": options.max_message_size,
    }
    return type(base.__name__, (base,), settings)


# -- the server ------------------------------------------------------------------


class WebsocketsListener(Listener):
    """A websockets server, as wsrpc's server uses it."""

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        # websockets closes the listening sockets in a task of its own:
        # close them now, so that no connection is accepted after this.
        self._server.server.close()
        self._server.close(close_connections=False)

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


async def listen(
    host: str,
    port: int,
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    options: Options,
    origins: Sequence[str | None] | None,
    http_handler: HttpHandler | None,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> Listener:
    """
    Serve WebSocket on ``host``:``port``; ``on_channel`` runs once per connection.

    ``ssl`` and ``reuse_port`` go to ``loop.create_server()`` as they are.
    """

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
        create_connection=_connection_class(_ServerConnection, options),
        process_request=process_request if http_handler is not None else None,
        process_response=process_response if http_handler is not None else None,
        ssl=ssl,
        reuse_port=reuse_port or None,
        **_settings(options),
    )
    return WebsocketsListener(server)


def _settings(options: Options) -> dict[str, Any]:
    """wsrpc's options as websockets' ``serve()`` and ``connect()`` take them."""
    return {
        "max_size": options.max_message_size,
        # wsrpc runs its own keepalive once a connection is open.
        "ping_interval": None,
        "close_timeout": options.close_timeout,
        "compression": "deflate" if options.compression else None,
    }


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
    options: Options,
    ssl: _ssl.SSLContext | None = None,
) -> tuple[Channel, list[tuple[str, str]]]:
    """
    Open a WebSocket to ``url``; return its channel and the response headers.

    ``ssl``: the TLS context of a ``wss://`` URL (None for ``ws://``).

    Raises:
        OSError: the TCP (or TLS) connection failed.
        ValueError: a bad URL, or the server refused the upgrade.
    """
    try:
        ws = await ws_connect(
            url,
            open_timeout=None,
            additional_headers=list(additional_headers),
            create_connection=_connection_class(_ClientConnection, options),
            ssl=ssl,
            **_settings(options),
        )
    except WebSocketException as exc:
        if ssl is not None and isinstance(exc.__cause__, EOFError):
            # Closed before any HTTP response, the TLS handshake done: with
            # TLS 1.3, how a server refuses a client's certificate (asyncio
            # hands the client no alert, only the end of the stream).
            raise ConnectionError(TLS_CLOSED) from exc
        raise ValueError(str(exc)) from exc
    response = ws.response
    headers = list(response.headers.raw_items()) if response is not None else []
    return cast(_ClientConnection, ws).channel, headers
