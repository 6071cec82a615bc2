"""
The fast transport: :class:`~wsrpc._transports.base.Channel` on `picows`.

picows parses frames in C and calls a :class:`picows.WSListener` once per
frame, with the payload still in its read buffer. :class:`PicowsChannel` is
that listener: it joins fragments, decodes text and calls wsrpc back right
there. picows works at the frame level only, so the message-level rules
websockets would enforce are enforced here:

* fragments: a continuation frame needs a message under way, and a new
  message cannot start inside one (else close 1002); no extension is ever
  negotiated, so a reserved bit set is a protocol error too;
* ``max_message_size``: picows' ``max_frame_size`` stops a single frame
  over it before its payload is read; fragments are summed here (1009);
* text must be valid UTF-8 (1007);
* the closing handshake: picows records close frames but answers none.
  A close the peer starts is answered at once (echoing its code and
  reason) and the socket is dropped; a close we start waits for the answer
  up to ``close_timeout``. Either way the socket is aborted if it is not
  gone ``close_timeout`` after our close frame, so a peer that stopped
  reading cannot stall the close. Data frames that arrive once closing has
  begun are dropped: nobody could answer them. For the same reason closing
  resumes reading, which wsrpc may have paused: the answer must get in.

Pings are answered here, not by picows (``enable_auto_pong`` is off): while
our write buffer is over its high-water mark (aiofastnet's, 64 KiB) only the
latest ping is answered, once the buffer drains (RFC 6455 5.5.3 allows
this), so pongs never pile up; a peer that keeps the buffer over the mark
for ``stall_timeout`` is aborted, its close code
:data:`~wsrpc._transports.base.STALL_CODE`. While reading is paused the socket
is checked every :data:`~wsrpc._transports.base.LOSS_POLL_INTERVAL` seconds, so
that a reset is noticed though nothing reads it. picows' own keepalive is
off, wsrpc runs one through :meth:`PicowsChannel.ping`. It implements no
extension, hence no compression. It detects wire-level errors (bad opcode,
unmasked client frame, frame over ``max_frame_size``...) itself: it sends a
close frame and disconnects, and logs the peer's error through
:class:`_PeerErrorsAtInfo`, at INFO (picows would log it at ERROR: any
peer could write to the error log at will).

The opening handshake is picows' own, bounded by :data:`HANDSHAKE_TIMEOUT`
on both sides. The client opens its TCP socket itself (see :func:`connect`)
so that a connect cancelled half-way can shut that socket down.

picows runs its sockets on aiofastnet's transports (a dependency of picows),
on uvloop as on asyncio's own loop.

Layer: the transports (docs/architecture.md). Imports the core and
:mod:`wsrpc._transports.base`; nothing of the connections above.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import socket
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSParsedURL,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

from .._options import Options
from ..messages import CloseCode
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

__all__ = ["HANDSHAKE_TIMEOUT", "PicowsChannel", "connect", "listen"]

HANDSHAKE_TIMEOUT = 10.0
"""Seconds for the HTTP upgrade, either side (websockets' default ``open_timeout``)."""

_TEXT, _BINARY = WSMsgType.TEXT, WSMsgType.BINARY
_PING_ID_SIZE = 8
"""Bytes of a ping's payload: its number, so that a pong tells which pings it answers."""
_CLOSE, _PING, _PONG = WSMsgType.CLOSE, WSMsgType.PING, WSMsgType.PONG
_NO_STATUS = 1005  # a close frame without a code: received only, never on the wire
# picows reads into a buffer of its own per connection, 16 KiB unless told,
# which it doubles whenever a read nearly fills it and never shrinks. Most
# connections only ever see an upgrade request and small RPC messages; those
# that get more grow theirs on the first large read. Starting from picows'
# smallest (2 KiB) saves some 14 KiB per connection, idle ones included, for
# no measurable cost in the benchmarks' throughput.
_READ_BUFFER_SIZE = 2048
# Binary messages over this many bytes are handed over as a memoryview of
# picows' buffer (see on_ws_frame), smaller ones as bytes: copying a few
# kilobytes costs less than the view object, and bytes are what the
# decoder's quickest path takes.
_VIEW_ABOVE = 16 * 1024

_logger = logging.getLogger("wsrpc")


class _PeerErrorsAtInfo(logging.LoggerAdapter):  # type: ignore[type-arg]
    """
    picows' logger for wsrpc's connections: the same ``picows.*`` logger,
    but a peer's protocol error (which picows logs at ERROR as "WS parser
    error: ...") is logged at INFO, as wsrpc logs every peer's violation.
    Errors of wsrpc's own callbacks stay at ERROR.

    Given to picows as a logger-like object, it also spares each connection
    the child ``Logger`` picows would make for it.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.WARNING and isinstance(msg, str) and msg.startswith("WS parser error"):
            level = logging.INFO
        super().log(level, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)


_SERVER_LOGGER = _PeerErrorsAtInfo(logging.getLogger("picows.server"), {})
_CLIENT_LOGGER = _PeerErrorsAtInfo(logging.getLogger("picows.client"), {})


class PicowsChannel(CallbackChannel, WSListener):
    """
    A :class:`Channel` over one picows connection; also its picows listener.

    One object per connection keeps the data path to a single Python call per
    frame. The ``on_ws_*``, ``pause_writing`` and ``resume_writing`` methods
    are picows' callbacks, not for wsrpc to call.
    """

    # Slots, not an instance __dict__: one channel per connection, and the
    # dict would cost more than the slots.
    __slots__ = (
        "_abort_timer",
        "_assembler",
        "_close_timeout",
        "_closing",
        "_direct",
        "_drain_waiters",
        "_gone",
        "_gone_waiters",
        "_held",
        "_held_size",
        "_loop",
        "_loss_timer",
        "_on_close_frame",
        "_on_connected",
        "_on_lost",
        "_on_message",
        "_peer_first",
        "_pending_pong",
        "_ping_id",
        "_pings",
        "_pong_scheduled",
        "_reading_paused",
        "_reaper",
        "_received",
        "_remote_ip",
        "_sent",
        "_socket",
        "_stall_timeout",
        "_stall_timer",
        "_transport",
        "writing_paused",
    )

    _transport: WSTransport  # set by on_ws_connected, before anyone sees the channel
    _socket: asyncio.Transport  # its underlying_transport: a property, read on every send
    writing_paused: bool  # a slot rather than a property: read after every send

    def __init__(
        self,
        *,
        max_message_size: int,
        close_timeout: float,
        stall_timeout: float | None = None,
        on_connected: Callable[[PicowsChannel], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._close_timeout = close_timeout
        self._stall_timeout = stall_timeout
        self._stall_timer: asyncio.TimerHandle | None = None
        self._pending_pong: bytes | None = None  # the latest ping's, until flushed
        self._pong_scheduled = False
        self._loss_timer: asyncio.TimerHandle | None = None
        self._on_connected = on_connected
        self._remote_ip = ""
        # receiving
        self._on_message: MessageCallback | None = None
        # _on_message while a whole binary frame may go straight to it: a
        # callback set, nothing held, no fragmented message under way, not
        # paused, not closing (see _route()). One slot read on every frame
        # instead of five.
        self._direct: MessageCallback | None = None
        self._on_lost: LostCallback | None = None
        self._on_close_frame: CloseFrameCallback | None = None
        # Messages not delivered yet: those that arrived before start(), and
        # those read while reading is paused (see pause_reading()).
        self._held: deque[bytes | str] | None = None
        self._held_size = 0
        self._assembler = Assembler(max_message_size)
        self._reading_paused = False
        # sending
        # Flags, and lists of waiters made only while someone waits, rather
        # than asyncio.Events: an Event costs some 850 bytes (760 of them its
        # deque), and a server holds these for every connection, idle ones
        # included. Each waiter has a future of its own, as in an Event: a
        # cancelled waiter cancels only its own.
        self.writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None  # see drain()
        # Pings awaiting their pong; made by ping() and dropped once empty,
        # for the same reason (a deque is some 760 bytes).
        self._pings: deque[tuple[int, asyncio.Future[None]]] | None = None
        self._ping_id = 0  # the number of the last ping sent, its payload
        # closing
        self._closing = False  # a close frame went either way, or abort()
        self._sent: tuple[int, str] | None = None
        self._received: tuple[int, str] | None = None
        self._peer_first = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._gone = False  # the connection is gone (on_ws_disconnected ran)
        self._gone_waiters: list[asyncio.Future[None]] | None = None  # see wait_closed()
        self._reaper: asyncio.Future[None] | None = None  # client side: see connect()

    # -- picows' callbacks ------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._socket = transport.underlying_transport
        peer = self._socket.get_extra_info("peername")
        if peer:
            self._remote_ip = str(peer[0])
        if self._on_connected is not None:
            self._on_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _BINARY:
            on_message = self._direct
            if (
                on_message is not None
                and frame.fin
                and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
                and not transport.is_close_frame_sent
            ):
                # Nearly every wsrpc message: one whole binary frame, within
                # max_frame_size (picows' bound, which is max_message_size),
                # while nothing is held. Nothing to assemble or to decode (the
                # assembler would return it as it is): straight to wsrpc. A
                # large one goes as a view of picows' buffer (see start()):
                # copying it to bytes first cost a second copy of every
                # large message, as long as the one decoding makes.
                if frame.payload_size > _VIEW_ABOVE:
                    on_message(frame.get_payload_as_memoryview())
                else:
                    on_message(frame.get_payload_as_bytes())
                return
        if msg_type is _CLOSE:
            self._close_frame(frame)
        elif msg_type is _PONG:
            # A pong answers its ping and every ping sent before it: a peer
            # may answer only the latest of several (RFC 6455 5.5.3, as
            # wsrpc itself does). Pings carry their number; a pong whose
            # payload is not one of ours (unsolicited) answers nothing.
            pings = self._pings
            payload = frame.get_payload_as_bytes()
            if pings and len(payload) == _PING_ID_SIZE:
                answered = int.from_bytes(payload, "big")
                while pings and pings[0][0] <= answered:
                    _, waiter = pings.popleft()
                    if not waiter.done():  # a caller may have cancelled it
                        waiter.set_result(None)
            if not pings:
                self._pings = None  # keepalive pings every connection: free it between pings
        elif msg_type is _PING:
            if self._closing or transport.is_close_frame_sent:
                return
            # Only the latest ping of a read is answered, once the read is
            # parsed, and not while the write buffer is over its mark (RFC
            # 6455 5.5.3): a read full of pings costs one pong.
            self._pending_pong = frame.get_payload_as_bytes()
            if not self._pong_scheduled:
                self._pong_scheduled = True
                self._loop.call_soon(self._flush_pong)
        elif not (self._closing or transport.is_close_frame_sent):
            self._data_frame(frame, msg_type)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closing = True
        self._assembler.reset()
        self._direct = None
        self.writing_paused = False
        self._pending_pong = None
        _wake(self._drain_waiters)
        self._drain_waiters = None
        for timer in (self._abort_timer, self._stall_timer, self._loss_timer):
            if timer is not None:
                timer.cancel()
        self._abort_timer = self._stall_timer = self._loss_timer = None
        pings, self._pings = self._pings, None
        if pings:
            error = self._closed_error()
            for _, waiter in pings:
                if not waiter.done():
                    waiter.set_exception(error)
                    # Mark it retrieved: a ping whose caller moved on must not
                    # make asyncio log "exception never retrieved". Awaiting
                    # it still raises.
                    waiter.exception()
        self._gone = True
        _wake(self._gone_waiters)
        self._gone_waiters = None
        on_lost = self._on_lost
        self._drop_callbacks()
        if on_lost is not None:
            on_lost()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self._stall_timeout is not None and self._stall_timer is None and not self._gone:
            self._stall_timer = self._loop.call_later(self._stall_timeout, self._stalled)

    def _flush_pong(self) -> None:
        """Send the held pong, if the write buffer has room and the socket is there."""
        self._pong_scheduled = False
        pong = self._pending_pong
        if pong is None or self.writing_paused:
            return
        self._pending_pong = None
        transport = self._transport
        if not (self._gone or self._closing or transport.is_close_frame_sent):
            if not self._socket.is_closing():
                transport.send_pong(pong)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._flush_pong()
        _wake(self._drain_waiters)
        self._drain_waiters = None

    def _stalled(self) -> None:
        """The peer kept the write buffer over its mark for ``stall_timeout``."""
        self._stall_timer = None
        _logger.info(
            "closing connection: the peer read nothing for %s s (write buffer full)",
            self._stall_timeout,
        )
        if self._sent is None and not self._transport.is_close_frame_sent:
            # Recorded as ours (close_frames), never sent: it would wait
            # behind what the peer does not read.
            self._sent = (STALL_CODE, STALL_REASON)
        self.abort()

    # -- receiving --------------------------------------------------------------

    def _data_frame(self, frame: WSFrame, msg_type: WSMsgType) -> None:
        message: bytes | str | None
        assembler = self._assembler
        if (
            msg_type is _BINARY
            and frame.fin
            and not assembler.in_message
            and not (frame.rsv1 or frame.rsv2 or frame.rsv3)
        ):
            # Nearly every wsrpc message: one whole binary frame, within
            # max_frame_size (picows' bound, which is max_message_size).
            # Nothing to assemble or to decode: the assembler would return it
            # as it is.
            message = frame.get_payload_as_bytes()
        else:
            try:
                # picows checks neither the fragment sequence nor the reserved
                # bits, and bounds frames, not messages: the assembler does it all.
                message = assembler.frame(
                    msg_type,  # an IntEnum: compares as the int opcode as it is
                    frame.fin,
                    frame.get_payload_as_bytes(),
                    reserved=bool(frame.rsv1 or frame.rsv2 or frame.rsv3),
                )
            except AssemblyError as exc:
                self._fail(exc.code, exc.reason)
                return
            finally:
                self._route()  # a fragmented message may have begun or ended
            if message is None:
                return  # a fragment of a message under way
        on_message = self._on_message
        if on_message is not None and not self._reading_paused and self._held is None:
            on_message(message)
            return
        # Not started, or paused: picows goes on parsing the frames already
        # in its read buffer after the socket stops reading. Hold them,
        # undecoded, until start() or resume_reading(): what a paused
        # channel holds is bounded by one read.
        if self._held is None:
            self._held = deque()
            self._direct = None
        self._held.append(message)
        self._held_size += len(message)

    def _route(self) -> None:
        """Let whole binary frames go straight to the callback, or not (see ``_direct``)."""
        held_up = (
            self._closing
            or self._reading_paused
            or self._held is not None
            or self._assembler.in_message
        )
        self._direct = None if held_up else self._on_message

    def _deliver_held(self) -> None:
        super()._deliver_held()
        self._route()  # what was held is delivered, or reading paused again

    def _drop_callbacks(self) -> None:
        super()._drop_callbacks()
        self._direct = None

    def _close_frame(self, frame: WSFrame) -> None:
        code = frame.get_close_code().value or _NO_STATUS
        reason = frame.get_close_reason() or ""
        self._received = (code, reason)
        transport = self._transport
        if transport.is_close_frame_sent or self._sent is not None:
            transport.disconnect()  # the answer to our close: the handshake is done
            return
        self._peer_first = True
        self._send_close(code, reason)
        transport.disconnect()
        # After the answer, as websockets does: close_frames already shows both.
        if self._on_close_frame is not None:
            self._on_close_frame(code, reason)

    def pause_reading(self) -> None:
        # Takes effect at once, on the next frame: those picows still has in
        # its read buffer wait in _held.
        if not self._reading_paused and not self._gone:
            self._reading_paused = True
            self._direct = None
            self._socket.pause_reading()
            self._loss_timer = self._loop.call_later(LOSS_POLL_INTERVAL, self._check_lost)

    def resume_reading(self) -> None:
        # The messages held while paused go first; if one of them pauses
        # reading again, the rest wait for the next resume_reading().
        if self._reading_paused and not self._gone:
            self._reading_paused = False
            if self._loss_timer is not None:
                self._loss_timer.cancel()
                self._loss_timer = None
            if self._closing:
                self._held = None  # as frames that arrive once closing has begun
                self._held_size = 0
            self._deliver_held()  # routes
            if not self._reading_paused and not self._gone:
                self._socket.resume_reading()

    def _check_lost(self) -> None:
        """While reading is paused: has the peer reset or closed the connection?"""
        self._loss_timer = None
        if self._gone or not self._reading_paused:
            return
        if socket_gone(self._socket.get_extra_info("socket")):
            self.abort()  # on_ws_disconnected reports it
            return
        self._loss_timer = self._loop.call_later(LOSS_POLL_INTERVAL, self._check_lost)

    # -- sending ----------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        transport = self._transport
        # The socket may be gone before picows reports it (a write failed
        # while a batch of calls is being answered): writing on would only
        # make aiofastnet warn once per write.
        if self._closing or transport.is_close_frame_sent or self._socket.is_closing():
            raise self._closed_error()
        # picows encodes a str to UTF-8 itself.
        transport.send(_TEXT if type(data) is str else _BINARY, data)

    async def drain(self) -> None:
        if self.writing_paused:
            if self._drain_waiters is None:
                self._drain_waiters = []
            await self._wait(self._drain_waiters)

    def ping(self) -> asyncio.Future[None]:
        if self.is_closing:
            raise self._closed_error()
        waiter = self._loop.create_future()
        if self._pings is None:
            self._pings = deque()
        self._ping_id += 1
        self._pings.append((self._ping_id, waiter))
        self._transport.send_ping(self._ping_id.to_bytes(_PING_ID_SIZE, "big"))
        return waiter

    # -- closing ----------------------------------------------------------------

    async def close(self, code: int, reason: str) -> None:
        if not self._gone:
            if not (self._closing or self._transport.is_close_frame_sent):
                self._send_close(code, reason)
            self._arm_abort_timer()  # also bounds a close picows started
        await self.wait_closed()

    def abort(self) -> None:
        self._closing = True
        self._direct = None
        if not self._gone:
            self._transport.disconnect(graceful=False)

    async def wait_closed(self) -> None:
        if not self._gone:
            if self._gone_waiters is None:
                self._gone_waiters = []
            await self._wait(self._gone_waiters)

    async def _wait(self, waiters: list[asyncio.Future[None]]) -> None:
        """Wait until ``waiters`` is woken (by :func:`_wake`), as ``Event.wait()`` does."""
        waiter = self._loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            # The list is dropped when woken; a cancelled waiter leaves it.
            waiters.remove(waiter)

    @property
    def is_closing(self) -> bool:
        return self._closing or self._transport.is_close_frame_sent or self._socket.is_closing()

    @property
    def close_frames(self) -> CloseFrames:
        sent = self._sent
        if sent is None and self._transport.is_close_frame_sent:
            # picows failed the connection itself (a protocol error it caught).
            info = self._transport.close_handshake.sent
            if info is not None:
                sent = (info.code.value, info.reason or "")
        return CloseFrames(self._received, sent, self._peer_first)

    def _fail(self, code: int, reason: str) -> None:
        """Start the closing handshake because of what the peer sent."""
        self._assembler.reset()
        self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        self._closing = True
        self._direct = None
        self._sent = (code, reason)
        self.resume_reading()  # only the close frame is left to read
        transport = self._transport
        if code == _NO_STATUS:
            # Echo a close frame that had no code as one without: send_close()
            # always writes a code, and 1005 must not go on the wire.
            transport.send(_CLOSE, b"")
        else:
            transport.send_close(WSCloseCode(code), reason.encode())
        self._arm_abort_timer()

    def _arm_abort_timer(self) -> None:
        if self._abort_timer is None and not self._gone:
            self._abort_timer = self._loop.call_later(self._close_timeout, self.abort)

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(*self.close_frames.cause)

    # -- the opening request ----------------------------------------------------

    @property
    def remote_ip(self) -> str:
        return self._remote_ip

    @property
    def request_path(self) -> str:
        return self._transport.request.path.decode("ascii", "surrogateescape")

    @property
    def request_headers(self) -> Sequence[tuple[str, str]]:
        return list(self._transport.request.headers.items())


def _wake(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake every waiter of :meth:`PicowsChannel._wait`, as ``Event.set()`` does."""
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)


