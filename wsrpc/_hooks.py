"""
Lifecycle hooks: the callables users register, and how wsrpc runs them.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .states import CloseInfo

__all__ = [
    "BackHook",
    "CloseRequestHook",
    "ClosedHook",
    "LostHook",
    "call_hook_soon",
    "run_hook",
    "run_within",
]

logger = logging.getLogger("wsrpc")

OwnerT = TypeVar("OwnerT")

CloseRequestHook = Callable[[int, str], Awaitable[None] | None]
"""``hook(code, reason)``: the peer's close frame arrived."""
ClosedHook = Callable[[OwnerT, CloseInfo], Awaitable[None] | None]
"""``hook(acceptor_or_connector, info)``: the connection is gone."""
LostHook = Callable[[OwnerT, CloseInfo], Awaitable[None] | None]
"""``hook(connector, info)``: a reconnecting connector lost its connection and will reconnect."""
BackHook = Callable[[OwnerT], Awaitable[None] | None]
"""``hook(connector)``: a reconnecting connector is connected again."""


async def run_hook(hook: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a user's hook, plain or async; log what it raises."""
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("error in hook %r", hook)


async def run_within(work: Awaitable[None], timeout: float, what: str) -> None:
    """
    Await ``work`` (close hooks) for at most ``timeout`` seconds, then cancel it.

    A close must end within a bound however the application's hooks behave:
    hooks still running then are cancelled and logged (at WARNING: it is the
    application's own code, not something a peer chose).
    """
    try:
        async with asyncio.timeout(timeout):
            await work
    except TimeoutError:
        logger.warning("%s still running after close_timeout (%s s): cancelled", what, timeout)


_hook_tasks: set[asyncio.Task[None]] = set()


def call_hook_soon(hook: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a hook from a synchronous context (a websockets callback)."""
    task = asyncio.get_running_loop().create_task(run_hook(hook, *args))
    _hook_tasks.add(task)
    task.add_done_callback(_hook_tasks.discard)
