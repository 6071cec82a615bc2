"""
The seam between wsrpc's asyncio layer and the library that speaks WebSocket.

wsrpc needs little from a WebSocket implementation, and all of it is here:

* :class:`Channel`: one open connection. Messages arrive through a callback,
  in the transport's own data callback (no reader task, no queue, one task
  wake-up less per message); messages go out without waiting, with a
  separate :meth:`Channel.drain` for flow control.
* :class:`Listener`: a listening server that hands each upgraded connection
  to wsrpc as a :class:`Channel`.
* :class:`ChannelClosed`: the only exception a channel raises; the asyncio
  layer turns it into :exc:`~wsrpc.ConnectionClosedError`.

Each transport implements it in a module of this package:
:mod:`~wsrpc._transports.websockets` (the default, on `websockets`) and
:mod:`~wsrpc._transports.picows` (``transport="picows"``, the
``wsrpc[fast]`` extra); the package itself picks one by name. The opening
handshake, its HTTP details and TLS are each transport's own business;
everything after it is the same code.

This module is the bottom of the I/O layer: it imports nothing of wsrpc.
"""

from __future__ import annotations

import abc
import asyncio
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

__all__ = [
    "ABNORMAL",
    "LOSS_POLL_INTERVAL",
    "MAX_FRAGMENTS",
    "STALL_CODE",
    "STALL_REASON",
    "TLS_CLOSED",
    "CallbackChannel",
    "Channel",
    "ChannelClosed",
    "CloseFrameCallback",
    "CloseFrames",
    "Listener",
    "LostCallback",
    "MessageCallback",
    "socket_gone",
]

MAX_FRAGMENTS = 4096
"""Most fragments in one message (websockets' own cap); more close with 1009."""

LOSS_POLL_INTERVAL = 0.5
"""
Seconds between checks of the socket while reading is paused (see
:func:`socket_gone`): a connection reset or closed by the peer is noticed
within this, plus the event loop's latency, though nothing reads it.
"""

ABNORMAL = 1006
"""The close code of a connection that dropped without a close frame (reported, never sent)."""

STALL_CODE = 1008
"""The close code of a peer that kept our write buffer full (see ``stall_timeout``)."""
STALL_REASON = "peer not reading"

TLS_CLOSED = (
    "TLS failed: the server closed the connection right after the TLS handshake, "
    "before any HTTP response: it refused this client's certificate, or the lack of one"
)
"""
Why a ``wss://`` connect ended before the upgrade's response. With TLS 1.3 a
server checks the client's certificate after the client's handshake is
done, and its alert does not reach the client through asyncio's TLS (nor
picows'): only the end of the stream does.
"""

# Linux reports a TCP socket's state (tcp_info.tcpi_state, its first byte).
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8

MessageCallback = Callable[[bytes | str | memoryview], None]
CloseFrameCallback = Callable[[int, str], None]
LostCallback = Callable[[], None]


class ChannelClosed(Exception):
    """The connection is closing or closed; ``code`` and ``reason`` say why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CloseFrames:
    """The close frames of a connection's closing handshake, so far."""

    received: tuple[int, str] | None
    """The peer's close frame (code, reason), if one arrived."""
    sent: tuple[int, str] | None
    """Our close frame (code, reason), if we sent one."""
    peer_first: bool
    """Whether the peer's close frame came before ours (the peer closed)."""

    @property
    def cause(self) -> tuple[int, str]:
        """
        The code and reason that best explain why the connection closed.

        The peer's close frame if one came, else ours, else 1006
        ``"connection lost"`` (no close frame: it dropped). The one rule,
        for every transport and for the layer above.
        """
        frame = self.received or self.sent
        return frame if frame is not None else (ABNORMAL, "connection lost")


