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
import os
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, NoReturn, Protocol

from .dispatch import is_remote_name
from .exceptions import ConnectionClosedError, StateError

__all__ = ["Conversion", "DeferredStream", "Driver", "Drivers", "Link", "RemoteCall"]

CallFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], Coroutine[Any, Any, Any]
]
"""``call(path, args, kwargs, timeout)``: the coroutine that makes one remote call."""

StartFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], Generator[Any, None, Any]
]
"""``start(path, args, kwargs, timeout)``: one remote call as the iterator an
``await`` runs (its return value is the call's result): what a driver's
call runs when it is awaited. A :data:`CallFunction`'s coroutine, iterated,
is one (see :func:`_started`); an open connection's is a generator, a frame
fewer per call than a coroutine wrapped by ``__await__``."""

StreamFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], AsyncIterator[Any]
]
"""``stream(path, args, kwargs, timeout)``: the async iterator of one remote
stream; nothing is sent before its first ``__anext__``."""


class Conversion(Protocol):
    """
    What converts the values of a connection's calls to and from the
    caller's types (:class:`wsrpc.validation.RemoteTypes`, with
    ``validate=True``): it wraps the functions that send them.
    """

    def wrap(
        self, call: CallFunction, stream: StreamFunction
    ) -> tuple[CallFunction, StreamFunction]: ...

    def wrap_start(self, start: StartFunction) -> StartFunction: ...


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

    Nothing is sent until the call is awaited or iterated, and it is
    either, once. A call that is neither is a forgotten ``await``: mypy
    reports it (``unused-coroutine``), and so does this object, with a
    :exc:`RuntimeWarning` "... was never awaited" when it is dropped, in
    asyncio's debug mode (``python -X dev`` or ``PYTHONASYNCIODEBUG=1``).
    Only then: unlike a coroutine, this object is made of nothing that
    warns by itself, and a check when every call is dropped cost as much as
    the coroutine it saved.
    """

    __slots__ = ("_args", "_kwargs", "_route", "_started", "_stream")

    # Made by Driver.__call__ alone, which fills the slots itself: a Python
    # __init__ runs as a call from C, some 550 instructions per call on the
    # client (callgrind).
    _route: _Route
    _args: tuple[Any, ...] | None  # None once awaited, iterated or closed
    _kwargs: dict[str, Any]
    _started: Generator[Any, None, Any]  # set by send() and throw() (see send)
    _stream: AsyncIterator[Any]  # set once iterated (see __aiter__)

    def __await__(self) -> Generator[Any, None, Any]:
        args = self._args
        if args is None:
            raise RuntimeError("cannot reuse already awaited coroutine")
        self._args = None
        route = self._route
        # Read, then called: a method call on a slot's value is looked up
        # the slow way, as a method of the link that it is not.
        start = route.link.start
        return start(route.path, args, self._kwargs, route.timeout)

    # The coroutine protocol, for asyncio.create_task(), gather() and
    # run_coroutine_threadsafe(), which step a coroutine rather than await it.

    def send(self, value: Any) -> Any:
        try:
            started = self._started
        except AttributeError:
            started = self._started = self.__await__()
        return started.send(value)

    def throw(
        self,
        typ: Any,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        try:
            started = self._started
        except AttributeError:
            # Thrown into before its first step: raised there, as into a
            # coroutine that has not started, and nothing is sent.
            self._args = None
            started = self._started = _not_started()
        if val is None and tb is None:
            return started.throw(typ)
        return started.throw(typ, val, tb)

    def close(self) -> None:
        started = getattr(self, "_started", None)
        if started is not None:
            started.close()
        self._args = None

    def __aiter__(self) -> AsyncIterator[Any]:
        stream: AsyncIterator[Any] | None = getattr(self, "_stream", None)  # unset: not iterated
        if stream is None:
            args = self._args
            if args is None:
                raise RuntimeError("cannot iterate a call that was awaited or closed")
            self._args = None
            route = self._route
            stream = self._stream = route.link.stream(route.path, args, self._kwargs, route.timeout)
        return stream

    async def aclose(self) -> None:
        """Stop the stream this call was iterated as (cancelling it on the peer)."""
        self.close()
        stream = getattr(self, "_stream", None)
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"<wsrpc.RemoteCall {self._route.path}>"


class _ReportedCall(RemoteCall):
    """A :class:`RemoteCall` that warns when it is dropped unused (debug mode only)."""

    __slots__ = ()

    def __del__(self) -> None:
        if self._args is not None:
            warnings.warn(
                f"wsrpc call {self._route.path!r} was never awaited",
                RuntimeWarning,
                stacklevel=1,
            )


def _debug_mode() -> bool:
    """Whether asyncio runs in debug mode by default (what asyncio itself tests)."""
    return sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )


_call_type: type[RemoteCall] = _ReportedCall if _debug_mode() else RemoteCall
"""What a driver's call makes: a :class:`RemoteCall`, warning when unused in debug mode."""


