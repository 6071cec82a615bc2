"""
Blocking wsrpc, for scripts and threaded programs.

wsrpc runs on asyncio: every connection belongs to one event loop and its
objects may only be used from that loop's thread. This module is the bridge
for code that runs in other threads.

* :class:`WebSocketConnector` is a blocking client with the API of
  :class:`wsrpc.WebSocketConnector`: ``connect(url)``, ``get_driver()``,
  ``close()``. It runs its own event loop in a daemon thread, started by
  :meth:`~WebSocketConnector.connect` and stopped once the connection is
  closed, by :meth:`~WebSocketConnector.close` or by the server. Its driver's
  methods block the calling thread and return the result directly.
* :class:`ThreadsafeAcceptor` wraps a server-side
  :class:`wsrpc.WebSocketAcceptor` so that threads other than the server's
  event loop thread can call that client's provider and close the
  connection, blocking until done.

The threading model, for both:

* Every blocking method submits a coroutine to the event loop, as
  :func:`asyncio.run_coroutine_threadsafe` does, and waits for it. Any number of
  threads may use one connector or acceptor, and the drivers obtained from
  it, at once: their calls travel concurrently over the one connection, just
  as concurrent tasks' calls do.
* Results and errors are those of the async API: :exc:`~wsrpc.RemoteError`,
  :exc:`~wsrpc.RpcTimeoutError`, :exc:`~wsrpc.ConnectionClosedError`, and so
  on. Once the event loop is gone (the connector closed, or the server's loop
  closed), a call raises :exc:`~wsrpc.ConnectionClosedError` at once instead
  of waiting for ever.
* A thread interrupted while it waits for a call (``KeyboardInterrupt`` in the
  main thread) cancels the call, on the remote side too, as cancelling an
  awaiting task does.
* The provider a sync connector serves runs on the connector's event loop
  thread, like every wsrpc provider: its plain methods must not block (mark
  blocking ones with :func:`wsrpc.blocking`). The blocking methods of this
  module called from that event loop's own thread, for instance from inside
  a provider method, raise :exc:`~wsrpc.StateError`: waiting there would
  wait for ever, since the loop cannot run the call while it waits.

Layer: a front end (docs/architecture.md). May import any of wsrpc;
nothing in wsrpc imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as _ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, final

from . import connector as _aio
from ._options import (
    DEFAULT_CALL_ERROR_LOG_LEVEL,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_DECODE_BUDGET,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
)
from ._portal import LoopThread, Portal, PortalSlot
from ._transports import TransportName, tls_context_for
from ._util import check_close
from .acceptor import WebSocketAcceptor, loop_of
from .codecs import Codec, CodecName
from .dispatch import is_remote_name
from .driver import Driver
from .exceptions import ConnectionClosedError, RemoteError, RpcTimeoutError, StateError
from .messages import CloseCode
from .reconnect import ReconnectPolicy
from .states import AcceptorState, CloseInfo, ConnectorState
from .validation import type_argument

__all__ = ["SyncDriver", "SyncStream", "ThreadsafeAcceptor", "WebSocketConnector"]

HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")
T = TypeVar("T")

_thread_ids = itertools.count(1)


class SyncDriver:
    """
    Blocking proxy for a remote provider, or for one object or method in it.

    Returned, typed as the user's protocol, by
    :meth:`WebSocketConnector.get_driver` and
    :meth:`ThreadsafeAcceptor.get_driver`. Like :class:`wsrpc.driver.Driver`,
    attribute access returns a (cached) child proxy for the longer dotted
    path, and names that start or end with ``_`` raise :exc:`AttributeError`.
    Calling a method proxy sends the call and blocks the calling thread until
    the result arrives, then returns it (or raises the call's error).

    Safe to use from any number of threads at once, except the event loop's
    own thread, where calls raise :exc:`~wsrpc.StateError`.
    """

    def __init__(self, portal: PortalSlot, driver: Driver, path: str = "") -> None:
        self.__portal = portal
        self.__driver = driver
        self.__path = path

    def __getattr__(self, name: str) -> SyncDriver:
        if not is_remote_name(name):
            raise AttributeError(name)
        path = f"{self.__path}.{name}" if self.__path else name
        child = SyncDriver(self.__portal, getattr(self.__driver, name), path)
        # Cache in the instance dict: __getattr__ is not consulted next time.
        self.__dict__[name] = child
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The async driver raises TypeError for the root before making a call.
        action = f"call {self.__path!r}"
        call = self.__driver(*args, **kwargs)
        try:
            portal = self.__portal.get(action)
        except StateError:
            call.close()  # never scheduled: no "never awaited" warning
            raise
        try:
            return portal.run(call, action)
        except RemoteError as exc:
            if exc.name != "StreamRequired":
                raise
        # The remote method is an async generator (it refused the plain
        # call without running): stream it instead, as a blocking iterator.
        return SyncStream(self.__portal, self.__driver, args, kwargs, f"stream {self.__path!r}")

    def __repr__(self) -> str:
        return f"<wsrpc.sync.SyncDriver {self.__path or '(root)'}>"


class SyncStream(Iterator[Any]):
    """
    A remote stream as a blocking iterator: what a :class:`SyncDriver` returns
    for a method that is an async generator on the peer.

    ``for item in driver.ticks(3)`` blocks for each item in turn. Breaking
    out of the loop (the iterator dropped), :meth:`close` or leaving a
    ``with`` block cancels the stream on the peer. Errors are those of the
    async streams: :exc:`~wsrpc.RemoteError` after the items sent before
    it, :exc:`~wsrpc.ConnectionClosedError`, :exc:`~wsrpc.RpcTimeoutError`.
    A thread interrupted while it waits cancels the stream.
    """

    def __init__(
        self,
        portal: PortalSlot,
        driver: Driver,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        action: str,
    ) -> None:
        self._portal = portal
        self._driver = driver
        self._args = args
        self._kwargs = kwargs
        self._action = action
        self._stream: AsyncIterator[Any] | None = None
        self._done = False

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        portal = self._portal.get(self._action)
        item = portal.run(self._step(), self._action)
        if item is _END:
            self._done = True
            raise StopIteration
        return item

    async def _step(self) -> Any:
        # On the loop: the async stream is made and driven from there only.
        stream = self._stream
        if stream is None:
            stream = self._stream = self._driver(*self._args, **self._kwargs).__aiter__()
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return _END
        except BaseException:
            self._done = True
            raise

    def close(self) -> None:
        """Stop the stream: cancel it on the peer (its generator's finally runs)."""
        self._done = True
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            portal = self._portal.get(self._action)
        except (StateError, ConnectionClosedError):
            return  # the connection is gone, and the stream with it
        close = getattr(stream, "aclose", None)
        if close is not None:
            try:
                portal.run(close(), self._action)
            except ConnectionClosedError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_END: Any = object()


class WebSocketConnector(Generic[HeaderT, ProviderT, RemoteT]):
    """
    A blocking client of a wsrpc server, usable from several threads at once.

    The constructor is that of :class:`wsrpc.WebSocketConnector`, and so are
    the methods, except that they block instead of being awaited. ``Remote``
    is a protocol whose methods are plain ``def``, since the driver's calls
    return their results directly::

        class CalculatorRemote(Protocol):
            def add(self, a: int, b: int) -> int: ...

        with wsrpc.sync.WebSocketConnector[Header, None, CalculatorRemote](
            {"token": token}
        ) as connector:
            connector.connect("ws://127.0.0.1:8000/")
            calc = connector.get_driver()
            print(calc.add(1, 2))  # 3

    The connector runs an event loop in a daemon thread, from
    :meth:`connect` until the connection is closed, and drives an async
    :class:`wsrpc.WebSocketConnector` on it. ``provider``'s methods run on
    that thread; see the module's documentation for the threading model.
    Without ``reconnect``, a connector connects once; with it, it reconnects
    by itself after a lost connection, as the async connector does, and its
    thread runs until the final close. A callable header runs on the
    connector's event loop thread: it must not block.
    """

    def __init__(
        self,
        header: HeaderT | Callable[[], HeaderT | Awaitable[HeaderT]],
        provider: ProviderT | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        compression: bool = False,
        send_tracebacks: bool = False,
        call_timeout: float | None = None,
        call_error_log_level: int = DEFAULT_CALL_ERROR_LOG_LEVEL,
        decode_budget: float | None = DEFAULT_DECODE_BUDGET,
        codec: CodecName | Codec = "msgpack",
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        transport: TransportName = "websockets",
        reconnect: bool | ReconnectPolicy = False,
        validate: bool = False,
    ) -> None:
        self._inner: _aio.WebSocketConnector[HeaderT, ProviderT, Any] = _aio.WebSocketConnector(
            header,
            provider,
            max_message_size=max_message_size,
            max_concurrent_calls=max_concurrent_calls,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            stall_timeout=stall_timeout,
            compression=compression,
            send_tracebacks=send_tracebacks,
            call_timeout=call_timeout,
            call_error_log_level=call_error_log_level,
            decode_budget=decode_budget,
            codec=codec,
            additional_headers=additional_headers,
            transport=transport,
            reconnect=reconnect,
            validate=validate,
        )
        self._lock = threading.Lock()
        self._portal: LoopThread | None = None
        self._portal_slot = PortalSlot(
            None,
            "the connector is not connected; calls through this driver work once "
            "connect() has returned",
        )
        self._driver: SyncDriver | None = None
        self._done = threading.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def header(self) -> HeaderT:
        """The header this connector sends."""
        return self._inner.header

    @property
    def response_headers(self) -> Mapping[str, str]:
        """
        The HTTP headers of the server's upgrade response (read-only,
        case-insensitive); empty before connect().
        """
        return self._inner.response_headers

    @property
    def state(self) -> ConnectorState:
        """Where the connector stands (a snapshot); see :class:`~wsrpc.ConnectorState`."""
        return self._inner.state

    @property
    def is_closed(self) -> bool:
        """Whether the connector is closing or closed: calls through it fail."""
        return self._inner.is_closed

    @property
    def close_info(self) -> CloseInfo | None:
        """How the connection ended, once ``CLOSED``; None before."""
        return self._inner.close_info

    def _start(self) -> LoopThread:
        """Start the event loop thread; StateError if it was started before."""
        with self._lock:
            if self._portal is not None:
                raise StateError(
                    "cannot connect: connect() or close() was called already "
                    f"(the connector is {self._inner.state.value})"
                )
            self._portal = LoopThread(
                f"wsrpc.sync.WebSocketConnector-{next(_thread_ids)}",
                self._closed_error,
                self._done.set,
            )
            # From here on, drivers fetched earlier reach the loop, where the
            # async driver tells "not connected yet" from "closed".
            self._portal_slot.portal = self._portal
            return self._portal

    @property
    def url(self) -> str:
        """The URL given to :meth:`connect`; empty before it."""
        return self._inner.url

    def connect(
        self, url: str, *, timeout: float | None = 10.0, ssl: _ssl.SSLContext | None = None
    ) -> None:
        """
        Open the WebSocket to ``url``, send the header and wait for the verdict.

        Starts the connector's event loop thread; a connect that fails stops
        it again. ``ssl``: the TLS context of a ``wss://`` URL, as for
        :meth:`wsrpc.WebSocketConnector.connect`.

        Raises:
            StateError: the connector was already used.
            ValueError: ``ssl`` with a ``ws://`` URL.
            ConnectError, RejectedError, EncodeError, RpcTimeoutError: as for
                :meth:`wsrpc.WebSocketConnector.connect`.
        """
        tls_context_for(url, ssl)  # ValueError before any thread starts
        portal = self._start()
        connected = False
        try:
            portal.run(self._connect(url, timeout, ssl), "connect")
            connected = True
        finally:
            if not connected:
                portal.stop()

    async def _connect(self, url: str, timeout: float | None, ssl: _ssl.SSLContext | None) -> None:
        # The Remote type parameter is this object's (validate=True converts from it).
        remote = type_argument(self, 2)
        if remote is not Any:
            self._inner._remote = remote
        await self._inner.connect(url, timeout=timeout, ssl=ssl)
        self._watcher = asyncio.get_running_loop().create_task(self._stop_when_closed())

    async def _stop_when_closed(self) -> None:
        # However the connection ends, the loop has nothing left to do.
        await self._inner.join()
        assert self._portal is not None
        self._portal.stop_soon()

    def get_driver(self, *, timeout: float | None = None) -> RemoteT:
        """
        The blocking proxy for the server's provider, typed as ``Remote``.

        Does not block, and works in every state: calls through a driver
        fetched before :meth:`connect` raise :exc:`~wsrpc.StateError` until
        ``connect()`` has returned. Args and errors as for
        :meth:`wsrpc.WebSocketConnector.get_driver`.
        """
        driver = cast(Driver, self._inner.get_driver(timeout=timeout))
        if timeout is not None:
            return cast(RemoteT, SyncDriver(self._portal_slot, driver))
        with self._lock:
            if self._driver is None:
                self._driver = SyncDriver(self._portal_slot, driver)
            return cast(RemoteT, self._driver)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """
        Close the connection and stop the event loop thread; return once done.

        Every call pending on either side fails at once with
        :exc:`~wsrpc.ConnectionClosedError`. The thread stops once the
        provider's :func:`wsrpc.blocking` methods still running in worker
        threads have returned (unless one of them is closing). Idempotent;
        closing a connector that never connected just marks it ``CLOSED``.

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
            StateError: :meth:`connect` is in progress in another thread, or
                this is the connector's own event loop thread.
        """
        check_close(code, reason)
        with self._lock:
            portal = self._portal
            if portal is None:  # never connected: mark it closed, on a loop
                portal = self._portal = LoopThread(
                    f"wsrpc.sync.WebSocketConnector-{next(_thread_ids)}",
                    self._closed_error,
                    self._done.set,
                )
                self._portal_slot.portal = portal
        try:
            portal.run(self._inner.close(code, reason), "close")
        except ConnectionClosedError:
            pass  # the loop has stopped: the connection is closed already
        portal.stop()

    def join(self, timeout: float | None = None) -> CloseInfo:
        """
        Wait until the connection is closed and the event loop thread has
        stopped; return how the connection ended.

        The thread stops once the provider's :func:`wsrpc.blocking` methods
        still running in worker threads have returned: with a ``timeout``,
        this returns when the connection is closed even if one has not.

        Raises:
            RpcTimeoutError: still open after ``timeout`` seconds.
            StateError: called from the connector's own event loop thread.
        """
        portal = self._portal
        if portal is not None:
            portal.check_thread("join")
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._done.wait(timeout):
            raise RpcTimeoutError(f"the connection is still open after {timeout} s")
        portal = self._portal
        assert portal is not None
        # The thread is ending; it may still wait for wsrpc.blocking methods.
        portal.join_thread(None if deadline is None else max(0.0, deadline - time.monotonic()))
        info = self._inner.close_info
        assert info is not None
        return info

    def _closed_error(self) -> ConnectionClosedError:
        info = self._inner.close_info
        if info is None:  # pragma: no cover - the loop stops after the close
            return ConnectionClosedError(CloseCode.ABNORMAL, "the connector's event loop stopped")
        return ConnectionClosedError(info.code, info.reason)

    def __repr__(self) -> str:
        return f"<wsrpc.sync.WebSocketConnector {self.state.value}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except StateError:
            pass  # connect() is in progress in another thread: it is that thread's to end


SyncRemoteT = TypeVar("SyncRemoteT")


@final
class ThreadsafeAcceptor(Generic[SyncRemoteT]):
    """
    A server-side connection, usable from threads other than the server's.

    Wraps a :class:`wsrpc.WebSocketAcceptor` (any thread may wrap one) and
    offers its blocking counterparts: :meth:`get_driver`, whose calls block
    and return results, :meth:`close` and :meth:`join`. ``SyncRemote`` is a
    protocol of the client's provider whose methods are plain ``def``::

        class ClientRemote(Protocol):
            def on_message(self, text: str) -> None: ...

        async def handler(acceptor: wsrpc.WebSocketAcceptor[Header, Room, Any]) -> None:
            await acceptor.accept(Room())
            workers.put(wsrpc.sync.ThreadsafeAcceptor[ClientRemote](acceptor))

        # in a worker thread:
        client = workers.get()
        client.get_driver().on_message("hello")
        client.close(4000, "done")

    Its blocking methods raise :exc:`~wsrpc.StateError` on the server's
    event loop thread, where the acceptor's own async API is the one to use.
    Once the server's event loop is closed, they raise
    :exc:`~wsrpc.ConnectionClosedError` at once.
    """

    def __init__(self, acceptor: WebSocketAcceptor[Any, Any, Any]) -> None:
        self._acceptor = acceptor
        self._portal = Portal(loop_of(acceptor), "this acceptor", self._closed_error)
        self._portal_slot = PortalSlot(self._portal)
        self._lock = threading.Lock()
        self._driver: SyncDriver | None = None

    @property
    def acceptor(self) -> WebSocketAcceptor[Any, Any, Any]:
        """The wrapped acceptor; use it only from the server's event loop thread."""
        return self._acceptor

    @property
    def id(self) -> int:
        """The acceptor's :attr:`~wsrpc.WebSocketAcceptor.id`."""
        return self._acceptor.id

    @property
    def state(self) -> AcceptorState:
        """Where the connection stands (a snapshot); see :class:`~wsrpc.AcceptorState`."""
        return self._acceptor.state

    @property
    def is_closed(self) -> bool:
        """Whether the connection is closing or closed: calls through it fail."""
        return self._acceptor.is_closed

    @property
    def close_info(self) -> CloseInfo | None:
        """How the connection ended, once ``CLOSED``; None before."""
        return self._acceptor.close_info

    def get_driver(self, *, timeout: float | None = None) -> SyncRemoteT:
        """
        The blocking proxy for the client's provider, typed as ``SyncRemote``.

        Does not block. Args and errors as for
        :meth:`wsrpc.WebSocketAcceptor.get_driver`.
        """
        driver = cast(Driver, self._acceptor.get_driver(timeout=timeout))
        if timeout is not None:
            return cast(SyncRemoteT, SyncDriver(self._portal_slot, driver))
        with self._lock:
            if self._driver is None:
                self._driver = SyncDriver(self._portal_slot, driver)
            return cast(SyncRemoteT, self._driver)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """
        Close the connection; return once it is closed and its close hooks
        have run. Every pending call on both sides fails at once. Idempotent;
        does nothing once the server's event loop is closed.

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
            StateError: called from the server's event loop thread.
        """
        check_close(code, reason)
        try:
            self._portal.run(self._acceptor.close(code, reason), "close")
        except ConnectionClosedError:
            pass  # the server's loop is closed: nothing is left to close

    def join(self, timeout: float | None = None) -> CloseInfo:
        """
        Wait until the connection is closed and its close hooks have run;
        return how it ended.

        Raises:
            RpcTimeoutError: still open after ``timeout`` seconds.
            ConnectionClosedError: the server's event loop closed first.
            StateError: called from the server's event loop thread.
        """
        info = self._acceptor.close_info
        if info is not None and self._acceptor.state is AcceptorState.CLOSED:
            return info  # no need for the loop, which may be closed by now
        return self._portal.run(self._join(timeout), "join")

    async def _join(self, timeout: float | None) -> CloseInfo:
        try:
            async with asyncio.timeout(timeout):
                return await self._acceptor.join()
        except TimeoutError:
            raise RpcTimeoutError(f"the connection is still open after {timeout} s") from None

    def _closed_error(self) -> ConnectionClosedError:
        info = self._acceptor.close_info
        if info is None:
            return ConnectionClosedError(CloseCode.ABNORMAL, "the server's event loop is closed")
        return ConnectionClosedError(info.code, info.reason)

    def __repr__(self) -> str:
        return f"<wsrpc.sync.ThreadsafeAcceptor id={self.id} {self.state.value}>"
