"""
The asyncio half of an open connection: futures, tasks and the message callback.

One :class:`Communicator` runs per open connection, on either side. It owns

* the futures of our outgoing calls, keyed by call id;
* the tasks of the peer's calls that are running here, keyed by call id;
* the message callback of its :class:`~wsrpc._transports.base.Channel`.

There is no reader task. The channel calls :meth:`Communicator._on_message`
from the transport's data callback: a reply resolves its caller's future
right there, and a call to a plain method runs and is answered right there,
without a task of its own or a task wake-up. Only ``async`` methods get a
task.

Flow control. Each side tells the other how many calls it runs at once
(``max_concurrent_calls``) and the caller holds as many slots, so
an honest peer never sends more calls than we run. Calls over the limit
(from a peer that ignores it, or transiently after a cancellation) wait in a
backlog of the same size; only when that is full does the channel stop
reading, pushing back on TCP. Replies, cancellations and pings therefore
keep flowing while this side is busy, so that calls waiting on calls to the
other side cannot deadlock. Reading also stops while our answers wait in a
full write buffer (as it did when the reader awaited each write), so that a
peer that calls without reading the answers cannot make us buffer them
without bound.

Nested calls. A call a provider method makes back to the same peer while it
serves one of the peer's calls (a callback, a callback of a callback...)
carries that call's id as its ``parent``. It takes none of the caller's slots,
and the callee runs it even when its slots are full, as long as it has
fewer such nested calls running than it has calls of its own waiting on
the peer (a parent must be one of those). Chains of callbacks of any depth
thus never wait for slots their own ancestors hold, and a peer faking
parents gains at most as many extra running calls as we have calls out.

Streams. A call to a provider's async generator streams its items (see
``docs/streams.md``). The consumer (the caller) grants the producer a window
of :data:`STREAM_WINDOW` items in its stream call and grants more as its user
takes them, so at most a window waits on the consumer; the window is resized
at each grant to :data:`STREAM_WINDOW_BYTES` worth of the items received,
within :data:`STREAM_WINDOW` and :data:`STREAM_MAX_WINDOW` items. The
producer runs the generator in a task counted like an async call, pulls the
next item only when it holds credit, so a consumer that stops iterating
pauses the generator, and waits for the write buffer to drain after each
frame, so that even a consumer granting credit without bound cannot make it
buffer. To a peer that takes ITEMS, the items the generator makes without
waiting travel several per frame (see :meth:`Communicator._produce`).
Leaving the ``async for`` (the iterator dropped), ``aclose()``, a timeout or
a cancellation sends CANCEL; the producer's task is cancelled and the
generator closed (its ``finally`` runs).

Closing. Whoever notices first — a local :meth:`close`, the connection
lost, a protocol violation, a keepalive timeout — calls :meth:`_finish`,
which fails every pending call with one :exc:`ConnectionClosedError` and
cancels every running call. Once the socket is gone, a wind-down task waits
for the cancelled calls to unwind and tells the owner.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import math
import time
import types
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any

from ._budget import DecodeBudget
from ._transports.base import Channel, ChannelClosed, CloseFrameCallback, CloseFrames
from .dispatch import PLAIN, STREAM, AccessRefused, Resolver
from .exceptions import (
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RemoteError,
    RpcTimeoutError,
    StateError,
    ValidationError,
)
from .messages import Call, Cancel, CloseCode, Credit, Error, Item, Items, Return
from .protocol import RETURN_KIND, RpcProtocol
from .states import CloseInfo
from .validation import NATIVE_JSON, NATIVE_MSGPACK, ConvertedItems, Validator, validator_for

__all__ = [
    "MAX_CREDIT",
    "STREAM_MAX_WINDOW",
    "STREAM_WINDOW",
    "STREAM_WINDOW_BYTES",
    "Communicator",
    "Stream",
    "close_info_of",
]

logger = logging.getLogger("wsrpc")

_serving: contextvars.ContextVar[tuple[Communicator, int] | None] = contextvars.ContextVar(
    "wsrpc_serving", default=None
)
"""The communicator and the incoming call id the current task is serving."""


_Future = asyncio.Future
_future_done = asyncio.Future.done
_set_result = asyncio.Future.set_result

_UNTIMED = math.inf
"""The timeout of a call that has none (what the timeout's own wrapper passes on)."""

_TIMED_ABOVE = 256
"""Messages over this many bytes have their decoding timed; smaller ones cost
at most tens of microseconds, like the handling of any message."""

STREAM_WINDOW = 16
"""Items a consumer lets a producer send ahead when a stream starts (the
credit of its STREAM message), and the fewest it ever lets it."""
STREAM_MAX_WINDOW = 256
"""The most items a consumer lets a producer send ahead (small items)."""
STREAM_BUFFER_BYTES = 64 * 1_048_576
"""Most bytes of stream items a connection holds for its users to take, all
its streams together, counted as the frames that carried them. The window
counts items, and a producer that grew it with small items could then fill
it with large ones (256 of ``max_message_size`` per stream); past this many
bytes, the connection is not read until the users have taken half of them
(back-pressure: nothing is dropped, the producer waits on TCP). Honest
streams hold about 1 MiB each (the window's bytes), so this is 64 of them
paused at once; a connection left unread for longer than the keepalive
allows (``ping_interval`` + ``ping_timeout``) is then closed by it, 1011."""
STREAM_WINDOW_BYTES = 1_048_576
"""Bytes of items a consumer lets a producer send ahead, counted by the
average size of the items it received since it last granted credit: the
window is this many bytes' worth of items, within :data:`STREAM_WINDOW` and
:data:`STREAM_MAX_WINDOW`. Small items fill a window of 256, so that enough
of them are in flight to cover a round trip; items over 64 KiB get 16."""
_BATCH_DELAY = 0.001
"""Seconds the first item of a batch waits, at most, for the items after it
(see :meth:`Communicator._produce`)."""
_clock = time.monotonic
MAX_CREDIT = 1024
"""The most credit a producer holds, whatever its consumer grants; beyond
it, grants are clipped (the write buffer bounds what is sent anyway)."""

_DONE: Any = object()
"""The end of a stream that ended well (a RETURN)."""

_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})
"""Result types that are never awaitable (skips inspect.isawaitable's ABC check)."""


def _returning(awaitable: Awaitable[Any]) -> Callable[..., Awaitable[Any]]:
    """A function that ignores its arguments and returns ``awaitable``."""
    return lambda *args, **kwargs: awaitable


