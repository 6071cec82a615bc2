"""
The ASGI transport: wsrpc served by an ASGI server (uvicorn, hypercorn), as
an application that a web framework (Starlette, FastAPI) mounts.

Unlike the other two transports this one does not speak WebSocket: the ASGI
server does, and hands the application whole messages through its
``receive`` and ``send`` callables (the ASGI ``websocket`` scope). What that
changes, and what :class:`AsgiChannel` does about it:

* **Reading is pulled, not pushed**: a reader loop (the application's own
  coroutine, no extra task) awaits ``receive()`` and hands each message to
  wsrpc. :meth:`~AsgiChannel.pause_reading` makes it stop pulling: the ASGI
  server then buffers a bounded amount (uvicorn pauses its socket when its
  queue fills) and TCP pushes back.
* **Sending is awaited**: ``send()`` is a coroutine that returns once the
  ASGI server took the message (uvicorn waits while its socket's buffer is
  full). :meth:`~AsgiChannel.send` must not wait, so messages go into a
  queue that a writer task empties; the queue's size in bytes is the write
  buffer (:data:`HIGH_WATER`, :data:`LOW_WATER`), and ``stall_timeout``
  bounds how long it may stay over its mark.
* **No pings**: ASGI lets an application neither send a WebSocket ping nor
  see a pong. The ASGI server pings on its own (uvicorn's
  ``--ws-ping-interval``; hypercorn's ``websocket_ping_interval`` sends
  pings but never checks their pongs). wsrpc's keepalive needs a round
  trip it can time, so :meth:`~AsgiChannel.ping` runs the one its owner
  sets with :meth:`~AsgiChannel.set_round_trip` (the acceptor: a call the
  peer always answers at once, with an error; see
  :data:`wsrpc.acceptor.PROBE_PATH`).
* **The close is reported after the fact**: ``websocket.disconnect``
  carries the peer's close code once the ASGI server has answered it, so
  the close-request hook runs then, and only when the code is the peer's
  (not 1005/1006, which the servers report for a drop).
* **Size limits**: the ASGI server enforces its own (uvicorn
  ``--ws-max-size``, hypercorn ``websocket_max_message_size``, both 16 MiB
  by default); ``max_message_size`` is checked here on every message, so
  the smaller of the two holds (ours closes with 1009).
* **No abort**: ASGI cannot drop a socket. :meth:`~AsgiChannel.abort`
  stops everything here, reports the connection lost at once, and returns
  from the application, so the ASGI server closes the socket.

Layer: the transports (docs/architecture.md). Imports the core and
:mod:`wsrpc._transports.base`; nothing of the connections above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from .._options import Options
from .base import (
    ABNORMAL,
    STALL_CODE,
    STALL_REASON,
    CallbackChannel,
    Channel,
    ChannelClosed,
    CloseFrameCallback,
    CloseFrames,
    LostCallback,
    MessageCallback,
)

__all__ = [
    "HIGH_WATER",
    "LOW_WATER",
    "AsgiApp",
    "AsgiChannel",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "make_app",
]

_logger = logging.getLogger("wsrpc")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application: ``await app(scope, receive, send)``."""

HIGH_WATER = 64 * 1024
"""Bytes queued for the ASGI server above which :attr:`AsgiChannel.writing_paused`."""
LOW_WATER = 16 * 1024
"""Bytes queued below which :meth:`AsgiChannel.drain` returns."""

_NO_STATUS = 1005  # what uvicorn reports for a socket that closed without a close frame
_TOO_BIG = 1009