class Channel(abc.ABC):
    """
    One open WebSocket connection, as wsrpc's asyncio layer uses it.

    Every method runs in the event loop's thread. Callbacks run inside the
    transport's data callback: they must not block, and may call any method
    of the channel, including :meth:`send` and :meth:`abort`.
    """

    __slots__ = ()

    # -- receiving ----------------------------------------------------------

    @abc.abstractmethod
    def start(
        self,
        on_message: MessageCallback,
        on_lost: LostCallback,
        on_close_frame: CloseFrameCallback | None = None,
    ) -> None:
        """
        Begin delivering messages; may be called again to change callbacks.

        ``on_message(data)`` receives every complete data message, in order:
        fragments are joined, text messages are decoded (``str``), binary
        ones are ``bytes``, or a ``memoryview`` of the transport's read
        buffer, valid only until ``on_message`` returns (copy it to keep
        it): a transport may hand large messages over without copying them
        first, as wsrpc's decoder copies out what it keeps. Messages that
        arrived before the first ``start()`` were held and are delivered by
        it, synchronously, before it returns. ``on_close_frame(code,
        reason)`` runs when the peer starts the closing handshake (not when
        it answers ours). ``on_lost()`` runs once, after the last message,
        when the connection is gone (closed cleanly, dropped or aborted); if
        it is already gone, ``start()`` calls the ``on_lost`` it was given
        before returning, so that each owner of the callbacks hears of the
        loss.
        """

    @abc.abstractmethod
    def pause_reading(self) -> None:
        """Stop reading from the socket (TCP pushes back) until resumed. Idempotent."""

    @abc.abstractmethod
    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`. Idempotent."""

    # -- sending --------------------------------------------------------------

    @abc.abstractmethod
    def send(self, data: bytes | str) -> None:
        """
        Write one message (text if ``str``) now, without waiting.

        Raises:
            ChannelClosed: the connection is closing or closed; nothing was sent.
        """

    @property
    @abc.abstractmethod
    def writing_paused(self) -> bool:
        """Whether the write buffer is above its high-water mark."""

    @abc.abstractmethod
    async def drain(self) -> None:
        """
        Wait until the write buffer is below its low-water mark.

        Returns at once when it is, and when the connection is gone.
        """

    @abc.abstractmethod
    def ping(self) -> asyncio.Future[None]:
        """
        Send a ping; the future resolves when its pong arrives.

        The future fails with :exc:`ChannelClosed` if the connection goes first.

        Raises:
            ChannelClosed: the connection is closing or closed.
        """

    needs_round_trip: ClassVar[bool] = False
    """
    Whether the transport cannot ping (ASGI): its :meth:`ping` then runs the
    round trip given to :meth:`set_round_trip`, and resolves at once until
    one is given.
    """

    def set_round_trip(self, round_trip: Callable[[], Awaitable[object]]) -> None:  # noqa: B027
        """
        Give a transport that cannot ping (:attr:`needs_round_trip`) what
        :meth:`ping` runs instead: a coroutine function that returns once
        the peer answered (its exceptions mean no answer). Ignored by the
        transports that ping.
        """

    # -- closing --------------------------------------------------------------

    @abc.abstractmethod
    async def close(self, code: int, reason: str) -> None:
        """
        Run the closing handshake with ``code`` and ``reason``, then drop the
        socket; return once it is gone. If the peer does not answer within
        the close timeout, the socket is dropped anyway. Idempotent.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the socket now, with no closing handshake."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""

    @property
    @abc.abstractmethod
    def is_closing(self) -> bool:
        """Whether the closing handshake has begun or the connection is gone."""

    @property
    @abc.abstractmethod
    def close_frames(self) -> CloseFrames:
        """The close frames sent and received so far."""

    # -- the opening request ----------------------------------------------------

    @property
    @abc.abstractmethod
    def remote_ip(self) -> str:
        """The peer's IP address, or ``""`` if unknown."""

    @property
    @abc.abstractmethod
    def request_path(self) -> str:
        """The request target of the upgrade (path and query); ``""`` if unknown."""

    @property
    @abc.abstractmethod
    def request_headers(self) -> Sequence[tuple[str, str]]:
        """The upgrade request's headers as (name, value) pairs, in order."""


class CallbackChannel(Channel):
    """
    The receiving half that transports delivering by callback share.

    A subclass stores, in slots of its own, the three callbacks, the
    messages it holds (``_held``, ``_held_size``: those that came before
    :meth:`start`, and those of a read under way once reading is paused),
    ``_reading_paused`` and ``_gone``; it calls :meth:`_deliver_held` on
    resuming and :meth:`_drop_callbacks` when the connection is lost.
    """

    if not TYPE_CHECKING:
        # No slots of its own (picows' channel also derives from a Cython
        # class, whose layout would clash), and no __dict__ either: the
        # subclasses hold these attributes in their slots. Hidden from mypy,
        # which would otherwise refuse the assignments below.
        __slots__ = ()

    _on_message: MessageCallback | None
    _on_lost: LostCallback | None
    _on_close_frame: CloseFrameCallback | None
    _held: deque[bytes | str] | None
    _held_size: int
    _reading_paused: bool
    _gone: bool

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
            self._drop_callbacks()
            on_lost()

    def _drop_callbacks(self) -> None:
        # They are the owner's methods: kept after the loss, they would tie
        # the owner and this channel into a cycle, and a closed connection's
        # memory would wait for a full garbage collection.
        self._on_message = self._on_lost = self._on_close_frame = None

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


class Listener(abc.ABC):
    """A listening WebSocket server."""

    __slots__ = ()

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The port it listens on."""

    @abc.abstractmethod
    def stop_accepting(self) -> None:
        """Stop accepting new connections; open ones go on."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the listening sockets are closed."""


def socket_gone(sock: object) -> bool:
    """
    Whether the kernel knows that the connection of ``sock`` is gone: reset
    (``SO_ERROR`` set, portable), or, on Linux, reset or closed by the peer
    (TCP state ``CLOSE`` or ``CLOSE_WAIT``), whether or not data is left to
    read. Reads nothing: for a socket whose reading is paused.

    ``sock`` is what a transport's ``get_extra_info("socket")`` returns;
    None (no socket) counts as not gone.
    """
    getsockopt = getattr(sock, "getsockopt", None)
    if getsockopt is None:
        return False
    try:
        if getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return True
        if _TCP_INFO is not None:
            state = getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)
            return bool(state) and state[0] in (_TCP_CLOSE, _TCP_CLOSE_WAIT)
    except OSError:
        return True  # closed under us
    return False
