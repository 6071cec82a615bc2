"""
:class:`ClusterRegistry`: the registry of a server that is one node of an application.

It is a :class:`~wsrpc._registry.LocalRegistry` for what this process
holds (connections, group membership: synchronous, local, never waiting for
the backplane) and adds the application-wide operations beside it:

* **ids** -- a node slot (0..1023) claimed in the backplane at start
  (``slot:{n}``, a key with a time to live, renewed by the heartbeat) goes
  into every connection id (:class:`~wsrpc._cluster.wire.IdMaker`); after
  the claim, ids never need the backplane;
* **routing** -- a call to connection ``id`` is published on
  ``node:{slot_of(id)}``; no receiver means no live node holds it
  (:exc:`ConnectionClosedError` at once); answers come back on the
  caller's own node channel with its request number;
* **broadcast** -- published once on ``all``; each node runs its own
  members and answers with their outcomes; the receivers' count says how
  many answers to wait for;
* **death** -- every second, the slots this node awaits answers from are
  checked: a slot whose key expired (its node stopped heartbeating) fails
  what waits for it;
* **the group index** -- membership mirrored into the backplane (sets
  ``g:{slot}:{group}`` and ``gslots:{group}``, with a time to live) so that
  a broadcast can name the members of a node that does not answer;
* **outages** -- while the backplane is down, what needs another node
  fails with :exc:`BackplaneError` at once; on its return the slot is
  re-claimed and the index rewritten.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .._options import check_timeout
from .._registry import LocalRegistry
from ..exceptions import (
    BackplaneError,
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RpcTimeoutError,
    ValidationError,
)
from ..groups import Outcome, broadcast, notify
from ..messages import CloseCode
from ..states import AcceptorState
from . import wire
from .backplane import Backplane

if TYPE_CHECKING:
    from ..acceptor import WebSocketAcceptor
    from ..validation import RemoteTypes, Signature

__all__ = [
    "DEFAULT_REMOTE_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "NODE_TTL",
    "ClusterRegistry",
    "record",
]

logger = logging.getLogger("wsrpc.cluster")

T = TypeVar("T")

HEARTBEAT_INTERVAL = 1.0
"""Seconds between heartbeats (slot renewal, checks of awaited nodes)."""
NODE_TTL = 3.0
"""Seconds a node's slot outlives its last heartbeat: a dead node is noticed
within ``NODE_TTL + HEARTBEAT_INTERVAL`` (plus a round trip)."""
DEFAULT_REMOTE_TIMEOUT = 10.0
"""Seconds members on other nodes have to answer a broadcast without a
timeout, when the server has no ``call_timeout`` either."""
GRACE = 1.0
"""Seconds a broadcast waits for a node's answer beyond the members' timeout."""
INDEX_TTL = 30.0
"""Seconds the group index of a node outlives its last refresh."""
INDEX_REFRESH = 10.0
"""Seconds between refreshes of the group index's time to live."""
START_TIMEOUT = 10.0
"""Seconds ``server.open()`` may spend joining the application."""
MAX_SERVING = 10_000
"""Most requests from other nodes this node runs at once; more are refused."""
OUTCOMES_PER_MESSAGE = 2000
"""Outcomes per answer message (fewer when they are large)."""


def _not_open(connection_id: int) -> ConnectionClosedError:
    return ConnectionClosedError(
        CloseCode.ABNORMAL, f"connection {connection_id} is not open on any node"
    )


def _ms(seconds: float) -> int:
    return max(1, min(round(seconds * 1000), 2**31))


async def _quiet(coro: Awaitable[None]) -> None:
    """Serve a request from another node; an answer that cannot be sent is logged."""
    try:
        await coro
    except (BackplaneError, EncodeError) as exc:
        logger.debug("answer to another node not sent: %s", exc)


# -- recording a broadcast's call -------------------------------------------------