# -- the server ---------------------------------------------------------------------


class PicowsListener(Listener):
    """A picows server; runs ``on_channel`` in a task of its own per connection."""

    def __init__(self, on_channel: Callable[[Channel], Awaitable[None]]) -> None:
        self._on_channel = on_channel
        self._server: asyncio.AbstractServer | None = None
        self._port = 0
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # What each handler task's done callback needs, made once: passing
        # them to add_done_callback() spares each connection a bound method
        # and a copy of the context (some 140 bytes). set.discard reads no
        # context variable.
        self._discard = self._tasks.discard
        self._discard_context = contextvars.Context()

    @property
    def port(self) -> int:
        return self._port

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening sockets at once
        self._stopped.set()

    async def wait_closed(self) -> None:
        """Wait until :meth:`stop_accepting` ran and every connection and handler is done."""
        await self._stopped.wait()
        if self._server is not None:
            # picows' server (aiofastnet's) also waits for every connection,
            # those still in their opening handshake included: none can
            # start a handler after this.
            await self._server.wait_closed()
        while self._tasks:
            await asyncio.wait(self._tasks)

    def _spawn(self, channel: PicowsChannel) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(channel))
        self._tasks.add(task)
        task.add_done_callback(self._discard, context=self._discard_context)

    async def _serve(self, channel: PicowsChannel) -> None:
        code = CloseCode.NORMAL
        try:
            await self._on_channel(channel)
        except asyncio.CancelledError:
            channel.abort()
            raise
        except Exception:
            _logger.exception("connection handler failed")
            code = CloseCode.INTERNAL_ERROR
        await channel.close(code, "")


