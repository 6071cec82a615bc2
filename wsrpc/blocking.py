"""
Provider methods that block: run them in a worker thread, off the event loop.

A plain provider method runs on the event loop, where every connection of
the server is served: one that blocks (a synchronous database driver, a file
read, CPU work) stalls them all while it runs. Mark such a method with
:func:`blocking` and wsrpc runs each call in the event loop's default thread
pool (:func:`asyncio.to_thread`) instead.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["blocking"]

P = ParamSpec("P")
T = TypeVar("T")


def blocking(func: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """
    Decorate a provider method that blocks, so that it runs in a worker thread.

    Usage::

        class Reports:
            @wsrpc.blocking
            def render(self, month: str) -> bytes:
                return slow_renderer(month)  # blocks: runs in a thread

    The method becomes a coroutine function; remote callers see no
    difference. A cancelled call (the caller gave up, the connection closed)
    stops waiting at once, but the thread cannot be interrupted and runs the
    method to its end. The pool is the event loop's default executor
    (``min(32, cpu_count + 4)`` threads unless the application sets its own
    with :meth:`asyncio.loop.set_default_executor`).
    """

    @functools.wraps(func)
    async def in_thread(*args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(func, *args, **kwargs)

    return in_thread
