"""
The asyncio half of an open connection: futures, tasks and the receive loop.

One :class:`Communicator` runs per open connection, on either side. It owns

* the futures of our outgoing calls, keyed by call id;
* the tasks of the peer's calls that are running here, keyed by call id;
* the receive loop, the only reader of the WebSocket.

Flow control. Each side tells the other how many calls it runs at once
(``max_concurrent_calls``) and the caller holds a semaphore of that size, so
an honest peer never sends more calls than we run. Calls over the limit
(from a peer that ignores it, or transiently after a cancellation) wait in a
backlog of the same size; only when that is full does the receive loop stop
reading, pushing back on TCP. Replies, cancellations and pings therefore keep
flowing while this side is busy, so that calls waiting on calls to the other
side cannot deadlock.

Nested calls. A call a provider method makes back to the same peer while it
serves one of the peer's calls (a callback, a callback of a callback...)
carries that call's id as its ``parent``. It skips the caller's semaphore,
and the callee runs it even when its slots are full, as long as it has
fewer such nested calls running than it has calls of its own waiting on
the peer (a parent must be one of those). Chains of callbacks of any depth
thus never wait for slots their own ancestors hold, and a peer faking
parents gains at most as many extra running calls as we have calls out.

Closing. Whoever notices first — a local :meth:`close`, a close frame, a
dropped socket, a protocol violation — calls :meth:`_finish`, which fails
every pending call with one :exc:`ConnectionClosedError` and cancels every
running call. The receive loop then waits for the socket to be gone and
resolves :meth:`join`.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from ._options import check_timeout
from .codecs import MsgpackCodec
from .dispatch import AccessRefused, resolve
from .driver import Driver
from .exceptions import ConnectionClosedError, ProtocolError, RemoteError, RpcTimeoutError
from .messages import Call, CloseCode, Error, Return
from .protocol import RpcProtocol
from .states import CloseInfo

__all__ = ["Communicator", "close_info", "close_info_of"]

logger = logging.getLogger("wsrpc")

_serving: contextvars.ContextVar[tuple[Communicator, int] | None] = contextvars.ContextVar(
    "wsrpc_serving", default=None
)
"""The communicator and the incoming call id the current task is serving."""


def _returning(awaitable: Awaitable[Any]) -> Callable[..., Awaitable[Any]]:
    """A function that ignores its arguments and returns ``awaitable``."""
    return lambda *args, **kwargs: awaitable


def close_info_of(ws: Connection, code: int, reason: str) -> CloseInfo:
    """How ``ws`` ended, once closed; ``code`` and ``reason`` name the cause."""
    protocol = ws.protocol
    received, sent = protocol.close_rcvd, protocol.close_sent
    return CloseInfo(
        code,
        reason,
        clean=received is not None and sent is not None,
        by_peer=bool(protocol.close_rcvd_then_sent) if received is not None else sent is None,
    )


def close_info(exc: ConnectionClosed) -> tuple[int, str]:
    """The code and reason that best explain why ``exc``'s connection closed."""
    frame = exc.rcvd or exc.sent
    if frame is None:
        return CloseCode.ABNORMAL, "connection lost"
    return frame.code, frame.reason


