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
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from .dispatch import is_remote_name
from .exceptions import ConnectionClosedError, StateError

__all__ = ["Driver", "Drivers", "Link"]

CallFunction = Callable[
    [str, tuple[Any, ...], dict[str, Any], "float | None"], Coroutine[Any, Any, Any]
]
"""``call(path, args, kwargs, timeout)``: the coroutine that makes one remote call."""


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

    __slots__ = ("call",)

    def __init__(self, not_open: str) -> None:
        """``not_open`` ends the message of calls made before the connection opens."""
        self.call: CallFunction = functools.partial(_refuse_not_open, not_open)

    def open(self, call: CallFunction) -> None:
        """Send calls with ``call`` from now on."""
        self.call = call

    def close(self, code: int, reason: str) -> None:
        """Fail calls with ``ConnectionClosedError(code, reason)`` from now on."""
        self.call = functools.partial(_refuse_closed, code, reason)


class Driver:
    """
    Proxy for the remote provider, or for one object or method inside it.

    Attribute access returns a child driver for the longer path (cached, so
    repeated calls cost one dictionary lookup); calling a driver sends the
    call and returns a coroutine that resolves to the remote result, or
    raises :exc:`~wsrpc.StateError` if the connection is not open yet and
    :exc:`~wsrpc.ConnectionClosedError` once it is closed.

    Names that start or end with ``_`` raise :exc:`AttributeError` locally
    (see :func:`wsrpc.dispatch.is_remote_name`).
    """

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

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        if not self.__path:
            raise TypeError("the driver itself is not callable; call one of its methods")
        # Return the coroutine itself rather than wrapping it in another one.
        return self.__link.call(self.__path, args, kwargs, self.__timeout)

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

    __slots__ = ("_link", "_root")

    def __init__(self, not_open: str) -> None:
        self._link = Link(not_open)
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

    def open(self, call: CallFunction) -> None:
        """The connection is open: calls go through ``call``."""
        self._link.open(call)

    def call(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Coroutine[Any, Any, Any]:
        """
        Call ``path`` as a driver would, with a path from elsewhere (another
        node): each of its names is checked as driver attributes are.

        Raises:
            AttributeError: a name starts or ends with ``_``, or is empty.
        """
        if not all(is_remote_name(name) for name in path.split(".")):
            raise AttributeError(f"{path!r} is not a remote path")
        return self._link.call(path, args, kwargs, timeout)

    def close(self, code: int, reason: str) -> None:
        """The connection is gone: calls fail with ``ConnectionClosedError(code, reason)``."""
        self._link.close(code, reason)
