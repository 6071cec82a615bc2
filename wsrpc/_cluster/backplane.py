"""
The backplane seam: what a cluster of servers needs of a message broker.

A :class:`Backplane` joins the nodes of one application: it publishes
bytes on named channels (saying how many subscribers got them), delivers
what is published on the channels this node subscribes to, and keeps a few
small keys with a time to live (node slots, the group index). The server
never sees the engine behind it; :class:`~wsrpc.RedisBackplane` fills it with
Redis, and another engine (NATS: subjects, its key-value store) can fill it
the same way without touching the server.

Channel and key names are given without the application's name; the
backplane prefixes them with ``"{name}:"``, so applications sharing a broker
never meet.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable

__all__ = ["Backplane", "MessageHandler", "StateHandler"]

MessageHandler = Callable[[str, bytes], None]
"""``handler(channel, data)``: a message arrived on a subscribed channel."""

StateHandler = Callable[[bool], None]
"""``handler(up)``: the backplane is reachable again (True) or lost (False)."""


class Backplane(abc.ABC):
    """
    One node's link to the broker that joins an application's nodes.

    Every method that talks to the broker raises
    :exc:`~wsrpc.BackplaneError` when it cannot, promptly (within a short
    socket timeout), and at once while the backplane is known to be down.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The application's name: nodes with the same name form one application."""

    @property
    @abc.abstractmethod
    def is_up(self) -> bool:
        """Whether the broker is reachable and the subscriptions are in place."""

    @abc.abstractmethod
    async def start(
        self, channels: Iterable[str], on_message: MessageHandler, on_state: StateHandler
    ) -> None:
        """
        Connect, subscribe to ``channels`` and deliver their messages to
        ``on_message`` (called in the event loop, in order, never
        concurrently). ``on_state`` hears of every loss and recovery; after a
        loss the backplane reconnects and re-subscribes by itself.

        Raises:
            BackplaneError: the broker cannot be reached now.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Add ``channel`` to the subscriptions (kept across reconnections)."""

    @abc.abstractmethod
    def kick(self) -> None:
        """The link looks dead (a command timed out): drop it and reconnect."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Unsubscribe and disconnect. Idempotent."""

    # -- messages --------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes) -> int:
        """Publish ``data`` on ``channel``; return how many subscribers received it."""

    # -- keys ------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, key: str, value: str, ttl: float) -> bool:
        """Set ``key`` to ``value`` for ``ttl`` seconds if it does not exist; whether it did."""

    @abc.abstractmethod
    async def renew(self, key: str, value: str, ttl: float) -> int:
        """
        Keep ``key`` at ``value`` for ``ttl`` more seconds, atomically.

        Returns 1 if it held ``value``, 2 if it was missing (and is set now:
        the broker lost it), 0 if another value holds it (nothing changed).
        """

    @abc.abstractmethod
    async def release(self, key: str, value: str) -> None:
        """Delete ``key`` if it holds ``value``."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""

    @abc.abstractmethod
    async def update_sets(
        self,
        added: dict[str, set[str]],
        removed: dict[str, set[str]],
        ttl: float,
    ) -> None:
        """Add and remove members of sets in one round trip; touched sets live ``ttl`` s more."""

    @abc.abstractmethod
    async def members(self, key: str) -> set[str]:
        """The members of set ``key`` (empty if it does not exist)."""

    @abc.abstractmethod
    async def expire(self, keys: Iterable[str], ttl: float) -> None:
        """Let ``keys`` live ``ttl`` seconds more."""

    @abc.abstractmethod
    async def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys``."""