class _Recorded:
    """The one call a broadcast's function made through the recording driver."""

    __slots__ = ("args", "kwargs", "path")

    def __init__(self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.path = path
        self.args = args
        self.kwargs = kwargs

    def __await__(self) -> Any:
        raise TypeError("a broadcast's function must return the driver's call, not await it")


class _Recorder:
    """Stands in for a driver: records the path and the arguments of one call."""

    __slots__ = ("_calls", "_path")

    def __init__(self, path: str, calls: list[_Recorded]) -> None:
        self._path = path
        self._calls = calls

    def __getattr__(self, name: str) -> _Recorder:
        if name.startswith("_") or name.endswith("_"):
            raise AttributeError(name)
        return _Recorder(f"{self._path}.{name}" if self._path else name, self._calls)

    def __call__(self, *args: Any, **kwargs: Any) -> _Recorded:
        if not self._path:
            raise TypeError("the driver itself is not callable; call one of its methods")
        recorded = _Recorded(self._path, args, kwargs)
        self._calls.append(recorded)
        return recorded


def record(call: Callable[[Any], object]) -> tuple[str, list[Any], dict[str, Any] | None]:
    """
    The path and arguments of the one call ``call(driver)`` makes.

    For members on other nodes a broadcast's function cannot run there: it
    is run once here with a recording driver and must make exactly one call
    through it and return that call, like ``lambda c: c.on_message(text)``.

    Raises:
        TypeError: ``call`` does anything else.
    """
    calls: list[_Recorded] = []
    try:
        returned = call(_Recorder("", calls))
    except TypeError:
        raise
    except Exception as exc:
        raise TypeError(
            "a cluster broadcast's function must only make one call through the driver"
            f" and return it (it raised {exc!r})"
        ) from exc
    if len(calls) != 1 or returned is not calls[0]:
        if hasattr(returned, "close"):
            with contextlib.suppress(Exception):
                returned.close()  # a coroutine made around the call: never awaited
        raise TypeError(
            "a cluster broadcast's function must make exactly one call through the driver"
            " and return it, like `lambda client: client.on_message(text)`"
            f" (it made {len(calls)} and returned {type(returned).__name__})"
        )
    recorded = calls[0]
    return recorded.path, list(recorded.args), dict(recorded.kwargs) or None


def _encoded(
    signature: Signature, args: list[Any], kwargs: dict[str, Any] | None
) -> tuple[list[Any], dict[str, Any] | None]:
    """A broadcast's recorded arguments in their wire form (raises EncodeError)."""
    encoded_args, encoded_kwargs = signature.encode(tuple(args), kwargs or {})
    return list(encoded_args), encoded_kwargs or None


def _converted(outcome: Outcome[Any], convert: Callable[[Any], Any]) -> Outcome[Any]:
    """A remote member's outcome with its value built as ``Remote`` says."""
    if outcome.error is not None:
        return outcome
    try:
        return Outcome(outcome.acceptor_id, convert(outcome.value))
    except ValidationError as exc:
        return Outcome(outcome.acceptor_id, error=exc)


# -- what waits for other nodes ---------------------------------------------------


@dataclass(slots=True, eq=False)
class _Request:
    """A call or a disconnect sent to one node, waiting for its answer."""

    slot: int
    connection_id: int
    future: asyncio.Future[Any]
    left: int = 0
    """Receivers that have not said "not here" yet (0: not published yet)."""
    token: str | None = None
    """The slot's holder, as first seen by the death check."""


@dataclass(slots=True, eq=False)
class _Gather:
    """A broadcast's answers from the other nodes."""

    future: asyncio.Future[None]
    expected: int | None = None
    answered: set[int] = field(default_factory=set)
    outcomes: list[list[Any]] = field(default_factory=list)
    candidates: set[int] | None = None
    """Slots the group index says have members (None: not known yet)."""
    dead: set[int] = field(default_factory=set)

    def check(self) -> None:
        if self.future.done() or self.expected is None:
            return
        done = len(self.answered) >= self.expected
        if not done and self.candidates is not None and self.dead:
            # A node died: done once every node with members answered or is
            # dead, and the receivers are all accounted for.
            settled = self.candidates <= self.answered | self.dead
            done = settled and len(self.answered) + len(self.dead - self.answered) >= (
                self.expected
            )
        if done:
            self.future.set_result(None)


class ClusterRegistry(LocalRegistry["WebSocketAcceptor[Any, Any, Any]"]):
    """A node's registry: local state plus the application-wide operations."""

    __slots__ = (
        "_added",
        "_backplane",
        "_dirty",
        "_flush",
        "_gathers",
        "_held",
        "_maker",
        "_max_size",
        "_pending",
        "_remote_timeout",
        "_removed",
        "_requests",
        "_running",
        "_stopping",
        "_tasks_bg",
        "_token",
        "_written",
        "remote_types",
    )

    def __init__(
        self, backplane: Backplane, *, max_message_size: int, call_timeout: float | None = None
    ) -> None:
        super().__init__()
        self._backplane = backplane
        self._max_size = max_message_size
        # Members on other nodes always have a timeout: a broadcast never hangs.
        self._remote_timeout = call_timeout or DEFAULT_REMOTE_TIMEOUT
        self._token = secrets.token_hex(8)
        self._maker: wire.IdMaker | None = None
        self._held: set[int] = set()  # slots whose channels this node listens on
        self._requests = 0
        self._pending: dict[int, _Request] = {}
        self._gathers: dict[int, _Gather] = {}
        self._running: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._tasks_bg: list[asyncio.Task[None]] = []
        # The group index, to be written: set key -> ids added / removed.
        self._added: dict[str, set[str]] = {}
        self._removed: dict[str, set[str]] = {}
        self._written: set[str] = set()  # index keys this node wrote
        self._dirty = False  # the index must be rewritten whole
        self._flush = asyncio.Event()
        # Set by stop(): the background loops end at their next turn even if
        # their cancellation is lost (on Python 3.11 a cancel that lands as
        # the Redis client's own timeout expires comes out as that timeout,
        # a BackplaneError the loops survive; stop() then waited for ever).
        self._stopping = False
        self.remote_types: RemoteTypes | None = None
        """Converts broadcasts' calls from the server's ``Remote`` (``validate=True``),
        set by the server: arguments here, the other nodes' results back here."""

    @property
    def backplane(self) -> Backplane:
        return self._backplane

    @property
    def slot(self) -> int:
        """This node's slot (it issues ids with it)."""
        assert self._maker is not None, "not started"
        return self._maker.slot

    # -- life -------------------------------------------------------------------

    async def start(self) -> None:
        """Join the application: subscribe and claim a slot (``server.open()``)."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await self._backplane.start(["all"], self._on_message, self._on_state)
                slot = await self._claim_slot()
        except TimeoutError:
            await self._backplane.close()
            raise BackplaneError("could not join the application in time") from None
        except BaseException:
            await self._backplane.close()
            raise
        self._maker = wire.IdMaker(slot)
        loop = asyncio.get_running_loop()
        self._tasks_bg = [
            loop.create_task(self._heartbeat()),
            loop.create_task(self._flusher()),
        ]
        logger.info("node %d joined application %r", slot, self._backplane.name)

    async def _claim_slot(self, prefer: int | None = None) -> int:
        candidates = list(range(wire.SLOTS))
        random.shuffle(candidates)
        if prefer is not None:
            candidates.insert(0, prefer)
        for slot in candidates:
            if await self._backplane.claim(f"slot:{slot}", self._token, NODE_TTL):
                await self._backplane.subscribe(f"node:{slot}")
                self._held.add(slot)
                return slot
        raise BackplaneError(f"all {wire.SLOTS} node slots are taken")

    async def stop(self) -> None:
        """Leave the application (``server.close()``, after its connections closed)."""
        self._stopping = True
        self._flush.set()  # wakes the flusher, should its cancellation be lost
        for task in self._tasks_bg:
            task.cancel()
        running = list(self._running.values())
        if running:
            # Their connections are closed by now: let them send their
            # answers ("connection closed") before the backplane goes.
            await asyncio.wait(running, timeout=HEARTBEAT_INTERVAL)
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks_bg, *self._running.values(), return_exceptions=True)
        self._tasks_bg = []
        self._fail_all(BackplaneError("the server is closing"))
        if self._backplane.is_up and self._maker is not None:
            with contextlib.suppress(BackplaneError):
                members, slots = self._index()
                await self._backplane.delete(self._written | set(members))
                held = {str(slot) for slot in self._held}
                await self._backplane.update_sets({}, dict.fromkeys(slots, held), INDEX_TTL)
                for slot in self._held:
                    await self._backplane.release(f"slot:{slot}", self._token)
        await self._backplane.close()

    # -- connections ------------------------------------------------------------

    def new_id(self) -> int:
        maker = self._maker
        if maker is None:  # not started: open() starts the registry before listening
            raise BackplaneError("the server has not joined its application")
        return maker.next(time.time_ns() // 1_000_000)

    def holds_slot_of(self, connection_id: int) -> bool:
        """Whether ``connection_id`` would be held by this node."""
        return wire.slot_of(connection_id) in self._held

    def remove(self, connection: WebSocketAcceptor[Any, Any, Any]) -> None:
        names = self.groups_of(connection.id)
        super().remove(connection)
        for name in names:
            self._mirror(name, connection.id, False)

    # -- groups -----------------------------------------------------------------

    def join(self, name: str, connection: WebSocketAcceptor[Any, Any, Any]) -> bool:
        new = connection.id not in self.members(name)
        joined = super().join(name, connection)
        if joined and new:
            self._mirror(name, connection.id, True)
        return joined

    def leave(self, name: str, connection: WebSocketAcceptor[Any, Any, Any]) -> None:
        was = self.members(name).get(connection.id) is connection
        super().leave(name, connection)
        if was:
            self._mirror(name, connection.id, False)

    def _mirror(self, name: str, connection_id: int, added: bool) -> None:
        slot = wire.slot_of(connection_id)
        key, member = f"g:{slot}:{name}", str(connection_id)
        into, out_of = (self._added, self._removed) if added else (self._removed, self._added)
        out_of.get(key, set()).discard(member)
        into.setdefault(key, set()).add(member)
        if added:
            self._added.setdefault(f"gslots:{name}", set()).add(str(slot))
        self._flush.set()

    async def _flusher(self) -> None:
        """Write membership changes to the index as they come, batched."""
        while not self._stopping:
            await self._flush.wait()
            self._flush.clear()
            if self._dirty:
                await self._rewrite_index()
                continue
            added, removed = self._added, self._removed
            self._added, self._removed = {}, {}
            if not self._backplane.is_up:
                self._dirty = True  # rewritten whole when it is back
                continue
            try:
                await self._backplane.update_sets(added, removed, INDEX_TTL)
                self._written.update(added)
            except BackplaneError as exc:
                logger.debug("group index not updated: %s", exc)
                self._dirty = True

    def _index(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """This node's part of the index, from its membership: members' sets, slots' sets."""
        members: dict[str, set[str]] = {}
        slots: dict[str, set[str]] = {}
        for name in self.group_names():
            for connection_id in self.members(name):
                slot = wire.slot_of(connection_id)
                members.setdefault(f"g:{slot}:{name}", set()).add(str(connection_id))
                slots.setdefault(f"gslots:{name}", set()).add(str(slot))
        return members, slots

    async def _rewrite_index(self) -> None:
        """Write this node's whole membership again (after an outage)."""
        if not self._backplane.is_up:
            return
        self._added, self._removed = {}, {}
        members, slots = self._index()
        try:
            # Only the members' sets are this node's own; the slots' sets
            # are shared with the other nodes.
            await self._backplane.delete(self._written - set(members))
            await self._backplane.update_sets({**members, **slots}, {}, INDEX_TTL)
            self._written = set(members)
            self._dirty = False
        except BackplaneError as exc:
            logger.debug("group index not rewritten: %s", exc)

    async def _refresh_index(self) -> None:
        """Keep this node's index alive (it expires INDEX_TTL after the node stops)."""
        members, slots = self._index()
        self._written = set(members)  # sets emptied since are gone from Redis too
        await self._backplane.expire([*members, *slots], INDEX_TTL)

    # -- heartbeat, death, outages ----------------------------------------------------

    async def _heartbeat(self) -> None:
        refreshed = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not self._backplane.is_up:
                continue
            try:
                await self._renew()
                await self._check_nodes()
                if time.monotonic() - refreshed > INDEX_REFRESH:
                    refreshed = time.monotonic()
                    await self._refresh_index()
            except BackplaneError as exc:
                logger.warning("backplane heartbeat failed: %s", exc)
                self._backplane.kick()

    async def _renew(self) -> None:
        assert self._maker is not None
        slot = self._maker.slot
        renewed = await self._backplane.renew(f"slot:{slot}", self._token, NODE_TTL)
        if renewed == 2:
            # The key was gone: Redis restarted empty (or we were cut off
            # longer than NODE_TTL). Ours again; so must the index be.
            logger.warning("node slot %d re-claimed: rewriting the group index", slot)
            self._dirty = True
            self._flush.set()
        elif renewed == 0:
            # Another node took our slot while we were cut off: new ids
            # take a new slot; the old slot's channel still reaches the
            # connections named by it.
            new = await self._claim_slot()
            logger.error("node slot %d was taken by another node; now slot %d", slot, new)
            self._maker.slot = new
            self._dirty = True
            self._flush.set()

    async def _check_nodes(self) -> None:
        """Fail what waits for nodes that stopped heartbeating."""
        awaited: set[int] = {request.slot for request in self._pending.values()}
        for gather in self._gathers.values():
            if gather.candidates is not None:
                awaited |= gather.candidates - gather.answered - gather.dead
        awaited -= self._held
        if not awaited:
            return
        slots = sorted(awaited)
        holders = await asyncio.gather(*(self._backplane.get(f"slot:{s}") for s in slots))
        holder_of = dict(zip(slots, holders, strict=True))
        for uid, request in list(self._pending.items()):
            if request.slot not in holder_of:
                continue
            holder = holder_of[request.slot]
            if request.token is None:
                request.token = holder
            if holder is None or holder != request.token:
                self._pending.pop(uid, None)
                if not request.future.done():
                    request.future.set_exception(
                        ConnectionClosedError(
                            CloseCode.ABNORMAL,
                            f"node {request.slot} holding connection"
                            f" {request.connection_id} is gone",
                        )
                    )
        for gather in self._gathers.values():
            for slot in slots:
                if holder_of[slot] is None and gather.candidates and slot in gather.candidates:
                    gather.dead.add(slot)
            gather.check()

    def _on_state(self, up: bool) -> None:
        if up:
            self._dirty = True  # Redis may have come back empty
            self._flush.set()
            if self._maker is not None:
                task = asyncio.get_running_loop().create_task(self._recover())
                self._tasks_bg.append(task)
                task.add_done_callback(self._tasks_bg.remove)
        else:
            # Answers cannot reach us any more: fail what waits for them.
            self._fail_all(BackplaneError("the backplane was lost while waiting for another node"))

    async def _recover(self) -> None:
        try:
            await self._renew()
        except BackplaneError as exc:
            logger.debug("slot not renewed after reconnecting: %s", exc)

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if not request.future.done():
                request.future.set_exception(exc)
        for gather in self._gathers.values():
            if not gather.future.done():
                gather.future.set_exception(exc)

    # -- sending ------------------------------------------------------------------

    def _next_request(self) -> int:
        self._requests += 1
        return self._requests

    async def _publish(self, channel: str, message: wire.Message) -> int:
        return await self._backplane.publish(channel, wire.encode(message, self._max_size))

    def _publish_soon(self, channel: str, message: wire.Message) -> None:
        """Publish without waiting (answers, cancellations); failures are logged."""

        async def publish() -> None:
            try:
                await self._publish(channel, message)
            except (BackplaneError, EncodeError) as exc:
                logger.debug("backplane message to %s not sent: %s", channel, exc)

        self.track(publish())

    async def _ask(
        self, connection_id: int, message: wire.Call | wire.Disconnect, timeout: float | None
    ) -> Any:
        slot = wire.slot_of(connection_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request = _Request(slot, connection_id, future)
        uid = message.request
        self._pending[uid] = request
        try:
            receivers = await self._publish(f"node:{slot}", message)
            if receivers == 0:
                raise _not_open(connection_id)
            request.left = receivers
            if timeout is None:
                return await future
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise RpcTimeoutError(
                    f"call to connection {connection_id} timed out after {timeout} s"
                ) from None
        except (asyncio.CancelledError, RpcTimeoutError):
            # Even if cancelled while publishing: the call may be on its way
            # (a cancellation of an unknown request is ignored).
            self._publish_soon(f"node:{slot}", wire.Cancel(self.slot, uid))
            raise
        finally:
            self._pending.pop(uid, None)
            if future.done() and not future.cancelled():
                future.exception()  # seen: never "exception was never retrieved"

    async def call(
        self,
        connection_id: int,
        path: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> Any:
        """Call ``path`` on connection ``connection_id``, held by another node."""
        message = wire.Call(
            self.slot,
            self._next_request(),
            connection_id,
            path,
            list(args),
            kwargs or None,
            None if timeout is None else _ms(timeout),
        )
        return await self._ask(connection_id, message, timeout)

    async def disconnect(self, connection_id: int, code: int, reason: str, timeout: float) -> bool:
        """Close connection ``connection_id``, held by another node; whether it was open."""
        message = wire.Disconnect(self.slot, self._next_request(), connection_id, code, reason)
        try:
            return bool(await self._ask(connection_id, message, timeout))
        except ConnectionClosedError:
            return False

    # -- broadcast ----------------------------------------------------------------

    async def broadcast(
        self,
        group: str | None,
        members: Iterable[WebSocketAcceptor[Any, Any, Any]],
        call: Callable[[Any], Awaitable[T]],
        timeout: float | None,
    ) -> list[Outcome[T]]:
        """Run ``call`` on every member of ``group`` on every node (None: every connection)."""
        check_timeout(timeout)
        path, args, kwargs = record(call)
        signature = None if self.remote_types is None else self.remote_types.signature(path)
        if signature is not None and signature.encodes:
            args, kwargs = _encoded(signature, args, kwargs)
        if not self._backplane.is_up:
            raise BackplaneError("the backplane is down: cannot reach the other nodes")
        convert = None if signature is None else signature.result
        local = asyncio.ensure_future(broadcast(members, call, timeout))
        try:
            remote = await self._broadcast_remote(group, path, args, kwargs, timeout)
        except BaseException as exc:
            if isinstance(exc, BackplaneError) and exc.outcomes is not None:
                # Members were called: say which answered what, the local
                # ones included, with the error that says the list is short.
                got = [_converted(o, convert) for o in exc.outcomes] if convert else exc.outcomes
                exc.outcomes = [*await local, *got]
            else:
                local.cancel()
            raise
        if convert is not None:  # local members' results were converted by their drivers
            remote = [_converted(outcome, convert) for outcome in remote]
        return [*await local, *remote]

    def notify(
        self,
        group: str | None,
        members: Iterable[WebSocketAcceptor[Any, Any, Any]],
        call: Callable[[Any], Awaitable[Any]],
        timeout: float | None,
    ) -> int:
        """Fire and forget ``call`` to the members on every node; return the local count."""
        check_timeout(timeout)
        path, args, kwargs = record(call)
        signature = None if self.remote_types is None else self.remote_types.signature(path)
        if signature is not None and signature.encodes:
            args, kwargs = _encoded(signature, args, kwargs)
        count = notify(self, members, call, timeout)
        message = wire.Broadcast(
            self.slot,
            self._next_request(),
            group,
            path,
            args,
            kwargs,
            _ms(timeout or self._remote_timeout),
            False,
        )
        if self._backplane.is_up:
            self._publish_soon("all", message)
        else:
            logger.warning("notification to group %r reached this node only: backplane down", group)
        return count

    async def _broadcast_remote(
        self,
        group: str | None,
        path: str,
        args: list[Any],
        kwargs: dict[str, Any] | None,
        timeout: float | None,
    ) -> list[Outcome[Any]]:
        wait = timeout if timeout is not None else self._remote_timeout
        uid = self._next_request()
        message = wire.Broadcast(self.slot, uid, group, path, args, kwargs, _ms(wait), True)
        gather = _Gather(asyncio.get_running_loop().create_future())
        self._gathers[uid] = gather
        try:
            index = asyncio.ensure_future(self._candidates(group))
            try:
                receivers = await self._publish("all", message)
            except BaseException:
                index.cancel()
                raise
            gather.expected = receivers - 1  # this node hears its own broadcast
            gather.check()
            with contextlib.suppress(BackplaneError):
                gather.candidates = await index
            gather.check()
            try:
                async with asyncio.timeout(wait + GRACE):
                    await asyncio.shield(gather.future)
            except (TimeoutError, BackplaneError):
                pass  # a lost backplane is raised below, with what was answered
            except asyncio.CancelledError:
                self._publish_soon("all", wire.Cancel(self.slot, uid))  # stop the members' calls
                raise
            if (
                gather.future.done()
                and not gather.future.cancelled()
                and gather.future.exception() is not None
            ):
                # The backplane went: what the other nodes answered so far.
                error = gather.future.exception()
                assert isinstance(error, BackplaneError)
                lost = BackplaneError(f"{error}; the broadcast's outcomes are incomplete")
                lost.outcomes = self._answered(gather)[0]
                raise lost from error
            return await self._collect(group, gather)
        finally:
            self._gathers.pop(uid, None)
            if gather.future.done() and not gather.future.cancelled():
                gather.future.exception()

    async def _candidates(self, group: str | None) -> set[int]:
        if group is None:
            return set()
        slots = await self._backplane.members(f"gslots:{group}")
        return {int(slot) for slot in slots if slot.isdigit() and int(slot) < wire.SLOTS}

    def _answered(self, gather: _Gather) -> tuple[list[Outcome[Any]], set[int]]:
        """The outcomes the other nodes sent, and the members they name."""
        outcomes: list[Outcome[Any]] = []
        seen: set[int] = set()
        for entry in gather.outcomes:
            seen.add(entry[0])
            if len(entry) == 2:
                outcomes.append(Outcome(entry[0], entry[1]))
            else:
                outcomes.append(Outcome(entry[0], error=wire.exception_of(entry[2])))
        return outcomes, seen

    async def _collect(self, group: str | None, gather: _Gather) -> list[Outcome[Any]]:
        outcomes, seen = self._answered(gather)
        missing = (gather.candidates or set()) - gather.answered - self._held
        if group is not None and missing:
            # Nodes that did not answer: the index names their members. If
            # the backplane cannot say who they are, the list would lack
            # them silently: raise instead, with the outcomes there are.
            try:
                named = await self._members_of(sorted(missing), group, gather)
            except BackplaneError as exc:
                lost = BackplaneError(
                    f"node(s) {sorted(missing)} did not answer the broadcast and the backplane"
                    f" cannot name their members ({exc}); the outcomes are incomplete"
                )
                lost.outcomes = outcomes
                raise lost from exc
            for member, error in named:
                if member not in seen:
                    seen.add(member)
                    outcomes.append(Outcome(member, error=error))
        unheard = (gather.expected or 0) - len(gather.answered) - len(missing)
        if unheard > 0 and group is not None and gather.candidates is None:
            lost = BackplaneError(
                f"{unheard} node(s) did not answer the broadcast and the group index could"
                " not be read to name their members; the outcomes are incomplete"
            )
            lost.outcomes = outcomes
            raise lost
        if unheard > 0:
            # Nodes got the broadcast and neither answered nor appear in the
            # index (a member added so recently that its node had not yet
            # written the index): their members cannot be named.
            logger.warning(
                "broadcast to %r: %d node(s) did not answer and the group index names no"
                " member of theirs; their members, if any, are not in the outcomes",
                group,
                unheard,
            )
        return outcomes

    async def _members_of(
        self, slots: list[int], group: str, gather: _Gather
    ) -> list[tuple[int, Exception]]:
        """The members the index names on ``slots``, each with the error to report."""
        named: list[tuple[int, Exception]] = []
        for slot in slots:
            alive = slot not in gather.dead and (
                await self._backplane.get(f"slot:{slot}") is not None
            )
            for member in sorted(await self._backplane.members(f"g:{slot}:{group}")):
                if not member.isdigit():
                    continue
                named.append(
                    (
                        int(member),
                        RpcTimeoutError(f"node {slot} did not answer the broadcast in time")
                        if alive
                        else ConnectionClosedError(
                            CloseCode.ABNORMAL, f"node {slot} holding this member is gone"
                        ),
                    )
                )
        return named

    # -- receiving ----------------------------------------------------------------

    def _on_message(self, channel: str, data: bytes) -> None:
        try:
            message = wire.decode(data, self._max_size)
        except ProtocolError as exc:
            logger.info("dropped a malformed backplane message on %r: %s", channel, exc)
            return
        kind = type(message)
        if kind is wire.Result or kind is wire.Failure:
            assert isinstance(message, wire.Result | wire.Failure)
            self._on_answer(message)
        elif kind is wire.Outcomes:
            assert isinstance(message, wire.Outcomes)
            gather = self._gathers.get(message.request)
            if gather is not None and not gather.future.done():
                gather.outcomes.extend(message.outcomes)
                if message.last:
                    gather.answered.add(message.sender)
                    gather.check()
        elif kind is wire.Call or kind is wire.Disconnect:
            assert isinstance(message, wire.Call | wire.Disconnect)
            self._serve(message)
        elif kind is wire.Cancel:
            task = self._running.get((message.sender, message.request))
            if task is not None:
                task.cancel()
        elif kind is wire.Broadcast:
            assert isinstance(message, wire.Broadcast)
            if message.sender not in self._held:
                self._serve(message)

    def _on_answer(self, message: wire.Result | wire.Failure) -> None:
        request = self._pending.get(message.request)
        if request is None or request.future.done():
            return  # late, cancelled, or not ours
        if isinstance(message, wire.Result):
            request.future.set_result(message.value)
        elif message.error[0] == wire.ABSENT:
            request.left -= 1  # one receiver does not hold it: wait for the others
            if request.left <= 0:
                request.future.set_exception(_not_open(request.connection_id))
        else:
            request.future.set_exception(wire.exception_of(message.error))

    def _serve(self, message: wire.Call | wire.Disconnect | wire.Broadcast) -> None:
        key = (message.sender, message.request)
        if key in self._running:
            return  # a duplicate
        if len(self._running) >= MAX_SERVING:
            logger.warning("refused a request from node %d: %d running", key[0], MAX_SERVING)
            if not isinstance(message, wire.Broadcast):
                busy = BackplaneError(f"node {self.slot} is busy: {MAX_SERVING} requests running")
                failure = wire.Failure(self.slot, message.request, wire.error_of(busy))
                self._publish_soon(f"node:{message.sender}", failure)
            return
        coro = (
            self._serve_broadcast(message)
            if isinstance(message, wire.Broadcast)
            else self._serve_one(message)
        )
        task = asyncio.get_running_loop().create_task(_quiet(coro))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    async def _serve_one(self, message: wire.Call | wire.Disconnect) -> None:
        reply_to = f"node:{message.sender}"
        acceptor = self.connections.get(message.connection_id)
        answer: wire.Message
        if acceptor is None or acceptor.is_closed:
            error = [wire.ABSENT, CloseCode.ABNORMAL, "", "not held here", None]
            answer = wire.Failure(self.slot, message.request, error)
        else:
            try:
                if isinstance(message, wire.Call):
                    timeout = None if message.timeout_ms is None else message.timeout_ms / 1000
                    value = await acceptor._call_path(
                        message.path, tuple(message.args), message.kwargs or {}, timeout
                    )
                else:
                    await acceptor.close(message.code, message.reason)
                    value = True
                answer = wire.Result(self.slot, message.request, value)
            except Exception as exc:
                answer = wire.Failure(self.slot, message.request, wire.error_of(exc))
        try:
            await self._publish(reply_to, answer)
        except EncodeError as exc:
            await self._publish(
                reply_to, wire.Failure(self.slot, message.request, wire.error_of(exc))
            )

    async def _serve_broadcast(self, message: wire.Broadcast) -> None:
        if message.group is None:
            members = list(self.connections.values())
        else:
            members = list(self.members(message.group).values())
        targets = [member for member in members if member.state is AcceptorState.OPEN]
        timeout = message.timeout_ms / 1000
        args, kwargs = tuple(message.args), message.kwargs or {}

        async def one(member: WebSocketAcceptor[Any, Any, Any]) -> list[Any]:
            try:
                return [member.id, await member._call_path(message.path, args, kwargs, timeout)]
            except Exception as exc:
                return [member.id, None, wire.error_of(exc)]

        entries = list(await asyncio.gather(*(one(member) for member in targets)))
        if not message.want_outcomes:
            return
        reply_to = f"node:{message.sender}"
        parts = [
            entries[i : i + OUTCOMES_PER_MESSAGE]
            for i in range(0, len(entries), OUTCOMES_PER_MESSAGE)
        ] or [[]]
        for number, part in enumerate(parts):
            await self._send_outcomes(reply_to, message.request, part, number == len(parts) - 1)

    async def _send_outcomes(
        self, reply_to: str, request: int, entries: list[list[Any]], last: bool
    ) -> None:
        try:
            await self._publish(reply_to, wire.Outcomes(self.slot, request, entries, last))
        except EncodeError as exc:
            if len(entries) > 1:  # too large together: halve
                half = len(entries) // 2
                await self._send_outcomes(reply_to, request, entries[:half], False)
                await self._send_outcomes(reply_to, request, entries[half:], last)
            else:
                failed = [[entry[0], None, wire.error_of(exc)] for entry in entries]
                await self._publish(reply_to, wire.Outcomes(self.slot, request, failed, last))
