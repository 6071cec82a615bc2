"""Lifecycle hooks: the callables users register, and how wsrpc runs them."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .states import CloseInfo

__all__ = ["CloseRequestHook", "ClosedHook", "call_hook_soon", "run_hook"]

logger = logging.getLogger("wsrpc")

OwnerT = TypeVar("OwnerT")

CloseRequestHook = Callable[[int, str], Awaitable[None] | None]
"""``hook(code, reason)``: the peer's close frame arrived."""
ClosedHook = Callable[[OwnerT, CloseInfo], Awaitable[None] | None]
"""``hook(acceptor_or_connector, info)``: the connection is gone."""


async def run_hook(hook: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a user's hook, plain or async; log what it raises."""
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("error in hook %r", hook)


_hook_tasks: set[asyncio.Task[None]] = set()


def call_hook_soon(hook: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Run a hook from a synchronous context (a websockets callback)."""
    task = asyncio.get_running_loop().create_task(run_hook(hook, *args))
    _hook_tasks.add(task)
    task.add_done_callback(_hook_tasks.discard)