class Communicator:
    """Calls in both directions over one open WebSocket connection."""

    def __init__(
        self,
        ws: Connection,
        protocol: RpcProtocol,
        provider: object,
        *,
        call_timeout: float | None,
        ping_interval: float | None,
        ping_timeout: float | None,
        on_closed: Callable[[CloseInfo], Awaitable[None]],
    ) -> None:
        self._ws = ws
        self._protocol = protocol
        self._provider = provider
        self._call_timeout = call_timeout
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._nested: set[int] = set()  # ids of running nested calls (not counted)
        # Calls over the limit, and the event the receive loop waits on when
        # they are too many: made on first use (honest peers never need them).
        self._backlog: deque[tuple[Call, Callable[..., Any]]] | None = None
        self._room: asyncio.Event | None = None
        # We never have more calls in flight to the peer than it runs at once,
        # nor more than we run ourselves: a peer advertising a huge limit (or
        # none: TGrid) must not make us buffer without bound.
        peer_limit = protocol.peer_max_calls
        limit = protocol.max_calls if peer_limit is None else min(peer_limit, protocol.max_calls)
        self._credit = asyncio.Semaphore(limit)
        self._background: set[asyncio.Task[Any]] = set()
        self._driver: Driver | None = None
        self.closed: ConnectionClosedError | None = None
        """Why the connection closed; None while it is open."""
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._receiver = self._loop.create_task(self._receive_loop())
        if type(protocol.codec) is MsgpackCodec:
            # Replies skip the receive loop (see _on_data_frame, which knows
            # msgpack's layout: other codecs keep the usual way).
            ws.on_data_frame = self._on_data_frame  # type: ignore[attr-defined]
        self._keepalive: asyncio.Task[None] | None = None
        if ping_interval is not None:
            self._keepalive = self._loop.create_task(self._keep_alive(ping_interval, ping_timeout))

    # -- outgoing calls ------------------------------------------------------

    def driver(self, timeout: float | None) -> Driver:
        """The root driver: a shared one, or a new one whose calls time out."""
        if timeout is not None:
            check_timeout(timeout)
            return Driver(self, "", timeout)
        if self._driver is None:
            self._driver = Driver(self, "", None)
        return self._driver

    def call(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Coroutine[Any, Any, Any]:
        """Call ``path`` on the peer; the coroutine returns its result. See :class:`Driver`."""
        if timeout is None:
            timeout = self._call_timeout
        if timeout is None:
            # The common case: the call's own coroutine, with no wrapper around it.
            return self._call(path, args, kwargs)
        return self._call_within(path, args, kwargs, timeout)

    async def _call_within(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> Any:
        # The timeout covers the whole call: waiting for a slot, sending, the reply.
        try:
            async with asyncio.timeout(timeout):
                return await self._call(path, args, kwargs)
        except TimeoutError:
            raise RpcTimeoutError(f"call to {path!r} timed out after {timeout} s") from None

    async def _call(self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.closed is not None:
            raise self._closed_error()
        serving = _serving.get()
        parent = None
        if serving is not None and serving[0] is self and serving[1] in self._running:
            parent = serving[1]  # made while serving that call, which still runs
        # A nested call takes no slot: its ancestors hold them (see above).
        credit = self._credit if parent is None else None
        if credit is not None:
            await credit.acquire()
        try:
            if self.closed is not None:
                raise self._closed_error()
            uid, frame = self._protocol.send_call(path, list(args), kwargs or None, parent)
            future = self._loop.create_future()
            self._pending[uid] = future
            try:
                await self._ws.send(frame)
                return await future
            except ConnectionClosed as exc:
                # The socket closed, maybe before the receive loop noticed.
                self._pending.pop(uid, None)
                self._finish(ConnectionClosedError(*close_info(exc)))
                raise self._closed_error() from None
            except asyncio.CancelledError:
                # Cancelled or timed out: ask the peer to stop working on it.
                cancel = self._protocol.send_cancel(uid)
                if cancel is not None and self.closed is None:
                    self._send_in_background(cancel)
                raise
            finally:
                self._pending.pop(uid, None)
                if future.done() and not future.cancelled():
                    # Failed by a close while this call was being cancelled:
                    # mark the error as seen so asyncio does not log it.
                    future.exception()
        finally:
            if credit is not None:
                credit.release()

    def _closed_error(self) -> ConnectionClosedError:
        closed = self.closed
        assert closed is not None
        return ConnectionClosedError(closed.code, closed.reason)

    def _send_in_background(self, frame: bytes | str) -> None:
        task = self._loop.create_task(self._send_quietly(frame))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_quietly(self, frame: bytes | str) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed:
            pass  # the receive loop reports the close

    # -- keepalive -----------------------------------------------------------

    async def _keep_alive(self, interval: float, timeout: float | None) -> None:
        # wsrpc pings rather than websockets so that a silent peer fails the
        # pending calls as soon as the pong is late, not after the closing
        # handshake with that silent peer has timed out as well.
        ws = self._ws
        try:
            while self.closed is None:
                await asyncio.sleep(interval)
                pong = await ws.ping()
                try:
                    # One ping in flight at a time, even with no timeout.
                    async with asyncio.timeout(timeout):
                        await pong
                except TimeoutError:
                    reason = "keepalive ping timeout"
                    self._finish(ConnectionClosedError(CloseCode.INTERNAL_ERROR, reason))
                    await ws.close(CloseCode.INTERNAL_ERROR, reason)
                    return
        except ConnectionClosed:
            pass  # the receive loop reports the close

    # -- the receive loop ----------------------------------------------------

    async def _receive_loop(self) -> None:
        ws, protocol, pending = self._ws, self._protocol, self._pending
        try:
            while True:
                frame = await ws.recv()
                try:
                    message = protocol.receive(frame)
                except ProtocolError as exc:
                    logger.info("closing connection: %s", exc)
                    await self._abort(exc.code, exc.reason)
                    return
                kind = type(message)
                if kind is Return:
                    assert isinstance(message, Return)
                    future = pending.pop(message.uid, None)
                    if future is not None and not future.done():
                        future.set_result(message.value)
                elif kind is Call:
                    assert isinstance(message, Call)
                    await self._on_call(message)
                elif kind is Error:
                    assert isinstance(message, Error)
                    future = pending.pop(message.uid, None)
                    if future is not None and not future.done():
                        future.set_exception(
                            RemoteError(message.name, message.message, message.traceback)
                        )
                elif message is not None:  # Cancel
                    self._on_cancel(message.uid)
        except ConnectionClosed as exc:
            self._finish(ConnectionClosedError(*close_info(exc)))
        except asyncio.CancelledError:
            # The event loop is shutting down (asyncio.run() ending with the
            # connection still open): no time for a closing handshake.
            self._finish(ConnectionClosedError(CloseCode.ABNORMAL, "event loop shutting down"))
            self._ws.transport.abort()
            raise
        except Exception:  # pragma: no cover - a bug in wsrpc, not the peer's doing
            logger.exception("unexpected error in the receive loop")
            await self._abort(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._wind_down()

    def _on_data_frame(self, data: bytes) -> bool:
        """
        Resolve a reply right where websockets parses its frame; return
        whether the frame was one (consumed) or is for the receive loop.

        Called from the protocol callback, in order with the other frames. A
        reply never waits behind queued calls, and costs one task wake-up
        (the caller's) instead of two. msgpack replies are recognised by
        their first two bytes: [3, uid, value] and [4, uid, name, message,
        traceback]; anything else, or a reply that fails to decode (the
        receive loop then closes the connection), goes the usual way.
        """
        if len(data) < 2 or not (
            (data[0] == 0x93 and data[1] == 3) or (data[0] == 0x95 and data[1] == 4)
        ):
            return False
        if self.closed is not None:
            return True  # nobody waits for it any more
        try:
            message = self._protocol.receive(data)
        except ProtocolError:
            return False
        if message is not None:
            future = self._pending.pop(message.uid, None)
            if future is not None and not future.done():
                if type(message) is Return:
                    future.set_result(message.value)
                else:
                    assert isinstance(message, Error)
                    future.set_exception(
                        RemoteError(message.name, message.message, message.traceback)
                    )
        return True

    async def _abort(self, code: int, reason: str) -> None:
        self._finish(ConnectionClosedError(code, reason))
        await self._ws.close(code, reason)

    async def _wind_down(self) -> None:
        # The socket is closing or closed: wait for it to be gone, let the
        # cancelled calls unwind, then tell join() and the owner.
        await self._ws.wait_closed()
        if self.closed is None:  # the loop was cancelled from outside
            self._finish(ConnectionClosedError(CloseCode.ABNORMAL, "connection lost"))
        tasks = list(self._running.values()) + list(self._background)
        if self._keepalive is not None:
            self._keepalive.cancel()
            tasks.append(self._keepalive)
        if tasks:
            await asyncio.wait(tasks)
        closed = self.closed
        assert closed is not None
        await self._on_closed(close_info_of(self._ws, closed.code, closed.reason))
        if not self._done.done():
            self._done.set_result(None)

    # -- incoming calls ------------------------------------------------------

    async def _on_call(self, call: Call) -> None:
        uid = call.uid
        try:
            func, is_async = resolve(self._provider, call.path)
        except AccessRefused as exc:
            await self._ws.send(self._protocol.send_refusal(uid, str(exc)))
            return
        if not is_async:
            # A plain function runs to completion wherever it is called, so
            # calling it here costs no concurrency and saves a task.
            try:
                result = func(*call.args, **call.kwargs) if call.kwargs else func(*call.args)
            except (Exception, asyncio.CancelledError) as exc:
                # A plain method raising CancelledError is an error like any other.
                await self._ws.send(self._protocol.send_error(uid, exc))
                return
            if not inspect.isawaitable(result):
                await self._ws.send(self._protocol.send_return(uid, result))
                return
            # A plain function that returned an awaitable (a decorator's
            # wrapper around a coroutine function): await it in a task.
            func = _returning(result)
        protocol = self._protocol
        if (
            call.parent is not None
            and call.parent in protocol.outgoing
            and len(self._nested) < len(protocol.outgoing)
        ):
            self._nested.add(uid)  # a callback of one of our calls: runs now
            self._start(call, func)
            return
        if len(self._running) - len(self._nested) < protocol.max_calls:
            self._start(call, func)
            return
        if self._backlog is None:
            self._backlog, self._room = deque(), asyncio.Event()
        assert self._room is not None
        self._backlog.append((call, func))
        if len(self._backlog) >= self._protocol.max_calls:
            # The peer ignores our limit: stop reading until a slot frees.
            self._room.clear()
            await self._room.wait()

    def _start(self, call: Call, func: Callable[..., Any]) -> None:
        self._running[call.uid] = self._loop.create_task(self._run(call, func))

    async def _run(self, call: Call, func: Callable[..., Any]) -> None:
        uid = call.uid
        _serving.set((self, uid))  # this task's own context: calls it makes are nested
        try:
            try:
                coro = func(*call.args, **call.kwargs) if call.kwargs else func(*call.args)
                result = await coro
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled by the peer's Cancel or by the close: no reply.
                    self._protocol.drop_incoming(uid)
                    return
                # The method raised CancelledError by itself: the caller
                # still waits for an answer, so it gets an error.
                frame = self._protocol.send_error(
                    uid, RemoteError("CancelledError", "the call was cancelled")
                )
            except Exception as exc:
                frame = self._protocol.send_error(uid, exc)
            else:
                frame = self._protocol.send_return(uid, result)
            # A transport already closing (the peer vanished while this call
            # ran) would only log a warning per write: skip it.
            if self.closed is None and not self._ws.transport.is_closing():
                await self._ws.send(frame)
        except (ConnectionClosed, asyncio.CancelledError):
            pass  # the connection is going away; the receive loop reports it
        finally:
            del self._running[uid]
            self._nested.discard(uid)
            self._pump_backlog()

    def _pump_backlog(self) -> None:
        backlog = self._backlog
        if not backlog:
            return
        while backlog and len(self._running) - len(self._nested) < self._protocol.max_calls:
            self._start(*backlog.popleft())
        if len(backlog) < self._protocol.max_calls and self._room is not None:
            self._room.set()

    def _on_cancel(self, uid: int) -> None:
        task = self._running.get(uid)
        if task is not None:
            task.cancel()
            return
        for entry in self._backlog or ():
            if entry[0].uid == uid:
                assert self._backlog is not None
                self._backlog.remove(entry)
                self._protocol.drop_incoming(uid)
                return

    # -- closing -------------------------------------------------------------

    def _finish(self, exc: ConnectionClosedError) -> None:
        """Fail every pending call and cancel every running one, once."""
        if self.closed is not None:
            return
        self.closed = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(exc.code, exc.reason))
        self._pending.clear()
        for task in self._running.values():
            task.cancel()
        if self._backlog is not None:
            self._backlog.clear()
        if self._room is not None:
            self._room.set()

    async def close(self, code: int, reason: str) -> None:
        """Close the connection: pending calls fail now, then the handshake runs."""
        self._finish(ConnectionClosedError(code, reason))
        await self._ws.close(code, reason)
        await asyncio.shield(self._done)