def _not_started() -> Generator[Any, None, Any]:
    """What raises whatever is thrown into it: a call thrown into before its first step."""
    yield  # pragma: no cover - never resumed: throw() before the first step raises


def _started(
    call: CallFunction,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Generator[Any, None, Any]:
    """The :data:`StartFunction` of a :data:`CallFunction`: its coroutine's iterator."""
    return call(path, args, kwargs, timeout).__await__()


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
    and a refusal with :exc:`ConnectionClosedError` (closed); :attr:`start`
    is the same call as a :data:`StartFunction`, what an awaited driver call
    runs. The refusals are partials of module functions, not bound methods,
    so that nothing in a closed link points back at the connection or at
    the link itself.
    """

    __slots__ = ("call", "start", "stream")

    def __init__(self, not_open: str) -> None:
        """``not_open`` ends the message of calls made before the connection opens."""
        self.call: CallFunction = functools.partial(_refuse_not_open, not_open)
        self.start: StartFunction = functools.partial(_started, self.call)
        self.stream: StreamFunction = functools.partial(_refused_stream, self.call)

    def open(
        self, call: CallFunction, stream: StreamFunction, start: StartFunction | None = None
    ) -> None:
        """
        Send calls with ``call`` and streams with ``stream`` from now on;
        awaited calls with ``start``, the same calls (``call``'s own
        coroutine, iterated, when None).
        """
        self.call = call
        self.start = functools.partial(_started, call) if start is None else start
        self.stream = stream

    def close(self, code: int, reason: str) -> None:
        """Fail calls with ``ConnectionClosedError(code, reason)`` from now on."""
        self.call = functools.partial(_refuse_closed, code, reason)
        self.start = functools.partial(_started, self.call)
        self.stream = functools.partial(_refused_stream, self.call)


_new_call = object.__new__
"""Makes an empty :class:`RemoteCall` (see there)."""


class _Route:
    """Where the calls of one driver go: its link, its dotted path, their timeout."""

    __slots__ = ("link", "path", "timeout")

    def __init__(self, link: Link, path: str, timeout: float | None) -> None:
        self.link = link
        self.path = path
        self.timeout = timeout


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

    # The child drivers in the instance dict, where attribute access finds
    # them without calling __getattr__; the rest in one object, read once
    # per call: a class with __getattr__ has each of its attributes looked
    # up the slow way (about 200 instructions, callgrind), and a call read
    # three. The slot's name starts with "_", which no remote name does: it
    # never hides a remote method.
    __slots__ = ("__dict__", "_route")

    def __init__(self, link: Link, path: str, timeout: float | None) -> None:
        self._route = _Route(link, path, timeout)

    def __getattr__(self, name: str) -> Driver:
        if not is_remote_name(name):
            raise AttributeError(name)
        route = self._route
        path = f"{route.path}.{name}" if route.path else name
        child = Driver(route.link, path, route.timeout)
        # Cache in the instance dict: __getattr__ is not consulted next time.
        self.__dict__[name] = child
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> RemoteCall:
        route = self._route
        if not route.path:
            raise TypeError("the driver itself is not callable; call one of its methods")
        call = _new_call(_call_type)
        call._route = route
        call._args = args
        call._kwargs = kwargs
        return call

    def __repr__(self) -> str:
        return f"<wsrpc.Driver {self._route.path or '(root)'}>"


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
        convert: Conversion | None = None,
        start: StartFunction | None = None,
    ) -> None:
        """
        The connection is open: calls go through ``call``, streams through
        ``stream``, awaited driver calls through ``start`` when given (the
        same calls, see :class:`Link`); the drivers' own pass through
        ``convert`` first, when given.
        """
        if convert is None:
            self._link.open(call, stream, start)
            if self._plain is not self._link:
                self._plain.open(call, stream, start)
            return
        if self._plain is self._link:
            self._plain = Link(self._not_open)
        self._plain.open(call, stream, start)
        converted_call, converted_stream = convert.wrap(call, stream)
        self._link.open(
            converted_call,
            converted_stream,
            None if start is None else convert.wrap_start(start),
        )

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