class AsgiChannel(CallbackChannel):
    """A :class:`Channel` over one ASGI ``websocket`` scope, once accepted."""

    __slots__ = (
        "_abort_timer",
        "_cancels",
        "_close_timeout",
        "_closing",
        "_drain_waiters",
        "_gone",
        "_held",
        "_held_size",
        "_in_receive",
        "_loop",
        "_lost",
        "_max_size",
        "_on_close_frame",
        "_on_lost",
        "_on_message",
        "_out",
        "_out_size",
        "_peer_first",
        "_ping_task",
        "_pings",
        "_reader",
        "_reading_paused",
        "_receive",
        "_received",
        "_resume",
        "_round_trip",
        "_scope",
        "_send",
        "_sent",
        "_stall_timeout",
        "_stall_timer",
        "_writer",
    )

    needs_round_trip = True

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        max_message_size: int,
        close_timeout: float,
        stall_timeout: float | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._scope = scope
        self._receive = receive
        self._send = send
        self._max_size = max_message_size
        self._close_timeout = close_timeout
        self._stall_timeout = stall_timeout
        self._on_message: MessageCallback | None = None
        self._on_lost: LostCallback | None = None
        self._on_close_frame: CloseFrameCallback | None = None
        self._held: deque[bytes | str] | None = None  # arrived before start()
        self._held_size = 0
        self._reading_paused = False
        self._resume: asyncio.Future[None] | None = None  # the reader waits while paused
        self._reader: asyncio.Task[Any] | None = None
        self._out: deque[tuple[Message, int]] = deque()
        self._out_size = 0
        self._writer: asyncio.Task[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stall_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._pings: set[asyncio.Future[None]] = set()
        self._round_trip: Callable[[], Awaitable[object]] | None = None
        self._closing = False
        self._gone = False
        self._lost: asyncio.Future[None] = self._loop.create_future()  # set with _gone
        self._received: tuple[int, str] | None = None
        self._sent: tuple[int, str] | None = None
        self._peer_first = False
        self._in_receive = False
        self._cancels = 0  # the reader's cancel count once abort() cancelled it
        self._ping_task: asyncio.Task[None] | None = None

    # -- the reader: the application's coroutine -------------------------------

    async def run(self) -> None:
        """Read until the connection is gone (the ASGI application awaits this)."""
        reader = self._reader = asyncio.current_task()
        assert reader is not None
        try:
            while not self._lost.done():
                if self._reading_paused and not self._closing:
                    self._resume = self._loop.create_future()
                    await asyncio.wait({self._resume, self._lost}, return_when="FIRST_COMPLETED")
                    self._resume = None
                    continue
                self._in_receive = True
                try:
                    event = await self._receive()
                except asyncio.CancelledError:
                    if self._lost.done() and reader.cancelling() == self._cancels:
                        reader.uncancel()  # abort(): stop reading, return
                        return
                    raise
                except Exception:  # the ASGI server's own failure: the socket is gone
                    self._lose()
                    return
                finally:
                    self._in_receive = False
                kind = event.get("type")
                if kind == "websocket.receive":
                    self._message(event)
                elif kind == "websocket.disconnect":
                    self._disconnect(event)
        finally:
            self._reader = None
            self._lose()

    def _message(self, event: Message) -> None:
        data: bytes | str | None = event.get("bytes")
        if data is None:
            data = event.get("text")
        if data is None or self._closing:
            return  # closing: nobody can answer it any more
        size = len(data)
        if isinstance(data, str) and size * 4 > self._max_size:
            size = len(data.encode())
        if size > self._max_size:
            self._close_soon(_TOO_BIG, f"message over {self._max_size} bytes")
            return
        on_message = self._on_message
        if on_message is None or self._reading_paused or self._held:
            # Not started, or paused while this one was being pulled: held
            # until start() or resume_reading().
            if self._held is None:
                self._held = deque()
            self._held.append(data)
            self._held_size += len(data)
            return
        on_message(data)

    def _disconnect(self, event: Message) -> None:
        code = int(event.get("code", _NO_STATUS))
        reason = str(event.get("reason") or "")
        if self._sent is None and code not in (_NO_STATUS, ABNORMAL):
            # The peer's close frame, which the ASGI server has answered.
            self._received = (code, reason)
            self._peer_first = True
            if self._on_close_frame is not None:
                self._on_close_frame(code, reason)
        self._lose()

    def _lose(self) -> None:
        """The connection is gone: release everything, tell the owner, once."""
        if self._gone:
            return
        self._closing = True
        self._gone = True
        self._lost.set_result(None)
        for timer in (self._abort_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._abort_timer = self._stall_timer = None
        self._out.clear()
        self._out_size = 0
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        self._wake_drainers()
        error = ChannelClosed(*self.close_frames.cause)
        for pong in self._pings:
            if not pong.done():
                pong.set_exception(error)
                pong.exception()  # retrieved: the keepalive may be gone already
        self._pings.clear()
        self._round_trip = None
        on_lost = self._on_lost
        self._drop_callbacks()
        if on_lost is not None:
            on_lost()

    # -- receiving ----------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._deliver_held()
            if self._reading_paused:
                return  # paused again by a held message
            if self._resume is not None and not self._resume.done():
                self._resume.set_result(None)

    # -- sending --------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        if self._closing:
            raise ChannelClosed(*self.close_frames.cause)
        if type(data) is str:
            self._enqueue({"type": "websocket.send", "text": data}, len(data))
        else:
            self._enqueue({"type": "websocket.send", "bytes": data}, len(data))

    def _enqueue(self, message: Message, size: int) -> None:
        was_paused = self.writing_paused
        self._out.append((message, size))
        self._out_size += size
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())
        if not was_paused and self.writing_paused and self._stall_timeout is not None:
            if self._stall_timer is None:
                self._stall_timer = self._loop.call_later(self._stall_timeout, self._stalled)

    async def _write(self) -> None:
        out = self._out
        try:
            while out:
                message, size = out[0]
                await self._send(message)
                if not out or out[0][0] is not message:
                    break  # lost meanwhile: the queue was cleared
                out.popleft()
                self._out_size -= size
                if self._out_size <= LOW_WATER:
                    if self._stall_timer is not None:
                        self._stall_timer.cancel()
                        self._stall_timer = None
                    self._wake_drainers()
        except asyncio.CancelledError:
            pass  # lost or aborted
        except Exception:  # the ASGI server refused it: the peer is gone
            self._writer = None
            self._lose()
            self._stop_reader()
        finally:
            self._writer = None

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def writing_paused(self) -> bool:
        return self._out_size > HIGH_WATER

    async def drain(self) -> None:
        if self._out_size > LOW_WATER and not self._gone:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _stalled(self) -> None:
        self._stall_timer = None
        _logger.info(
            "closing connection: the peer read nothing for %s s (send queue full)",
            self._stall_timeout,
        )
        if self._sent is None:
            self._sent = (STALL_CODE, STALL_REASON)
        self.abort()

    # -- keepalive ----------------------------------------------------------------

    def set_round_trip(self, round_trip: Callable[[], Awaitable[object]]) -> None:
        """
        What :meth:`ping` runs: a coroutine function whose return is the
        peer's answer (its exceptions mean no answer).
        """
        self._round_trip = round_trip

    def ping(self) -> asyncio.Future[None]:
        if self._closing:
            raise ChannelClosed(*self.close_frames.cause)
        pong: asyncio.Future[None] = self._loop.create_future()
        round_trip = self._round_trip
        if round_trip is None:
            # Nothing to time the peer with (not accepted yet): no pong to wait for.
            pong.set_result(None)
            return pong
        self._pings.add(pong)
        pong.add_done_callback(self._pings.discard)
        # One ping at a time (the keepalive's): keep its task referenced.
        self._ping_task = self._loop.create_task(self._ping(round_trip, pong))
        return pong

    async def _ping(
        self, round_trip: Callable[[], Awaitable[object]], pong: asyncio.Future[None]
    ) -> None:
        try:
            await round_trip()
        except Exception:
            return  # no answer: the keepalive's timeout judges, the loss is reported
        if not pong.done():
            pong.set_result(None)

    # -- closing ------------------------------------------------------------------

    def _close_soon(self, code: int, reason: str) -> None:
        self._loop.create_task(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self._sent = (code, reason)
            # After what is queued, as a close frame follows the data written before it.
            self._enqueue({"type": "websocket.close", "code": code, "reason": reason}, 0)
            self._abort_timer = self._loop.call_later(self._close_timeout, self.abort)
        await self.wait_closed()

    def abort(self) -> None:
        if self._gone:
            return
        self._lose()
        self._stop_reader()

    def _stop_reader(self) -> None:
        # ASGI cannot drop a socket: return from the application, and the
        # ASGI server closes it. A reader waiting for a resume wakes on the
        # loss by itself; one waiting in receive() is cancelled out of it.
        reader = self._reader
        if reader is not None and self._in_receive and reader is not asyncio.current_task():
            self._cancels = reader.cancelling() + 1
            reader.cancel()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._lost)

    @property
    def is_closing(self) -> bool:
        return self._closing

    @property
    def close_frames(self) -> CloseFrames:
        return CloseFrames(self._received, self._sent, self._peer_first)

    # -- the opening request ----------------------------------------------------

    @property
    def remote_ip(self) -> str:
        return _client_ip(self._scope)

    @property
    def request_path(self) -> str:
        return _request_path(self._scope)

    @property
    def request_headers(self) -> Sequence[tuple[str, str]]:
        return _headers(self._scope)


def _client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def _request_path(scope: Scope) -> str:
    """The request target as the client sent it: path (before any mount) and query."""
    raw = scope.get("raw_path")
    if raw:
        path = bytes(raw).decode("latin-1")
    else:
        path = str(scope.get("root_path", "")) + str(scope.get("path", ""))
    query = scope.get("query_string") or b""
    return f"{path}?{bytes(query).decode('latin-1')}" if query else path


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [
        (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers") or ()
    ]


# -- the application ----------------------------------------------------------------


async def _refuse(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse a WebSocket before its upgrade: with this HTTP status if the server can."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = text.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": text[:120]})


async def _not_found(send: Send) -> None:
    body = b"Not Found: this address serves wsrpc over WebSocket only\n"
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(
    receive: Receive, send: Send, on_shutdown: Callable[[], Awaitable[None]]
) -> None:
    while True:
        event = await receive()
        kind = event.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            try:
                await on_shutdown()
            except Exception as exc:  # pragma: no cover - close() does not raise
                await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            else:
                await send({"type": "lifespan.shutdown.complete"})
            return


def make_app(
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    options: Options,
    origins: Sequence[str | None] | None,
    accepting: Callable[[], bool],
    on_shutdown: Callable[[], Awaitable[None]],
) -> AsgiApp:
    """
    An ASGI 3 application serving WebSocket scopes with ``on_channel``.

    ``websocket`` scopes are upgraded (unless ``accepting()`` is false: HTTP
    503, or an ``Origin`` outside ``origins``: HTTP 403, through the ASGI
    ``websocket.http.response`` extension when the server has it, else a
    close before the upgrade, which uvicorn and hypercorn answer with 403),
    then served by ``on_channel(channel)``. ``http`` scopes get 404.
    ``lifespan`` scopes are answered, ``on_shutdown()`` running at shutdown.
    """
    allowed = None if origins is None else list(origins)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send, on_shutdown)
            return
        if kind == "http":
            await _not_found(send)
            return
        if kind != "websocket":
            raise ValueError(f"wsrpc's ASGI application serves no {kind!r} scope")
        event = await receive()
        if event.get("type") != "websocket.connect":
            return  # gone before the upgrade
        if not accepting():
            await _refuse(scope, send, 503, "server closing")
            return
        if allowed is not None:
            origin = next((v for k, v in _headers(scope) if k.lower() == "origin"), None)
            if origin not in allowed:
                await _refuse(scope, send, 403, "origin not allowed")
                return
        await send({"type": "websocket.accept"})
        channel = AsgiChannel(
            scope,
            receive,
            send,
            max_message_size=options.max_message_size,
            close_timeout=options.close_timeout,
            stall_timeout=options.stall_timeout,
        )
        handling = asyncio.ensure_future(on_channel(channel))
        try:
            await channel.run()
        finally:
            # The connection is gone; its owner winds down (close hooks), then
            # the application returns. Cancelled by the ASGI server meanwhile,
            # the owner goes on by itself.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(handling)

    return app
