"""
The driver: a proxy that turns attribute access and calls into remote calls.

``get_driver()`` returns a :class:`Driver` typed as the ``Remote`` protocol, so
``await driver.scientific.sqrt(16)`` type-checks against ``Remote`` and, at
run time, sends a call to the dotted path ``"scientific.sqrt"``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._communicator import Communicator

__all__ = ["Driver"]


class Driver:
    """
    Proxy for the remote provider, or for one object or method inside it.

    Attribute access returns a child driver for the longer path (cached, so
    repeated calls cost one dictionary lookup); calling a driver sends the
    call and returns a coroutine that resolves to the remote result.

    Names that start or end with ``_`` raise :exc:`AttributeError` locally:
    the remote side would refuse them anyway, and it keeps introspection
    (``copy``, ``pickle``, ``inspect``) from turning into remote calls.
    """

    def __init__(self, communicator: Communicator, path: str, timeout: float | None) -> None:
        self.__communicator = communicator
        self.__path = path
        self.__timeout = timeout

    def __getattr__(self, name: str) -> Driver:
        if name.startswith("_") or name.endswith("_"):
            raise AttributeError(name)
        path = f"{self.__path}.{name}" if self.__path else name
        child = Driver(self.__communicator, path, self.__timeout)
        # Cache in the instance dict: __getattr__ is not consulted next time.
        self.__dict__[name] = child
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        if not self.__path:
            raise TypeError("the driver itself is not callable; call one of its methods")
        # Return the coroutine itself rather than wrapping it in another one.
        return self.__communicator.call(self.__path, args, kwargs, self.__timeout)

    def __repr__(self) -> str:
        return f"<wsrpc.Driver {self.__path or '(root)'}>"