def _origin_refusal(
    request: WSUpgradeRequest, origins: Sequence[str | None] | None
) -> WSUpgradeResponse | None:
    """
    The answer to a request whose ``Origin`` is refused, else None: 403 for
    an origin not in ``origins``; 400 for a request with several ``Origin``
    headers, whatever ``origins`` (RFC 6454 7.3: a user agent sends at most
    one; websockets answers 400 too).
    """
    values = request.headers.getall("Origin", [])
    refusal: WSUpgradeResponse | None = None
    if len(values) > 1:
        refusal = WSUpgradeResponse.create_error_response(
            HTTPStatus.BAD_REQUEST, b"Several Origin headers"
        )
    elif origins is not None and (values[0] if values else None) not in origins:
        refusal = WSUpgradeResponse.create_error_response(
            HTTPStatus.FORBIDDEN, b"Origin not allowed"
        )
    return refusal


async def listen(
    host: str,
    port: int,
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    options: Options,
    origins: Sequence[str | None] | None = None,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> Listener:
    """
    Serve WebSocket on ``host``:``port`` (0: a free port, see ``Listener.port``).

    Each upgraded connection runs ``on_channel(channel)`` in a task of its
    own; when it returns the channel is closed with 1000, when it raises
    (logged on the ``wsrpc`` logger) with 1011. With ``origins``, a request
    whose Origin header is not listed (``None`` admits requests without one)
    gets HTTP 403 and never becomes a channel; one with several Origin
    headers gets HTTP 400, with or without ``origins``.
    """
    max_message_size = options.max_message_size
    close_timeout, stall_timeout = options.close_timeout, options.stall_timeout
    listener = PicowsListener(on_channel)
    spawn = listener._spawn  # bound once: a bound method per channel would cost 64 bytes

    def upgrade(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        refusal = _origin_refusal(request, origins)
        if refusal is not None:
            return WSUpgradeResponseWithListener(refusal, None)
        return PicowsChannel(
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            stall_timeout=stall_timeout,
            on_connected=spawn,
        )

    server = await ws_create_server(
        upgrade,
        host,
        port,
        websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
        logger_name=_SERVER_LOGGER,
        enable_auto_ping=False,
        enable_auto_pong=False,  # see on_ws_frame
        max_frame_size=max_message_size,
        read_buffer_init_size=_READ_BUFFER_SIZE,
        ssl=ssl,
        reuse_port=reuse_port or None,
    )
    listener._server = server
    listener._port = int(server.sockets[0].getsockname()[1])
    return listener


# -- the client ---------------------------------------------------------------------


async def _open_socket(host: str, port: int) -> socket.socket:
    """A TCP socket connected to ``host``:``port`` (each address in turn)."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    try:
        # An address needs no resolver (whose thread pool would outlive us).
        ip = ipaddress.ip_address(host.strip("[]"))
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        addresses: list[Any] = [(family, socket.SOCK_STREAM, 0, "", (str(ip), port))]
    except ValueError:
        addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error or OSError(f"cannot resolve {host!r}")


async def connect(
    url: str,
    *,
    additional_headers: Sequence[tuple[str, str]] = (),
    options: Options,
    ssl: _ssl.SSLContext | None = None,
) -> tuple[Channel, list[tuple[str, str]]]:
    """
    Open a WebSocket to ``url``; return its channel (not started) and the
    upgrade response's headers.

    If cancelled during the upgrade, the socket is shut down under picows,
    which then closes its transport; the cancellation waits for that, at most
    ``close_timeout``. ``ssl`` is the TLS context of a ``wss://`` URL: TLS
    runs over the socket :func:`_open_socket` connected.

    Raises:
        OSError: the TCP (or TLS) connection failed, or closed during the upgrade.
        ValueError: a bad URL, or the server refused the upgrade.
    """
    max_message_size = options.max_message_size
    close_timeout, stall_timeout = options.close_timeout, options.stall_timeout
    made: list[PicowsChannel] = []
    sockets: list[socket.socket] = []

    def make_channel(request: WSUpgradeRequest, response: WSUpgradeResponse) -> PicowsChannel:
        channel = PicowsChannel(
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            stall_timeout=stall_timeout,
        )
        made.append(channel)
        return channel

    async def open_socket(parsed: WSParsedURL) -> socket.socket:
        sock = await _open_socket(parsed.host, parsed.port)
        sockets.append(sock)
        return sock

    upgrade = asyncio.ensure_future(
        ws_connect(
            make_channel,
            url,
            websocket_handshake_timeout=HANDSHAKE_TIMEOUT,
            logger_name=_CLIENT_LOGGER,
            enable_auto_ping=False,
            enable_auto_pong=False,  # see on_ws_frame
            max_frame_size=max_message_size,
            read_buffer_init_size=_READ_BUFFER_SIZE,
            extra_headers=list(additional_headers),
            socket_factory=open_socket,
            ssl_context=ssl,
        )
    )
    try:
        transport, _ = await asyncio.shield(upgrade)
    except asyncio.CancelledError:
        # picows neither closes the socket of a cancelled upgrade nor can be
        # reached before the upgrade completes: shut the socket down under
        # it, and let it see the end of the connection and close its
        # transport before we give up.
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet, or gone already
        await asyncio.wait({upgrade}, timeout=close_timeout)
        if not upgrade.done():
            upgrade.cancel()
        elif not upgrade.cancelled() and upgrade.exception() is None:
            for channel in made:
                channel.abort()
        raise
    except WSHandshakeError as exc:
        response = exc.response
        if response is not None and response.status != HTTPStatus.SWITCHING_PROTOCOLS:
            status = HTTPStatus(response.status)
            raise ValueError(
                f"{url}: the server refused the upgrade: HTTP {status.value} {status.phrase}"
            ) from None
        raise ValueError(f"{url}: invalid upgrade response: {exc}") from None
    except WSError as exc:  # WSInvalidURL, mostly
        raise ValueError(str(exc)) from None
    except TimeoutError as exc:
        if exc.errno is not None:
            raise  # the system's: TCP connect timed out
        # picows' handshake timeout. Not as a TimeoutError: a caller would
        # take it for its own timeout expiring.
        raise ConnectionError(f"{url}: no upgrade response within {HANDSHAKE_TIMEOUT} s") from None
    if not made:  # picows returns no listener when the socket closed first
        if ssl is not None:
            # With TLS 1.3, how a server refuses a client's certificate (its
            # alert comes after the handshake; picows drops it).
            raise ConnectionError(TLS_CLOSED)
        raise ConnectionError(f"{url}: the connection closed during the upgrade")
    channel = made[0]
    # picows keeps the cause of a disconnect it starts on the client side (a
    # protocol error, a callback that raised) in a future only
    # wait_disconnected() reads: read it, or asyncio logs it as never retrieved.
    reaper = asyncio.ensure_future(transport.wait_disconnected())
    reaper.add_done_callback(_consume_outcome)
    channel._reaper = reaper
    return channel, list(transport.response.headers.items())


def _consume_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
