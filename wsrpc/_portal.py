"""
The bridge between threads and an event loop, for :mod:`wsrpc.sync`.

:class:`Portal` runs coroutines on an event loop from other threads and
waits for them; :class:`LoopThread` is a portal to an event loop of its own,
in a daemon thread; :class:`PortalSlot` holds a portal that may not exist
yet. Nothing here knows of connections: a portal is told how to say "the
connection is gone" (``closed_error``) when its loop is.

Imports nothing of wsrpc above the exceptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .exceptions import ConnectionClosedError, StateError

__all__ = ["LoopThread", "Portal", "PortalSlot"]

T = TypeVar("T")

_POLL_INTERVAL = 1.0
"""Seconds between checks, while a thread waits, that the event loop still exists."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Portal:
    """
    Runs coroutines on an event loop from other threads, and waits for them.

    Like :func:`asyncio.run_coroutine_threadsafe`, except that the waiting
    thread makes the future itself before anything is scheduled, so that an
    interruption at any point after that (a ``KeyboardInterrupt`` can strike
    between any two bytecodes) still cancels the call.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: str,
        closed_error: Callable[[], ConnectionClosedError],
    ) -> None:
        self.loop = loop
        self._owner = owner
        self._closed_error = closed_error
        self._tasks: set[asyncio.Task[Any]] = set()
        """The callers' running tasks (used on the loop only): kept alive here."""

    def check_thread(self, action: str) -> None:
        """Raise StateError in the event loop's own thread, where waiting deadlocks."""
        if _running_loop() is self.loop:
            raise StateError(
                f"cannot {action} from the event loop thread of {self._owner}: it would "
                "wait for itself; use the async API there"
            )

    def run(self, coro: Coroutine[Any, Any, T], action: str) -> T:
        """Run ``coro`` on the loop; block until it returns, and return its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self.check_thread(action)
            self._check_open()
        except BaseException:
            coro.close()  # never scheduled: no "never awaited" warning
            raise
        try:
            self._schedule(coro, future)
            return self._wait(future)
        except BaseException:
            # The call's own error (cancelling a finished future does
            # nothing), or this thread was interrupted: cancel the call,
            # which cancels it on the peer too.
            future.cancel()
            raise

    def _check_open(self) -> None:
        if self.loop.is_closed():
            raise self._closed_error()

    def _schedule(self, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]) -> None:
        """Have the loop run ``coro`` and report to ``future``, or raise the closed error."""
        try:
            self.loop.call_soon_threadsafe(self._start, coro, future)
        except RuntimeError:  # the loop closed since _check_open
            coro.close()
            raise self._closed_error() from None

    def _start(self, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]) -> None:
        # On the loop.
        if future.cancelled():  # the caller gave up before it started
            coro.close()
            return
        task = self.loop.create_task(coro)
        task.add_done_callback(functools.partial(self._report, future))
        self._track(task)
        future.add_done_callback(functools.partial(self._cancel, task))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)

    def _cancel(self, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]) -> None:
        # In whichever thread finished the future: cancel the task if the
        # caller cancelled the future.
        if future.cancelled() and not task.done():
            try:
                self.loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop is closed: the task is gone with it

    @staticmethod
    def _report(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
        # On the loop, once the task is done: hand its outcome to the caller.
        if task.cancelled():
            future.cancel()
            return
        error = task.exception()  # retrieved, so asyncio never logs it as lost
        if not future.set_running_or_notify_cancel():
            return  # the caller gave up
        if error is None:
            future.set_result(task.result())
        else:
            future.set_exception(error)

    def _wait(self, future: concurrent.futures.Future[T]) -> T:
        while True:
            try:
                return future.result(_POLL_INTERVAL)
            except concurrent.futures.CancelledError:
                # Only the loop's shutdown cancels it: the connection is gone.
                raise self._closed_error() from None
            except TimeoutError:
                if future.done():
                    raise  # the call's own RpcTimeoutError
                if self.loop.is_closed():
                    # Closed under a pending call that will never finish.
                    raise self._closed_error() from None


class LoopThread(Portal):
    """
    A portal to an event loop of its own, running in a daemon thread.

    :meth:`stop_soon` refuses new coroutines and stops the loop once those
    already scheduled have returned, so that no caller ever waits on a
    coroutine the stopped loop will not finish.
    """

    def __init__(
        self,
        name: str,
        closed_error: Callable[[], ConnectionClosedError],
        on_exit: Callable[[], None],
    ) -> None:
        super().__init__(asyncio.new_event_loop(), "this connector", closed_error)
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._stopping = False
        # Used on the loop only: the stop's progress.
        self._stop_requested = False
        self._stop_called = False
        # The loop's own default executor (what wsrpc.blocking provider
        # methods run in), so that its threads are known: one of them may
        # close the connector, and must not wait for the loop's thread, which
        # waits for the executor's threads as it ends.
        self._workers: set[int] = set()
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                thread_name_prefix=f"{name}-worker", initializer=self._register_worker
            )
        )
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _register_worker(self) -> None:
        self._workers.add(threading.get_ident())

    def _check_open(self) -> None:
        if self._stopping:
            raise self._closed_error()

    def _schedule(self, coro: Coroutine[Any, Any, T], future: concurrent.futures.Future[T]) -> None:
        with self._lock:
            if self._stopping:
                coro.close()
                raise self._closed_error()
            # Scheduled before stop_soon's _stop_if_idle: it runs first.
            self.loop.call_soon_threadsafe(self._start, coro, future)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        super()._untrack(task)
        if self._stop_requested:
            self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        # On the loop, first from stop_soon: every _start scheduled before it
        # has run by then, and none can be scheduled after it. Results reach
        # their waiting threads through task callbacks scheduled along with
        # this one, which _main's cleanup runs after the loop stops.
        self._stop_requested = True
        if not self._tasks and not self._stop_called:
            self._stop_called = True
            self.loop.stop()

    def stop_soon(self) -> None:
        """Refuse new coroutines; stop the loop once the running ones have returned."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self.loop.call_soon_threadsafe(self._stop_if_idle)

    def stop(self) -> None:
        """:meth:`stop_soon`, then :meth:`join_thread`."""
        self.stop_soon()
        self.join_thread()

    def join_thread(self, timeout: float | None = None) -> None:
        """Wait for the thread to end, unless that would wait for this thread."""
        if threading.current_thread() is not self._thread:
            if threading.get_ident() not in self._workers:
                self._thread.join(timeout)

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Callbacks the last iteration scheduled (results on their way to
            # waiting threads) run first, then whatever tasks were left over
            # (none, unless a provider started some) are cancelled.
            while tasks := asyncio.all_tasks(loop):
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            # Done before waiting for the executor's threads, which may be
            # waiting for this.
            self._on_exit()
            try:
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()


class PortalSlot:
    """
    The portal a :class:`SyncDriver` runs its calls through, once there is one.

    Shared by a sync connector and its drivers, so that a driver fetched
    before :meth:`WebSocketConnector.connect` works once it has connected,
    without the drivers pointing back at the connector (a cycle).
    """

    __slots__ = ("_not_open", "portal")

    def __init__(self, portal: Portal | None, not_open: str = "") -> None:
        self.portal = portal
        self._not_open = not_open

    def get(self, action: str) -> Portal:
        """The portal; StateError if there is none yet."""
        portal = self.portal
        if portal is None:
            raise StateError(f"cannot {action}: {self._not_open}")
        return portal