def _checking_plain(func: Callable[..., Any], check: Callable[[Any], Any]) -> Callable[..., Any]:
    """``func`` with its result checked, or its awaitable's (a decorated coroutine)."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if type(result) in _PLAIN or not inspect.isawaitable(result):
            return check(result)
        return _checking_async(_returning(result), check)()

    return checked


def _checking_async(
    func: Callable[..., Awaitable[Any]], check: Callable[[Any], Any]
) -> Callable[..., Awaitable[Any]]:
    """The coroutine function ``func`` with its result checked."""

    async def checked(*args: Any, **kwargs: Any) -> Any:
        return check(await func(*args, **kwargs))

    return checked


def _checking_items(func: Callable[..., Any], check: Callable[[Any], Any]) -> Callable[..., Any]:
    """The async generator function ``func`` with each item checked."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        return ConvertedItems(func(*args, **kwargs), check)

    return checked


def close_info_of(frames: CloseFrames, code: int, reason: str) -> CloseInfo:
    """How a connection ended, once closed; ``code`` and ``reason`` name the cause."""
    received, sent = frames.received, frames.sent
    return CloseInfo(
        code,
        reason,
        clean=received is not None and sent is not None,
        by_peer=frames.peer_first if received is not None else sent is None,
    )


class Communicator:
    """Calls in both directions over one open connection."""

    # Slots, not an instance __dict__: every message reads a few of these,
    # and slots are read at a fixed offset in the object itself. With 1,000
    # connections, each read of a dict-backed attribute is likelier to miss
    # the cache.
    __slots__ = (
        "_background",
        "_backlog",
        "_backlog_full",
        "_call_timeout",
        "_channel",
        "_close_timeout",
        "_decode_budget",
        "_decode_throttled",
        "_done",
        "_draining",
        "_error_level",
        "_inboxes",
        "_label",
        "_loop",
        "_nested",
        "_on_closed",
        "_pending",
        "_ping_interval",
        "_ping_timeout",
        "_ping_timer",
        "_producers",
        "_protocol",
        "_resolve",
        "_running",
        "_slot_waiters",
        "_slots",
        "_stream_bytes",
        "_streams_full",
        "_validate",
        "_wind_down_task",
        "_write_turn",
        "closed",
    )

    def __init__(
        self,
        channel: Channel,
        protocol: RpcProtocol,
        provider: object,
        *,
        call_timeout: float | None,
        ping_interval: float | None,
        ping_timeout: float | None,
        call_error_log_level: int,
        close_timeout: float,
        decode_budget: float | None,
        on_closed: Callable[[CloseInfo], Awaitable[None]],
        validate: bool = False,
        on_close_frame: CloseFrameCallback | None = None,
        early: Sequence[bytes | str] = (),
        label: str = "",
    ) -> None:
        """
        Serve ``provider`` over ``channel`` and start taking its messages.

        ``early`` are messages that arrived after the handshake but before
        this communicator existed (the owner held them): they are handled
        first, in order. ``label`` names the connection in log records.
        ``on_closed(info)`` runs once, when the connection is gone and its
        calls have unwound; after it, the communicator lets go of the
        provider and of ``on_closed`` (see :meth:`_wind_down`).
        """
        self._channel = channel
        self._protocol = protocol
        # The provider's methods, by path; the bound __call__ is a plain
        # function call for the interpreter, where the Resolver itself would
        # be called from C through its type.
        self._resolve = Resolver(provider).__call__
        self._call_timeout = call_timeout
        self._error_level = call_error_log_level
        self._validate = validate
        self._close_timeout = close_timeout
        # Over budget, a connection is not read until the window ends.
        self._decode_budget = None if decode_budget is None else DecodeBudget(decode_budget)
        self._label = label
        self._on_closed: Callable[[CloseInfo], Awaitable[None]] | None = on_closed
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        # Our streams (consumer side), and the peer's streams running or
        # waiting here (producer side), by call id.
        self._inboxes: dict[int, _Inbox] = {}
        self._producers: dict[int, _Producer] = {}
        # Made on first use, as honest peers never need them: ids of running
        # nested calls (not counted against the limit), calls over the limit,
        # background sends.
        self._nested: set[int] | None = None
        self._backlog: deque[tuple[Call, Callable[..., Any]]] | None = None
        self._background: set[asyncio.Task[Any]] | None = None
        # Why reading is paused: a full backlog, replies waiting in a full
        # write buffer. Reading resumes when neither holds.
        self._backlog_full = False
        # Bytes of stream items received and not taken yet (all streams),
        # and whether they are over STREAM_BUFFER_BYTES (reading paused).
        self._stream_bytes = 0
        self._streams_full = False
        self._draining = False
        self._decode_throttled = False
        # Answers of async calls take turns here while the write buffer is
        # full (see _answer); made on first use.
        self._write_turn: asyncio.Lock | None = None
        # We never have more calls in flight to the peer than it runs at once,
        # nor more than we run ourselves: a peer advertising a huge limit (or
        # none: TGrid) must not make us buffer without bound.
        peer_limit = protocol.peer_max_calls
        limit = protocol.max_calls if peer_limit is None else min(peer_limit, protocol.max_calls)
        # Our calls in flight take slots; a plain counter rather than an
        # asyncio.Semaphore, whose acquire() is a coroutine even when free.
        self._slots = limit
        self._slot_waiters: deque[asyncio.Future[None]] | None = None
        self.closed: ConnectionClosedError | None = None
        """Why the connection closed; None while it is open."""
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._wind_down_task: asyncio.Task[None] | None = None
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._ping_timer: asyncio.TimerHandle | None = None
        if ping_interval is not None:
            self._schedule_ping()
        for message in early:
            self._on_message(message)
        channel.start(self._on_message, self._on_lost, on_close_frame)

    # -- outgoing calls ------------------------------------------------------

    async def _call_within(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> Any:
        # The timeout covers the whole call: waiting for a slot, sending, the reply.
        try:
            async with asyncio.timeout(timeout):
                return await _awaiting(self.start(path, args, kwargs, _UNTIMED))
        except TimeoutError:
            raise RpcTimeoutError(f"call to {path!r} timed out after {timeout} s") from None

    def stream(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Stream:
        """
        Stream ``path`` from the peer: the async iterator of its items.

        The stream function of a :class:`~wsrpc.driver.Link`. Nothing is sent
        before the first ``__anext__``. ``timeout`` (None: the
        ``call_timeout``) bounds each wait for an item, the first included.
        """
        return Stream(self, path, args, kwargs, self._call_timeout if timeout is None else timeout)

    async def _open_stream(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[int, _Inbox]:
        """Send the stream call (holding a slot, as a call does); its id and inbox."""
        if self.closed is not None:
            raise self._closed_error()
        protocol = self._protocol
        if not protocol.peer_streams:
            raise StateError(protocol.no_streams_reason(path))
        parent = None
        running = self._running
        if running:  # as in start()
            serving = _serving.get()
            if serving is not None and serving[0] is self and serving[1] in running:
                parent = serving[1]
        slot = parent is None
        if slot:
            if self._slots > 0:
                self._slots -= 1
            else:
                await self._wait_for_slot()
        try:
            uid, frame = protocol.send_call(path, list(args), kwargs or None, parent, STREAM_WINDOW)
        except BaseException:
            if slot:
                self._release_slot()
            raise
        inbox = _Inbox(slot)
        self._inboxes[uid] = inbox
        try:
            self._channel.send(frame)
        except ChannelClosed as exc:
            self._end_inbox(uid, ConnectionClosedError(exc.code, exc.reason))
            self._finish(ConnectionClosedError(exc.code, exc.reason))
            raise self._closed_error() from None
        return uid, inbox

    def _end_inbox(self, uid: int, end: Any) -> None:
        """Our stream ``uid`` ended (``end``: _DONE or an exception): wake its reader."""
        inbox = self._inboxes.pop(uid, None)
        if inbox is None:
            return
        if inbox.end is None:
            inbox.end = end
        waiter = inbox.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if inbox.slot:
            inbox.slot = False
            self._release_slot()

    def _took(self, size: int) -> None:
        """A user took a stream item that came in ``size`` bytes."""
        self._stream_bytes -= size
        if self._streams_full and self._stream_bytes <= STREAM_BUFFER_BYTES // 2:
            self._streams_full = False
            self._update_reading()

    def _dropped(self, inbox: _Inbox) -> None:
        """The items left in ``inbox`` will never be taken: forget their bytes."""
        if inbox.sizes:
            size = sum(inbox.sizes)
            inbox.sizes.clear()
            inbox.items.clear()
            self._took(size)

    def _abandon(self, uid: int) -> None:
        """Our user stopped reading stream ``uid``: cancel it on the peer."""
        inbox = self._inboxes.get(uid)
        if inbox is None:
            return  # ended already
        self._dropped(inbox)
        self._end_inbox(uid, _DONE)
        cancel = self._protocol.send_cancel(uid)
        if cancel is not None and self.closed is None:
            self._send_quietly(cancel)

    def _on_items(self, uid: int, values: list[Any], size: int) -> None:
        """Items of our stream ``uid`` arrived in one frame (ITEM or ITEMS) of ``size`` bytes."""
        inbox = self._inboxes.get(uid)
        if inbox is not None:
            count = len(values)
            inbox.items.extend(values)
            share = -(-size // count)  # each item's share of the frame, rounded up
            inbox.sizes.extend(itertools.repeat(share, count))
            inbox.received += count
            inbox.received_bytes += size
            self._stream_bytes += share * count
            if self._stream_bytes > STREAM_BUFFER_BYTES and not self._streams_full:
                self._streams_full = True
                self._update_reading()
            waiter = inbox.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _grant(self, uid: int, inbox: _Inbox) -> None:
        """
        Fill the window of stream ``uid`` again: its user took half of it.

        The window is resized first, to :data:`STREAM_WINDOW_BYTES` worth
        of the items received since the last grant (see there).
        """
        if inbox.received:
            window = STREAM_WINDOW_BYTES * inbox.received // inbox.received_bytes
            window = min(max(window, STREAM_WINDOW), STREAM_MAX_WINDOW)
            inbox.window = window
            inbox.received = inbox.received_bytes = 0
        count = inbox.window - inbox.lent
        if count <= 0:
            return  # the window shrank (larger items): grant once it is half used
        inbox.lent = inbox.window
        frame = self._protocol.send_credit(uid, count)
        if frame is not None and self.closed is None:
            self._send_quietly(frame)

    async def call(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """
        Call ``path`` on the peer and return its result.

        The call function of a :class:`~wsrpc.driver.Link` while the
        connection is open: :meth:`start`, as a coroutine.
        """
        return await _awaiting(self.start(path, args, kwargs, timeout))

    def start(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Generator[Any, None, Any]:
        """
        Call ``path`` on the peer; the generator's return value is its result.

        What an awaited driver call runs while the connection is open (the
        start function of a :class:`~wsrpc.driver.Link`): a generator rather
        than a coroutine, because a driver's ``RemoteCall.__await__`` can
        hand a generator to ``await`` as it is, where a coroutine would need
        a wrapper, which is one more object and one more step on each of the
        call's two resumptions (some 1,600 instructions per call on the
        client, callgrind, 4 % of its total then). Nothing runs before the first
        step. ``timeout`` None means the ``call_timeout``; ``math.inf`` means
        none.
        """
        if timeout is None:
            timeout = self._call_timeout
        if timeout is not None and timeout < _UNTIMED:
            return (yield from self._call_within(path, args, kwargs, timeout).__await__())
        if self.closed is not None:
            raise self._closed_error()
        parent = None
        running = self._running
        if running:  # else no call of the peer's runs here: this call nests in none
            serving = _serving.get()
            if serving is not None and serving[0] is self and serving[1] in running:
                parent = serving[1]  # made while serving that call, which still runs
        # A nested call takes no slot: its ancestors hold them (see above).
        slot = parent is None
        if slot:
            if self._slots > 0:
                self._slots -= 1
            else:
                yield from self._wait_for_slot().__await__()
        try:
            uid, frame = self._protocol.send_call(path, args, kwargs or None, parent)
            # The arguments are in the frame now. Dropped, a tuple of them
            # is one object fewer for the collector to go through for as
            # long as the call waits (the caller holds the values anyway).
            del args, kwargs
            future: asyncio.Future[Any] = _Future(loop=self._loop)  # exactly: see _on_message
            self._pending[uid] = future
            channel = self._channel
            try:
                # The frame stays referenced until the answer comes, on
                # purpose: freed before the wait, the heap's top was free
                # and glibc gave it back to the system, and the next large
                # call faulted its pages in again (1 MiB echo: 488 page
                # faults per call on the client instead of 9; see
                # docs/performance.md). It costs what the call's arguments,
                # held meanwhile anyway, cost.
                channel.send(frame)
                if channel.writing_paused:
                    yield from channel.drain().__await__()
                # The answer (or the close) takes the future out of _pending:
                # nothing to clean up once it is done.
                return (yield from future)
            except ChannelClosed as exc:
                # The socket is closing, maybe before the close was reported.
                self._pending.pop(uid, None)
                self._finish(ConnectionClosedError(exc.code, exc.reason))
                raise self._closed_error() from None
            except asyncio.CancelledError:
                self._pending.pop(uid, None)
                if future.done() and not future.cancelled():
                    # Failed by a close while this call was being cancelled:
                    # mark the error as seen so asyncio does not log it.
                    future.exception()
                # Cancelled or timed out: ask the peer to stop working on it.
                cancel = self._protocol.send_cancel(uid)
                if cancel is not None and self.closed is None:
                    self._send_quietly(cancel)
                raise
            except BaseException:
                self._pending.pop(uid, None)  # drain() failed, or the answer was an error
                raise
        finally:
            if slot:
                if self._slot_waiters:
                    self._release_slot()
                else:
                    self._slots += 1  # what _release_slot() does when nobody waits

    async def _wait_for_slot(self) -> None:
        """
        Wait until a slot is handed to this call. Raises
        :exc:`ConnectionClosedError` if the connection closed meanwhile (the
        slot passed on), :exc:`asyncio.CancelledError` if cancelled.
        """
        if self._slot_waiters is None:
            self._slot_waiters = deque()
        waiter = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot while being cancelled: pass it on
            raise
        if self.closed is not None:
            self._release_slot()  # closed while this call waited: pass it on
            raise self._closed_error()

    def _release_slot(self) -> None:
        # A freed slot goes straight to the first caller still waiting, so
        # that a caller arriving now cannot overtake the queue.
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots += 1

    def _closed_error(self) -> ConnectionClosedError:
        closed = self.closed
        assert closed is not None
        return ConnectionClosedError(closed.code, closed.reason)

    def _send_quietly(self, frame: bytes | str) -> None:
        """Send ``frame`` if the connection is still open; a full buffer pauses reading."""
        channel = self._channel
        try:
            channel.send(frame)
        except ChannelClosed:
            return  # the close is reported by the channel
        if channel.writing_paused and not self._draining:
            self._stop_reading_to_drain()

    def _stop_reading_to_drain(self) -> None:
        """Stop taking calls until the peer reads what we owe it (the write buffer is full)."""
        self._draining = True
        self._channel.pause_reading()
        self._spawn(self._drain())

    async def _drain(self) -> None:
        try:
            await self._channel.drain()
        except ConnectionError:
            pass  # the connection is gone (websockets' drain raises it): the channel reports it
        finally:
            self._draining = False
            self._update_reading()

    def _update_reading(self) -> None:
        if self._backlog_full or self._draining or self._decode_throttled or self._streams_full:
            self._channel.pause_reading()
        else:
            self._channel.resume_reading()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task the wind-down waits for."""
        if self._background is None:
            self._background = set()
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- keepalive -----------------------------------------------------------

    # wsrpc pings rather than the transport so that a silent peer fails the
    # pending calls as soon as the pong is late, not after the closing
    # handshake with that silent peer has timed out as well. Timers, not a
    # task: a sleeping task per connection costs several times their memory.
    # One ping in flight at a time, even with no timeout.

    def _schedule_ping(self) -> None:
        assert self._ping_interval is not None
        self._ping_timer = self._loop.call_later(self._ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_timer = None
        if self.closed is not None:
            return
        try:
            pong = self._channel.ping()
        except ChannelClosed:
            return  # the channel reports the close
        if self._ping_timeout is not None:
            self._ping_timer = self._loop.call_later(self._ping_timeout, self._pong_late)
        pong.add_done_callback(self._on_pong)

    def _on_pong(self, pong: asyncio.Future[None]) -> None:
        if pong.cancelled() or pong.exception() is not None or self.closed is not None:
            return  # the connection is going: the channel reports it
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._schedule_ping()

    def _pong_late(self) -> None:
        self._ping_timer = None
        reason = "keepalive ping timeout"
        self._abort(CloseCode.INTERNAL_ERROR, reason)
        # The peer is silent: waiting close_timeout for its half of the
        # closing handshake would only delay the owner's learning of the
        # loss (a reconnecting connector's, above all). The close started
        # above sends our close frame first (both transports do so before
        # their first await); then the socket is dropped.
        self._loop.call_soon(self._channel.abort)

    # -- incoming messages ---------------------------------------------------

    def _on_message(self, data: bytes | str | memoryview) -> None:
        """Handle one message (called by the channel, in the transport's callback)."""
        if self.closed is not None:
            return  # nobody can answer it any more
        try:
            # Calls and returns come as plain lists (see receive_lean).
            if len(data) > _TIMED_ABOVE and self._decode_budget is not None:
                message = self._receive_timed(data)
            else:
                message = self._protocol.receive_lean(data)
        except ProtocolError as exc:
            logger.info("closing connection: %s", exc)
            self._abort(exc.code, exc.reason)
            return
        if type(message) is list:
            if message[0] == RETURN_KIND:
                future = self._pending.pop(message[1], None)
                if future is not None:
                    # The methods of asyncio.Future, taken from the class: on
                    # one of its instances, method calls are looked up the
                    # slow way (its instances have a __dict__), some 200
                    # instructions each. Our calls' futures are made as
                    # asyncio.Future itself (see start), never a subclass.
                    if not _future_done(future):
                        _set_result(future, message[2])
                elif self._inboxes:
                    self._end_inbox(message[1], _DONE)
            else:
                self._on_lean_call(message)
            return
        kind = type(message)
        if kind is Return:
            assert isinstance(message, Return)
            future = self._pending.pop(message.uid, None)
            if future is not None:
                if not future.done():
                    future.set_result(message.value)
            elif self._inboxes:
                self._end_inbox(message.uid, _DONE)
        elif kind is Call:
            assert isinstance(message, Call)
            self._on_call(message)
        elif kind is Error:
            assert isinstance(message, Error)
            error = RemoteError(message.name, message.message, message.traceback)
            future = self._pending.pop(message.uid, None)
            if future is not None:
                if not future.done():
                    future.set_exception(error)
            elif self._inboxes:
                self._end_inbox(message.uid, error)
        elif kind is Item:
            assert isinstance(message, Item)
            self._on_items(message.uid, [message.value], len(data))
        elif kind is Items:
            assert isinstance(message, Items)
            self._on_items(message.uid, message.values, len(data))
        elif kind is Credit:
            assert isinstance(message, Credit)
            self._on_credit(message.uid, message.count)
        elif message is not None:  # Cancel
            assert not isinstance(message, list)  # returned above
            self._on_cancel(message.uid)

    def _receive_timed(
        self, data: bytes | str | memoryview
    ) -> list[Any] | Call | Return | Error | Cancel | Item | Items | Credit | None:
        """``receive_lean(data)``, its time charged to the decoding budget."""
        started = time.perf_counter()
        try:
            return self._protocol.receive_lean(data)
        finally:
            self._count_decoding(started, len(data))

    def _count_decoding(self, started: float, size: int) -> None:
        """Charge the decoding of ``size`` bytes begun at ``started``; over budget, stop reading."""
        if self.closed is not None:
            return  # closing (maybe because of this message): the close must be read
        budget = self._decode_budget
        assert budget is not None  # only timed with a budget
        now = time.perf_counter()
        resume_at = budget.charge(started, now, size)
        if resume_at is not None and not self._decode_throttled:
            # A peer sending frames that are expensive to decode (valid
            # ones: trees of small arrays): read it again when the window ends.
            self._decode_throttled = True
            self._update_reading()
            self._loop.call_later(resume_at - now, self._end_throttle)

    def _end_throttle(self) -> None:
        self._decode_throttled = False
        if self.closed is None:
            self._update_reading()

    def _abort(self, code: int, reason: str) -> None:
        self._finish(ConnectionClosedError(code, reason))
        self._spawn(self._channel.close(code, reason))

    def _on_lost(self) -> None:
        """The connection is gone (called by the channel, once)."""
        self._finish(ConnectionClosedError(*self._channel.close_frames.cause))
        self._wind_down_task = self._loop.create_task(self._wind_down())

    async def _wind_down(self) -> None:
        # Let the cancelled calls unwind, then tell join() and the owner. A
        # method that ignores its cancellation gets close_timeout: the close
        # must end whatever the provider does (it goes on, forgotten).
        tasks = list(self._running.values()) + list(self._background or ())
        if tasks:
            _, left = await asyncio.wait(tasks, timeout=self._close_timeout)
            if left:
                logger.warning(
                    "%s: %d call(s) still running %s s after the connection closed; "
                    "they ignore their cancellation and are left behind",
                    self._label or "connection",
                    len(left),
                    self._close_timeout,
                )
        closed = self.closed
        assert closed is not None
        on_closed, self._on_closed = self._on_closed, None
        assert on_closed is not None
        # Nothing of a closed connection may outlive it: the provider may hold
        # its peer's driver, and on_closed is a method of the owner, so
        # keeping either would tie the connection into reference cycles that
        # only a full garbage collection frees.
        self._resolve = Resolver(None).__call__
        await on_closed(close_info_of(self._channel.close_frames, closed.code, closed.reason))
        if not self._done.done():
            self._done.set_result(None)

    # -- incoming calls ------------------------------------------------------

    def running_calls(self) -> list[asyncio.Task[None]]:
        """The tasks of the peer's calls running here now (not those in the backlog)."""
        return list(self._running.values())

    def _on_call(self, call: Call) -> None:
        """
        Admit one of the peer's calls: answer it, run it, queue it, or refuse it.

        In order: a path the member rules refuse gets an error reply; a plain
        method runs here and now and is answered (it cannot wait, so it
        takes no concurrency); an async method runs in a task of its own
        if it is a callback of one of our pending calls (see
        :meth:`_is_callback`) or if fewer than ``max_calls`` of the peer's
        calls run; otherwise it waits in the backlog, and a full backlog
        stops the channel's delivery until a call ends.
        """
        try:
            func, kind = self._resolve(call.path)
        except AccessRefused as exc:
            self._send_quietly(self._protocol.send_refusal(call.uid, str(exc)))
            return
        self._dispatch(call, func, kind)

    def _on_lean_call(self, message: list[Any]) -> None:
        """
        :meth:`_on_call` for a call that came as a list (see
        ``RpcProtocol.receive_lean``): a plain method without validation,
        most calls, runs and is answered here without a :class:`Call`; any
        other gets one. (A plain method runs at once whatever its call's
        parent: the parent only matters to admission, for a task.)
        """
        uid, path, args = message[1], message[2], message[3]
        resolve = self._resolve  # read, then called: see __init__
        try:
            func, kind = resolve(path)
        except AccessRefused as exc:
            self._send_quietly(self._protocol.send_refusal(uid, str(exc)))
            return
        if kind == PLAIN:
            kwargs = message[4] if len(message) >= 5 else None
            check: Callable[[Any], Any] | None = None
            if self._validate:
                # As _validated() does, without a Call or wrappers: the
                # arguments converted, the result checked below.
                try:
                    validator = self._validator(func)
                    args, kwargs = validator.arguments(args, kwargs)
                except ValidationError as exc:
                    self._send_quietly(self._protocol.send_error(uid, exc))
                    return
                except Exception as exc:
                    self._log_error(Call(uid, path, args), exc)
                    self._send_quietly(self._protocol.send_error(uid, exc))
                    return
                check = validator.result
            try:
                result = func(*args, **kwargs) if kwargs else func(*args)
                if check is not None and (
                    type(result) in _PLAIN or not inspect.isawaitable(result)
                ):
                    result = check(result)
            except (Exception, asyncio.CancelledError) as exc:
                # A plain method raising CancelledError is an error like any other.
                self._log_error(Call(uid, path, list(args)), exc)
                self._send_quietly(self._protocol.send_error(uid, exc))
                return
            if type(result) in _PLAIN or not inspect.isawaitable(result):
                frame = self._protocol.send_return(uid, result)
                channel = self._channel
                try:
                    channel.send(frame)
                except ChannelClosed:
                    return  # the close is reported by the channel
                if channel.writing_paused and not self._draining:
                    self._stop_reading_to_drain()  # as _send_quietly() does
                return
            # A plain function that returned an awaitable: await it in a task.
            size = len(message)
            call = Call(uid, path, list(args), kwargs, message[5] if size == 6 else None)
            returning = _returning(result)
            self._admit(call, returning if check is None else _checking_async(returning, check))
            return
        size = len(message)
        call = Call(
            uid, path, args, message[4] if size >= 5 else None, message[5] if size == 6 else None
        )
        self._dispatch(call, func, kind)

    def _dispatch(self, call: Call, func: Callable[..., Any], kind: int) -> None:
        """:meth:`_on_call`, once ``call.path`` resolved to ``func``, of ``kind``."""
        uid = call.uid
        protocol = self._protocol
        if call.credit is not None:
            if kind != STREAM:
                self._send_quietly(
                    protocol.send_error(
                        uid,
                        RemoteError(
                            "NotAStream",
                            f"{call.path!r} does not stream (it is not an async "
                            "generator): await it instead of iterating it",
                        ),
                    )
                )
                return
        elif kind == STREAM:
            self._send_quietly(
                protocol.send_error(
                    uid,
                    RemoteError(
                        "StreamRequired",
                        f"{call.path!r} streams its results (an async generator): "
                        "iterate it with 'async for' instead of awaiting it",
                    ),
                )
            )
            return
        if self._validate:
            checked = self._validated(call, func, kind)
            if checked is None:
                return
            call, func = checked
        if call.credit is not None:
            self._producers[uid] = _Producer(min(call.credit, MAX_CREDIT))
        elif kind == PLAIN:
            # A plain function runs to completion wherever it is called, so
            # calling it here costs no concurrency and saves a task.
            try:
                result = func(*call.args, **call.kwargs) if call.kwargs else func(*call.args)
            except (Exception, asyncio.CancelledError) as exc:
                # A plain method raising CancelledError is an error like any other.
                self._log_error(call, exc)
                self._send_quietly(protocol.send_error(uid, exc))
                return
            if type(result) in _PLAIN or not inspect.isawaitable(result):
                self._send_quietly(protocol.send_return(uid, result))
                return
            # A plain function that returned an awaitable (a decorator's
            # wrapper around a coroutine function): await it in a task.
            func = _returning(result)
        self._admit(call, func)

    def _admit(self, call: Call, func: Callable[..., Any]) -> None:
        """Run ``call`` (awaiting ``func``) in a task now, or queue it in the backlog."""
        uid = call.uid
        protocol = self._protocol
        if self._is_callback(call):
            if self._nested is None:
                self._nested = set()
            self._nested.add(uid)  # runs now, past the limit: see the module's docstring
            self._start(call, func)
            return
        if self._counted_running() < protocol.max_calls:
            self._start(call, func)
            return
        if self._backlog is None:
            self._backlog = deque()
        self._backlog.append((call, func))
        if len(self._backlog) >= protocol.max_calls and not self._backlog_full:
            # The peer ignores our limit: stop reading until a slot frees.
            self._backlog_full = True
            self._update_reading()

    def _validated(
        self, call: Call, func: Callable[..., Any], kind: int
    ) -> tuple[Call, Callable[..., Any]] | None:
        """
        ``call`` with its arguments converted, and ``func`` checking its result.

        None when the call is answered already: arguments that do not match
        the method's annotations get a ValidationError (not logged: the
        peer's mistake, not ours), annotations we cannot use an error logged
        like a method's. A result that does not match raises ValidationError
        from the returned function, so it is logged and answered like any
        exception of the method (a provider bug).
        """
        try:
            validator = self._validator(func)
            args, kwargs = validator.arguments(call.args, call.kwargs)
        except ValidationError as exc:
            self._send_quietly(self._protocol.send_error(call.uid, exc))
            return None
        except Exception as exc:
            self._log_error(call, exc)
            self._send_quietly(self._protocol.send_error(call.uid, exc))
            return None
        if args is not call.args or kwargs is not call.kwargs:
            args = args if isinstance(args, list) else list(args)
            call = Call(call.uid, call.path, args, kwargs, call.parent, call.credit)
        if kind == STREAM:
            item = validator.item
            return call, (func if item is None else _checking_items(func, item))
        check = validator.result
        if check is None:
            return call, func
        if kind == PLAIN:
            return call, _checking_plain(func, check)
        return call, _checking_async(func, check)

    def _validator(self, func: Callable[..., Any]) -> Validator:
        """The validator of provider method ``func``, for this connection's codec."""
        native = NATIVE_MSGPACK if self._protocol.codec.binary else NATIVE_JSON
        return validator_for(func, native)

    def _is_callback(self, call: Call) -> bool:
        """
        Whether ``call`` is a callback of one of our own pending calls, to run
        past the limit.

        It must name as its parent a call of ours still waiting for its
        answer, and there must be fewer such callbacks running than we have
        calls pending: a peer faking parents gains at most that many extra
        running calls.
        """
        parent = call.parent
        if parent is None:
            return False
        outgoing = self._protocol.outgoing
        nested = self._nested
        return parent in outgoing and (nested is None or len(nested) < len(outgoing))

    def _counted_running(self) -> int:
        return len(self._running) - (len(self._nested) if self._nested else 0)

    def _start(self, call: Call, func: Callable[..., Any]) -> None:
        if call.credit is None:
            self._running[call.uid] = self._loop.create_task(self._run(call, func))
        else:
            self._running[call.uid] = self._loop.create_task(self._produce(call, func))

    def _on_credit(self, uid: int, count: int) -> None:
        producer = self._producers.get(uid)
        if producer is None:
            return
        producer.credit = min(producer.credit + count, MAX_CREDIT)
        waiter = producer.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _produce(self, call: Call, func: Callable[..., Any]) -> None:
        """
        Run the peer's stream call ``call``: send the generator's items as credit allows.

        To a peer that takes ITEMS (see :attr:`RpcProtocol.batches_items`),
        the items the generator makes without waiting for anything go out
        together, in one frame: the batch is sent when the generator is
        about to wait (its step did not finish at once), when the credit
        runs out, when it would grow past the protocol's
        :attr:`~wsrpc.protocol.RpcProtocol.batch_limit`, when its first
        item has waited :data:`_BATCH_DELAY` (1 ms), and at the end. So a
        slow generator's items leave as they come, one per frame, and a
        fast one's in frames of up to the window.
        """
        uid = call.uid
        _serving.set((self, uid))  # calls the generator makes are nested, as in _run
        producer = self._producers[uid]
        protocol = self._protocol
        channel = self._channel
        batching = protocol.batches_items
        if batching:
            pack = protocol.pack_item
            limit = protocol.batch_limit
            largest = protocol.item_limit
        batch: list[bytes] = []  # items packed, not sent yet
        size = 0  # their bytes
        since = 0.0  # when its first item was made
        sent = False  # a frame went out since the write buffer was last checked

        def flush() -> None:
            """Send the batch (once per frame, not per item)."""
            nonlocal batch, size, sent
            channel.send(protocol.send_items(uid, batch))
            batch = []
            size = 0
            sent = True

        generator: AsyncGenerator[Any, None] | None = None
        value: Any = None
        failed = False
        try:
            try:
                generator = func(*call.args, **call.kwargs) if call.kwargs else func(*call.args)
                assert generator is not None
                step_of = generator.__anext__
                while True:
                    if producer.credit <= 0:
                        if batch:
                            flush()
                        # Out of credit: the generator stays paused at its yield.
                        while producer.credit <= 0:
                            waiter = producer.waiter = self._loop.create_future()
                            try:
                                await waiter
                            finally:
                                producer.waiter = None
                    if sent:
                        sent = False
                        if channel.writing_paused:
                            try:
                                await channel.drain()
                            except ConnectionError:  # websockets' drain: the connection is gone
                                protocol.drop_incoming(uid)
                                return  # the channel reports it
                    # One step of the generator, driven by hand to see whether
                    # it finishes at once or waits (see _Resumed).
                    step = step_of().__await__()
                    try:
                        yielded = step.send(None)
                    except StopIteration as done:
                        item = done.value
                    except StopAsyncIteration:
                        break
                    else:
                        if batch:  # the generator waits: what it made goes out first
                            try:
                                flush()
                            except ChannelClosed:
                                _cancel_step(step)  # so that aclose() below can run
                                raise
                        item = await _Resumed(step, yielded)
                    producer.credit -= 1
                    if batching:
                        packed = pack(item)
                        length = len(packed)
                        if size + length > limit:
                            if batch:
                                flush()
                            if largest is not None and length > largest:
                                raise protocol.item_too_large(length)
                        if batch:
                            batch.append(packed)
                            size += length
                            if _clock() - since >= _BATCH_DELAY:
                                # A generator slow without waiting (blocking
                                # work): its items must not wait for a batch.
                                flush()
                        else:
                            batch.append(packed)
                            size = length
                            since = _clock()
                    else:
                        channel.send(protocol.send_item(uid, item))
                        sent = True
            except ChannelClosed:  # raised by our sends only
                protocol.drop_incoming(uid)
                return  # the connection is going: the channel reports it
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled by the peer's Cancel or by the close: no reply.
                    protocol.drop_incoming(uid)
                    return
                value = RemoteError("CancelledError", "the stream was cancelled")
                failed = True
            except EncodeError as exc:
                value, failed = exc, True  # an item that cannot travel ends the stream
            except Exception as exc:
                self._log_error(call, exc)
                value, failed = exc, True
            finally:
                if generator is not None:
                    try:
                        # Runs the generator's finally when it is paused at a
                        # yield (cancelled while out of credit, or left early).
                        await generator.aclose()
                    except Exception as exc:
                        self._log_error(call, exc)
            if self.closed is not None:
                protocol.drop_incoming(uid)
                return
            if batch:
                # The items made before the end (or the error) come first.
                self._send_quietly(protocol.send_items(uid, batch))
            self._send_quietly(
                protocol.send_error(uid, value) if failed else protocol.send_return(uid, None)
            )
        finally:
            del self._running[uid]
            self._producers.pop(uid, None)
            if self._nested:
                self._nested.discard(uid)
            self._pump_backlog()

    async def _run(self, call: Call, func: Callable[..., Any]) -> None:
        uid = call.uid
        _serving.set((self, uid))  # this task's own context: calls it makes are nested
        try:
            value: Any
            try:
                coro = func(*call.args, **call.kwargs) if call.kwargs else func(*call.args)
                value = await coro
                failed = False
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Cancelled by the peer's Cancel or by the close: no reply.
                    self._protocol.drop_incoming(uid)
                    return
                # The method raised CancelledError by itself: the caller
                # still waits for an answer, so it gets an error.
                value = RemoteError("CancelledError", "the call was cancelled")
                failed = True
            except Exception as exc:
                self._log_error(call, exc)
                value, failed = exc, True
            if self.closed is not None:
                self._protocol.drop_incoming(uid)
                return
            channel = self._channel
            turn = self._write_turn
            if channel.writing_paused or (turn is not None and turn.locked()):
                await self._answer(uid, value, failed)
            else:
                protocol = self._protocol
                frame = (
                    protocol.send_error(uid, value) if failed else protocol.send_return(uid, value)
                )
                self._send_quietly(frame)
        finally:
            del self._running[uid]
            if self._nested:
                self._nested.discard(uid)
            self._pump_backlog()

    def _log_error(self, call: Call, exc: BaseException) -> None:
        # Any peer can make a method raise at will, so this is never logged
        # above INFO (the option's check), and the traceback is formatted only
        # if someone listens at that level.
        if logger.isEnabledFor(self._error_level):
            logger.log(
                self._error_level,
                "%s: call to %r raised %s",
                self._label or "connection",
                call.path,
                type(exc).__name__,
                exc_info=exc,
            )

    async def _answer(self, uid: int, value: Any, failed: bool) -> None:
        """
        Answer call ``uid`` once the write buffer has room, in turn.

        The call keeps its slot meanwhile, so no other call starts: answers
        wait, not yet encoded, in the tasks that made them (at most
        ``max_calls``), and the write buffer holds at most one answer over
        its high-water mark.
        """
        if self._write_turn is None:
            self._write_turn = asyncio.Lock()
        channel = self._channel
        protocol = self._protocol
        try:
            async with self._write_turn:
                while channel.writing_paused and self.closed is None and not channel.is_closing:
                    try:
                        await channel.drain()
                    except ConnectionError:
                        break  # the connection is gone: the channel reports it
                if self.closed is None:
                    frame = (
                        protocol.send_error(uid, value)
                        if failed
                        else protocol.send_return(uid, value)
                    )
                    self._send_quietly(frame)
                    return
        except asyncio.CancelledError:
            protocol.drop_incoming(uid)  # cancelled by the peer or the close: no reply
            raise
        protocol.drop_incoming(uid)

    def _pump_backlog(self) -> None:
        backlog = self._backlog
        if not backlog:
            return
        max_calls = self._protocol.max_calls
        while backlog and self._counted_running() < max_calls:
            self._start(*backlog.popleft())
        if len(backlog) < max_calls and self._backlog_full:
            self._backlog_full = False
            self._update_reading()

    def _on_cancel(self, uid: int) -> None:
        task = self._running.get(uid)
        if task is not None:
            task.cancel()
            return
        for entry in self._backlog or ():
            if entry[0].uid == uid:
                assert self._backlog is not None
                self._backlog.remove(entry)
                self._producers.pop(uid, None)
                self._protocol.drop_incoming(uid)
                return

    # -- closing -------------------------------------------------------------

    def _finish(self, exc: ConnectionClosedError) -> None:
        """
        The connection is closing or gone: the one place where that takes effect.

        Called by whoever notices first (see the module's docstring), once;
        later calls do nothing. Records ``exc`` as :attr:`closed` (calls made
        from now on fail with a copy of it), stops the keepalive, fails every
        pending call with a copy of ``exc``, cancels every running call of
        the peer's and drops the backlog. It does not close the channel:
        the caller does, or the channel is gone already.
        """
        if self.closed is not None:
            return
        self.closed = exc
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(exc.code, exc.reason))
        self._pending.clear()
        for uid in list(self._inboxes):
            self._end_inbox(uid, ConnectionClosedError(exc.code, exc.reason))
        for task in self._running.values():
            task.cancel()
        if self._backlog is not None:
            self._backlog.clear()

    async def close(self, code: int, reason: str) -> None:
        """Close the connection: pending calls fail now, then the handshake runs."""
        self._finish(ConnectionClosedError(code, reason))
        await self._channel.close(code, reason)
        await asyncio.shield(self._done)


class _Inbox:
    """What the communicator keeps of one of our streams, while it runs."""

    __slots__ = (
        "end",
        "items",
        "lent",
        "received",
        "received_bytes",
        "sizes",
        "slot",
        "waiter",
        "window",
    )

    def __init__(self, slot: bool) -> None:
        self.items: deque[Any] = deque()
        """Items received, not taken yet (at most the credit granted)."""
        self.sizes: deque[int] = deque()
        """The bytes each of them came in (see :data:`STREAM_BUFFER_BYTES`)."""
        self.end: Any = None
        """None while the stream runs; then _DONE, or the exception it ended with."""
        self.waiter: asyncio.Future[None] | None = None
        self.window = STREAM_WINDOW
        """Items the producer may send ahead of the user (see :meth:`Communicator._grant`)."""
        self.lent = STREAM_WINDOW
        """Credit granted less items taken: the items the producer may still
        send plus those waiting here. More is granted when it falls to half
        the window."""
        self.received = 0
        """Items received since credit was last granted."""
        self.received_bytes = 0
        """The bytes of the frames that carried them."""
        self.slot = slot
        """Whether the stream holds one of the communicator's slots."""


class _Producer:
    """The credit of one of the peer's streams, running (or waiting) here."""

    __slots__ = ("credit", "waiter")

    def __init__(self, credit: int) -> None:
        self.credit = credit
        self.waiter: asyncio.Future[None] | None = None


@types.coroutine
def _awaiting(steps: Generator[Any, None, Any]) -> Generator[Any, None, Any]:
    """``steps`` (a generator :meth:`Communicator.start` made), made awaitable in a coroutine."""
    return (yield from steps)


def _cancel_step(step: Generator[Any, Any, Any]) -> None:
    """
    Cancel a generator step suspended in an ``await`` of the generator's: a
    CancelledError there, as a task's cancellation would raise, so that the
    generator ends and can be closed (an ``aclose()`` of an async generator
    in the middle of a step raises RuntimeError, and closing the step does
    not end it on Python 3.11).
    """
    try:
        step.throw(asyncio.CancelledError())
    except (Exception, asyncio.CancelledError):
        pass  # ended: what it raised does not matter, nobody waits for it


class _Resumed:
    """
    The rest of a generator step that did not finish at once, to await.

    :meth:`Communicator._produce` drives each step of the generator by hand
    (``send(None)``) to learn whether it finishes without waiting. When it
    yields instead (it awaits a future, a sleep...), the producer sends the
    items it holds and awaits this object, which hands what the step yielded
    to the task and goes on driving the step exactly as ``await`` would:
    values and exceptions (a cancellation) are passed through, and the
    step's result is the await's.
    """

    __slots__ = ("_step", "_yielded")

    def __init__(self, step: Generator[Any, Any, Any], yielded: Any) -> None:
        self._step = step
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        step, yielded = self._step, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                step.close()
                raise
            except BaseException as exc:
                try:
                    yielded = step.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = step.send(sent)
                except StopIteration as done:
                    return done.value


class Stream:
    """
    The consumer's end of one stream: an async iterator of the remote items.

    Made by :meth:`Communicator.stream`; iterate it with ``async for``. The
    stream call is sent on the first ``__anext__``. Leaving the loop early
    (the iterator dropped), :meth:`aclose`, a timeout or a cancellation of
    the iterating task cancels the stream on the peer. The items received
    before a remote error or a close are delivered first; then the error is
    raised (:exc:`~wsrpc.RemoteError`, :exc:`~wsrpc.ConnectionClosedError`).
    """

    __slots__ = ("_args", "_comm", "_finished", "_inbox", "_kwargs", "_path", "_timeout", "_uid")

    def __init__(
        self,
        communicator: Communicator,
        path: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self._comm = communicator
        self._path = path
        self._args = args
        self._kwargs = kwargs
        self._timeout = timeout
        self._uid = 0
        self._inbox: _Inbox | None = None
        self._finished = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        inbox = self._inbox
        if inbox is not None and inbox.items:
            # The fast path, an item is here already: _take(), inlined.
            value = inbox.items.popleft()
            comm = self._comm
            comm._stream_bytes -= inbox.sizes.popleft()  # _took(), inlined
            if comm._streams_full:
                comm._took(0)
            inbox.lent -= 1
            if inbox.lent <= inbox.window >> 1 and inbox.end is None:
                self._comm._grant(self._uid, inbox)
            return value
        timeout = self._timeout
        if timeout is None:
            return await self._next()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._next()
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
            self._stop()  # done already when the wait for an item was cut
            raise RpcTimeoutError(f"stream {self._path!r}: no item within {timeout} s") from None

    async def _next(self) -> Any:
        inbox = self._inbox
        if inbox is None:
            if self._finished:
                raise StopAsyncIteration
            self._uid, inbox = await self._comm._open_stream(self._path, self._args, self._kwargs)
            self._inbox = inbox
        while True:
            if inbox.items:
                return self._take(inbox)
            end = inbox.end
            if end is not None:
                self._finished = True
                self._inbox = None
                if end is _DONE:
                    raise StopAsyncIteration
                raise end
            waiter = inbox.waiter = self._comm._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self._stop()  # cancelled (or timed out): as a call, cancel it on the peer
                raise
            finally:
                inbox.waiter = None

    def _take(self, inbox: _Inbox) -> Any:
        """The next item of ``inbox``; grants credit when half the window was taken."""
        value = inbox.items.popleft()
        self._comm._took(inbox.sizes.popleft())
        inbox.lent -= 1
        if inbox.lent <= inbox.window >> 1 and inbox.end is None:
            self._comm._grant(self._uid, inbox)
        return value

    def _stop(self) -> None:
        inbox, self._inbox = self._inbox, None
        self._finished = True
        if inbox is not None:
            if inbox.end is None:
                self._comm._abandon(self._uid)
            else:
                self._comm._dropped(inbox)  # ended, with items never to be taken

    async def aclose(self) -> None:
        """Stop iterating: cancel the stream on the peer (its generator's finally runs)."""
        self._stop()

    def __del__(self) -> None:
        inbox = self._inbox
        if inbox is not None and (inbox.end is None or inbox.sizes):
            # Dropped mid-stream (a break out of the async for), maybe in
            # another thread (wsrpc.sync): cancel it from the loop, and
            # forget the bytes of the items it leaves.
            comm = self._comm
            try:
                if inbox.end is None:
                    comm._loop.call_soon_threadsafe(comm._abandon, self._uid)
                else:
                    comm._loop.call_soon_threadsafe(comm._dropped, inbox)
            except RuntimeError:
                pass  # the loop is closed: so is the connection

    def __repr__(self) -> str:
        return f"<wsrpc stream {self._path!r}>"
