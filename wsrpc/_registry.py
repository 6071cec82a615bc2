"""
Who is connected to a server, and in which groups: the one place that knows.

A :class:`~wsrpc.WebSocketServer` owns one :class:`Registry`. It holds

* the live connections by id, from the upgrade until the close hooks ran
  (``server.acceptors`` is a read-only view of them);
* group membership, both ways: the members of each group, and the groups of
  each connection, kept in step here and nowhere else;
* the tasks of fire-and-forget notifications, which ``server.close()``
  waits for.

The operations are synchronous and see this process: adding a member, the
size of a group, iterating over it. :class:`LocalRegistry` is the whole of it
for a server on its own. A registry that spans processes (a backplane)
fills the same interface for what this process holds and adds asynchronous,
cluster-wide operations beside it; the server and the groups call only what
is declared here.

This module imports nothing of wsrpc's connections: a connection is anything
with an ``id`` and an ``is_closed``.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from collections.abc import Coroutine, Mapping
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Connection", "LocalRegistry", "Registry"]


class Connection(Protocol):
    """What the registry needs of a connection."""

    @property
    def id(self) -> int: ...

    @property
    def is_closed(self) -> bool: ...


C = TypeVar("C", bound=Connection)


class Registry(abc.ABC, Generic[C]):
    """The connections of one server and their groups; see the module's docstring."""

    __slots__ = ()

    # -- connections ---------------------------------------------------------

    @abc.abstractmethod
    def new_id(self) -> int:
        """
        An id for a new connection: never one in use or used before, in
        0 <= id < 2**63 (it fits a signed 64-bit database column).
        """

    @abc.abstractmethod
    def add(self, connection: C) -> None:
        """List ``connection`` (made with :meth:`new_id`) as live."""

    @abc.abstractmethod
    def remove(self, connection: C) -> None:
        """Take ``connection`` out of the live ones and out of all its groups."""

    @property
    @abc.abstractmethod
    def connections(self) -> Mapping[int, C]:
        """The live connections of this process by id (a read-only view)."""

    def owns(self, connection: object) -> bool:
        """Whether ``connection`` is one of this registry's live connections."""
        connection_id = getattr(connection, "id", None)
        return isinstance(connection_id, int) and (
            self.connections.get(connection_id) is connection
        )

    # -- groups ----------------------------------------------------------------

    @abc.abstractmethod
    def join(self, name: str, connection: C) -> bool:
        """
        Make ``connection`` a member of group ``name``; no effect if it is one.

        Returns False, and adds nothing, when the connection is closing or
        closed: a closed connection never lingers in a group.
        """

    @abc.abstractmethod
    def leave(self, name: str, connection: C) -> None:
        """Take ``connection`` out of group ``name`` if it is a member."""

    @abc.abstractmethod
    def members(self, name: str) -> Mapping[int, C]:
        """The members of group ``name`` in this process, by id (a read-only view)."""

    @abc.abstractmethod
    def groups_of(self, connection_id: int) -> frozenset[str]:
        """The names of the groups connection ``connection_id`` belongs to."""

    @abc.abstractmethod
    def group_names(self) -> list[str]:
        """The names of the groups that have members (a snapshot)."""

    # -- background calls ------------------------------------------------------

    @abc.abstractmethod
    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (a notification) in a task that :meth:`wait_idle` waits for."""

    @abc.abstractmethod
    async def wait_idle(self) -> None:
        """Wait until every task started by :meth:`track` has ended."""


class LocalRegistry(Registry[C]):
    """A registry for one server in one process: plain dictionaries."""

    __slots__ = ("_connections", "_groups", "_ids", "_memberships", "_tasks")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._connections: dict[int, C] = {}
        self._groups: dict[str, dict[int, C]] = {}
        # Made on first use: most connections join no group.
        self._memberships: dict[int, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, connection: C) -> None:
        self._connections[connection.id] = connection

    def remove(self, connection: C) -> None:
        for name in self._memberships.pop(connection.id, ()):
            self._drop_member(name, connection)
        if self._connections.get(connection.id) is connection:
            del self._connections[connection.id]

    @property
    def connections(self) -> Mapping[int, C]:
        return MappingProxyType(self._connections)

    def join(self, name: str, connection: C) -> bool:
        if connection.is_closed:
            return False
        self._groups.setdefault(name, {})[connection.id] = connection
        self._memberships.setdefault(connection.id, set()).add(name)
        return True

    def leave(self, name: str, connection: C) -> None:
        self._drop_member(name, connection)
        names = self._memberships.get(connection.id)
        if names is not None:
            names.discard(name)
            if not names:
                del self._memberships[connection.id]

    def _drop_member(self, name: str, connection: C) -> None:
        members = self._groups.get(name)
        if members is not None and members.get(connection.id) is connection:
            del members[connection.id]
            if not members:
                del self._groups[name]  # empty groups cost nothing

    def members(self, name: str) -> Mapping[int, C]:
        return MappingProxyType(self._groups.get(name, {}))

    def groups_of(self, connection_id: int) -> frozenset[str]:
        return frozenset(self._memberships.get(connection_id, ()))

    def group_names(self) -> list[str]:
        return list(self._groups)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))
