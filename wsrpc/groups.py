"""
Groups of connections, and broadcast: one remote call to many clients.

A broadcast is given a function that makes the call from a driver, typed as
the server's ``Remote``::

    outcomes = await server.group("room:42").broadcast(
        lambda client: client.on_message("ada", "hello")
    )

so a misspelled method or a wrong argument is a mypy error. The call runs on
every member concurrently; each member's outcome (its result or its error) is
returned, and one slow or dead member neither holds up nor fails the others
(give ``timeout`` to bound the slow ones).

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._options import check_timeout
from .exceptions import StateError
from .states import AcceptorState

if TYPE_CHECKING:
    from ._cluster.registry import ClusterRegistry
    from ._registry import Registry
    from .acceptor import WebSocketAcceptor

__all__ = ["Group", "Outcome"]

logger = logging.getLogger("wsrpc")

T = TypeVar("T")
HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one member of a broadcast answered."""

    acceptor_id: int
    """:attr:`WebSocketAcceptor.id` of the member."""
    value: T | None = None
    """The call's result, when it succeeded."""
    error: Exception | None = None
    """Why the call failed (a :exc:`WsrpcError` such as :exc:`RemoteError`,
    :exc:`ConnectionClosedError` or :exc:`RpcTimeoutError`), or None."""

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return self.error is None

    def result(self) -> T:
        """The call's result; raises its error when it failed."""
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


async def broadcast(
    members: Iterable[WebSocketAcceptor[Any, Any, RemoteT]],
    call: Callable[[RemoteT], Awaitable[T]],
    timeout: float | None,
) -> list[Outcome[T]]:
    """Run ``call`` on each open member's driver concurrently; see :meth:`Group.broadcast`."""
    check_timeout(timeout)
    targets = [member for member in members if member.state is AcceptorState.OPEN]
    if not targets:
        return []
    return list(await asyncio.gather(*(_one(member, call, timeout) for member in targets)))


async def _one(
    member: WebSocketAcceptor[Any, Any, RemoteT],
    call: Callable[[RemoteT], Awaitable[T]],
    timeout: float | None,
) -> Outcome[T]:
    try:
        return Outcome(member.id, await call(member.get_driver(timeout=timeout)))
    except Exception as exc:
        return Outcome(member.id, error=exc)


def notify(
    registry: Registry[WebSocketAcceptor[Any, Any, RemoteT]],
    members: Iterable[WebSocketAcceptor[Any, Any, RemoteT]],
    call: Callable[[RemoteT], Awaitable[Any]],
    timeout: float | None,
) -> int:
    """Start ``call`` on each open member without waiting; see :meth:`Group.notify`."""
    check_timeout(timeout)
    count = 0
    for member in members:
        if member.state is AcceptorState.OPEN:
            # Made now, not when the task runs, so that the call sees the
            # values of now: notify(lambda c: c.tick(n)) in a loop sends each n.
            try:
                awaitable = call(member.get_driver(timeout=timeout))
            except Exception as exc:
                logger.debug("notification to connection %d failed: %r", member.id, exc)
                continue
            registry.track(_quietly(member.id, awaitable))
            count += 1
    return count


async def _quietly(member_id: int, awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:
        logger.debug("notification to connection %d failed: %r", member_id, exc)


def cluster_of(registry: Registry[Any]) -> ClusterRegistry | None:
    """``registry`` when it spans processes (a server with a backplane), else None."""
    from ._cluster.registry import ClusterRegistry  # here: it imports this module

    return registry if isinstance(registry, ClusterRegistry) else None


class Group(Generic[HeaderT, ProviderT, RemoteT]):
    """
    A named set of a server's connections; get one with :meth:`WebSocketServer.group`.

    A group is a view: every ``server.group(name)`` with the same name sees
    the same members. A connection leaves all its groups by itself when it
    closes, and a group that becomes empty takes no memory at all, so
    thousands of connections may come and go, and groups with them.
    """

    __slots__ = ("_name", "_registry")

    def __init__(
        self, registry: Registry[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]], name: str
    ) -> None:
        self._registry = registry
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def _members(self) -> Mapping[int, WebSocketAcceptor[HeaderT, ProviderT, RemoteT]]:
        return self._registry.members(self._name)

    def add(self, acceptor: WebSocketAcceptor[HeaderT, ProviderT, RemoteT]) -> bool:
        """
        Make ``acceptor`` a member (no effect if it already is).

        Returns False, and adds nothing, when the connection is already
        closing or closed (a client may leave at any moment, even right after
        being accepted): a closed connection never lingers in a group.

        Raises:
            StateError: the acceptor belongs to another server.
        """
        if acceptor.is_closed:
            return False
        if not self._registry.owns(acceptor):
            raise StateError("that connection belongs to another server")
        return self._registry.join(self._name, acceptor)

    def discard(self, acceptor: WebSocketAcceptor[HeaderT, ProviderT, RemoteT]) -> None:
        """Remove ``acceptor`` if it is a member."""
        self._registry.leave(self._name, acceptor)

    def __contains__(self, acceptor: object) -> bool:
        return any(member is acceptor for member in self._members().values())

    def __len__(self) -> int:
        return len(self._members())

    def __iter__(self) -> Iterator[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]]:
        # A snapshot: members may come and go while the caller iterates.
        return iter(list(self._members().values()))

    async def broadcast(
        self, call: Callable[[RemoteT], Awaitable[T]], *, timeout: float | None = None
    ) -> list[Outcome[T]]:
        """
        Run ``call(driver)`` for every open member at once; return each outcome.

        ``call`` receives the member's driver, typed as ``Remote``, and
        returns the awaitable call, e.g. ``lambda c: c.on_message(text)``.
        Members that close meanwhile get a :exc:`ConnectionClosedError`
        outcome; none of them fails or holds up the others.

        With a backplane, members on every node of the application are
        called: ``call`` is run once here with a recording driver, and the
        one call it makes (path and arguments) is sent to the other nodes as
        data, so it must be just that call, like the example above (else
        :exc:`TypeError`). Members on a node that dies or does not answer in
        time get a :exc:`ConnectionClosedError` or :exc:`RpcTimeoutError`
        outcome; while the backplane is down, :exc:`BackplaneError` is
        raised before anyone is called, and a broadcast that loses it
        midway (or cannot name a silent node's members) raises it with
        ``exc.outcomes``, the outcomes it has (see ``docs/scaling.md``).

        Args:
            timeout: Seconds each member has to answer; a slow one gets an
                :exc:`RpcTimeoutError` outcome (and its call is cancelled).
                None: no limit here, 10 s for members on other nodes.
        """
        cluster = cluster_of(self._registry)
        if cluster is not None:
            return await cluster.broadcast(self._name, self, call, timeout)
        return await broadcast(self, call, timeout)

    def notify(
        self, call: Callable[[RemoteT], Awaitable[Any]], *, timeout: float | None = None
    ) -> int:
        """
        Fire and forget: start ``call(driver)`` for every open member and
        return at once, with the number of members called. Failures are
        logged at DEBUG level and otherwise ignored; ``server.close()`` waits
        for calls still running. With a backplane, the members on the other
        nodes are called too (not counted in the number returned).
        """
        cluster = cluster_of(self._registry)
        if cluster is not None:
            return cluster.notify(self._name, self, call, timeout)
        return notify(self._registry, self, call, timeout)

    def __repr__(self) -> str:
        return f"<Group {self._name!r} members={len(self)}>"
