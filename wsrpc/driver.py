"""
The driver: a proxy that turns attribute access and calls into remote calls.

``get_driver()`` returns a :class:`Driver` typed as the ``Remote`` protocol, so
``await driver.scientific.sqrt(16)`` type-checks against ``Remote`` and, at
run time, sends a call to the dotted path ``"scientific.sqrt"``.

A driver exists from the moment its acceptor or connector does; its calls
go through a :class:`Link`, which the owner points at the open connection
once there is one and at the close once it is gone. So a driver fetched
before ``accept()`` or ``connect()`` (TGrid's idiom: hand the provider its
peer's driver first) is the same object that works once the connection is
open, and holding it never keeps a closed connection alive.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, NoReturn

from .dispatch import is_remote_name
from .exceptions import ConnectionClosedError, StateError

__all__ = ["DeferredStream", "Driver", "Drivers", "Link", "RemoteCall"]

CallFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], Coroutine[Any, Any, Any]
]
"""``call(path, args, kwargs, timeout)``: the coroutine that makes one remote call."""

StreamFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], AsyncIterator[Any]
]
"""``stream(path, args, kwargs, timeout)``: the async iterator of one remote
stream; nothing is sent before its first ``__anext__``."""


class DeferredStream:
    """
    A stream opened on its first ``__anext__``, by awaiting ``opener()``.

    For links that must wait before they know where the stream goes (a
    reconnecting connector), and for refusals: an ``opener`` that raises
    makes the first step raise.
    """

    __slots__ = ("_inner", "_opener")

    def __init__(self, opener: Callable[[], Awaitable[AsyncIterator[Any]]]) -> None:
        self._opener: Callable[[], Awaitable[AsyncIterator[Any]]] | None = opener
        self._inner: AsyncIterator[Any] | None = None

    def __aiter__(self) -> DeferredStream:
        return self

    async def __anext__(self) -> Any:
        inner = self._inner
        if inner is None:
            opener, self._opener = self._opener, None
            if opener is None:
                raise StopAsyncIteration
            inner = self._inner = await opener()
        return await inner.__anext__()

    async def aclose(self) -> None:
        """Stop the stream (cancelling it on the peer, if it started)."""
        self._opener = None
        inner, self._inner = self._inner, None
        close = getattr(inner, "aclose", None)
        if close is not None:
            await close()


def _refused_stream(
    refuse: CallFunction,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> AsyncIterator[Any]:
    return DeferredStream(functools.partial(refuse, path, args, kwargs, timeout))


class RemoteCall(Coroutine[Any, Any, Any]):
    """
    What calling a driver returns: a call, or a stream, as the caller uses it.

    ``await call`` makes a plain call and returns its result (this object is
    a coroutine: ``asyncio.create_task()`` and ``gather()`` take it too);
    ``async for item in call`` makes a stream call instead and iterates the
    items the remote async generator yields. The caller's Protocol says
    which: ``async def add(...) -> int`` is awaited, ``def ticks(...) ->
    AsyncIterator[int]`` iterated, and mypy holds the caller to it.

    Nothing is sent until the call is awaited or iterated. A call that is
    neither is reported by Python's "coroutine ... was never awaited"
    warning, as a forgotten coroutine is.
    """

    __slots__ = ("_args", "_coro", "_driver", "_kwargs", "_stream")

    # Made by Driver.__call__ alone, which fills the slots itself: a Python
    # __init__ runs as a call from C, some 550 of the 39,000 instructions a
    # client spends on a call (callgrind).
    _coro: Coroutine[Any, Any, Any]
    _driver: Driver
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _stream: AsyncIterator[Any]  # set once iterated (see __aiter__)

    @property
    def coroutine(self) -> Coroutine[Any, Any, Any]:
        """The coroutine of the plain call (what ``await`` runs)."""
        return self._coro

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(
        self,
        typ: Any,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        stream: AsyncIterator[Any] | None = getattr(self, "_stream", None)  # unset: not iterated
        if stream is None:
            self._coro.close()  # iterated, not awaited: no "never awaited" warning
            stream = self._stream = self._driver._open_stream(self._args, self._kwargs)
        return stream

    async def aclose(self) -> None:
        """Stop the stream this call was iterated as (cancelling it on the peer)."""
        self._coro.close()
        stream = getattr(self, "_stream", None)
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"<wsrpc.RemoteCall {self._driver!r}>"


async def _refuse_not_open(
    why: str, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
) -> NoReturn:
    raise StateError(f"cannot call {path!r}: {why}")


async def _refuse_closed(
    code: int,
    reason: str,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> NoReturn:
    raise ConnectionClosedError(code, reason)


class Link:
    """
    Where the calls of one connection's drivers go.

    One per acceptor or connector, made with it. Its :attr:`call` is, in
    turn: a refusal with :exc:`StateError` (not open yet), the open
    connection's own call function (so an open call costs no extra step),
    and a refusal with :exc:`ConnectionClosedError` (closed). The refusals
    are partials of module functions, not bound methods, so that nothing in
    a closed link points back at the connection or at the link itself.
    """

    __slots__ = ("call", "stream")

    def __init__(self, not_open: str) -> None:
        """``not_open`` ends the message of calls made before the connection opens."""
        self.call: CallFunction = functools.partial(_refuse_not_open, not_open)
        self.stream: StreamFunction = functools.partial(_refused_stream, self.call)

    def open(self, call: CallFunction, stream: StreamFunction) -> None:
        """Send calls with ``call`` and streams with ``stream`` from now on."""
        self.call = call
        self.stream = stream

    def close(self, code: int, reason: str) -> None:
        """Fail calls with ``ConnectionClosedError(code, reason)`` from now on."""
        self.call = functools.partial(_refuse_closed, code, reason)
        self.stream = functools.partial(_refused_stream, self.call)


_new_call = object.__new__
"""Makes an empty :class:`RemoteCall` (see there)."""


class Driver:
    """
    Proxy for the remote provider, or for one object or method inside it.

    Attribute access returns a child driver for the longer path (cached, so
    repeated calls cost one dictionary lookup); calling a driver returns a
    :class:`RemoteCall`: awaited, it sends the call and resolves to the
    remote result; iterated (``async for``), it streams the items of a
    remote async generator. Either raises :exc:`~wsrpc.StateError` if the
    connection is not open yet and :exc:`~wsrpc.ConnectionClosedError` once
    it is closed.

    Names that start or end with ``_`` raise :exc:`AttributeError` locally
    (see :func:`wsrpc.dispatch.is_remote_name`).
    """

    # Its own attributes in slots, read on every call; the child drivers in
    # the instance dict, where attribute access finds them without calling
    # __getattr__. (Slot names with two leading underscores are mangled as
    # the attributes are.)
    __slots__ = ("__dict__", "__link", "__path", "__timeout")

    def __init__(self, link: Link, path: str, timeout: float | None) -> None:
        self.__link = link
        self.__path = path
        self.__timeout = timeout

    def __getattr__(self, name: str) -> Driver:
        if not is_remote_name(name):
            raise AttributeError(name)
        path = f"{self.__path}.{name}" if self.__path else name
        child = Driver(self.__link, path, self.__timeout)
        # Cache in the instance dict: __getattr__ is not consulted next time.
        self.__dict__[name] = child
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> RemoteCall:
        if not self.__path:
            raise TypeError("the driver itself is not callable; call one of its methods")
        call = _new_call(RemoteCall)
        call._coro = self.__link.call(self.__path, args, kwargs, self.__timeout)
        call._driver = self
        call._args = args
        call._kwargs = kwargs
        return call

    def _open_stream(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """The stream of this method with these arguments (see :class:`RemoteCall`)."""
        return self.__link.stream(self.__path, args, kwargs, self.__timeout)

    def __repr__(self) -> str:
        return f"<wsrpc.Driver {self.__path or '(root)'}>"


class Drivers:
    """
    The drivers of one connection, as its owner (acceptor or connector) holds them.

    Made with the owner; :meth:`get` works from then on. The owner calls
    :meth:`open` once the connection is open and :meth:`close` once it is
    gone. The shared root driver is cached here rather than in the
    :class:`Link`, which it points at: a cache there would be a cycle.
    """

    __slots__ = ("_link", "_not_open", "_plain", "_root")

    def __init__(self, not_open: str) -> None:
        self._not_open = not_open
        self._link = Link(not_open)
        # Where calls from elsewhere (:meth:`call`) go: the same link, or,
        # when the drivers' calls are converted, one that sends values as
        # they come (they were converted where the call was made).
        self._plain = self._link
        self._root: Driver | None = None

    def get(self, timeout: float | None) -> Driver:
        """
        The root driver: the shared one, or a new one whose calls time out
        after ``timeout`` seconds.

        Raises:
            ValueError: ``timeout`` is not positive.
        """
        if timeout is not None:
            if not timeout > 0:
                raise ValueError(f"timeout must be positive or None, not {timeout!r}")
            return Driver(self._link, "", timeout)
        if self._root is None:
            self._root = Driver(self._link, "", None)
        return self._root

    def open(
        self,
        call: CallFunction,
        stream: StreamFunction,
        convert: Callable[[CallFunction, StreamFunction], tuple[CallFunction, StreamFunction]]
        | None = None,
    ) -> None:
        """
        The connection is open: calls go through ``call``, streams through
        ``stream``; the drivers' own pass through ``convert`` first, when
        given (see :class:`wsrpc.validation.RemoteTypes`).
        """
        if convert is None:
            self._link.open(call, stream)
            if self._plain is not self._link:
                self._plain.open(call, stream)
            return
        if self._plain is self._link:
            self._plain = Link(self._not_open)
        self._plain.open(call, stream)
        self._link.open(*convert(call, stream))

    def call(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Coroutine[Any, Any, Any]:
        """
        Call ``path`` as a driver would, with a path from elsewhere (another
        node), sending the values as they are: each of the path's names is
        checked as driver attributes are.

        Raises:
            AttributeError: a name starts or ends with ``_``, or is empty.
        """
        if not all(is_remote_name(name) for name in path.split(".")):
            raise AttributeError(f"{path!r} is not a remote path")
        return self._plain.call(path, args, kwargs, timeout)

    def close(self, code: int, reason: str) -> None:
        """The connection is gone: calls fail with ``ConnectionClosedError(code, reason)``."""
        self._link.close(code, reason)
        if self._plain is not self._link:
            self._plain.close(code, reason)
