"""
The message model: what travels between two wsrpc peers, independent of codec.

A connection carries, in order:

1. :class:`Header` — the client's first message, its activation data;
2. :class:`Accept` — the server's verdict when it accepts (a rejection is a
   WebSocket close frame, not a message);
3. then, in both directions and interleaved: :class:`Call`, :class:`Return`,
   :class:`Error` and :class:`Cancel`; and for streams (a :class:`Call` with
   ``credit``), :class:`Item` and :class:`Items` from the producer and
   :class:`Credit` from the consumer.

Codecs (:mod:`wsrpc.codecs`) turn these into frames and back; the rules about
which message may come when live in :mod:`wsrpc.protocol`.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Accept",
    "Call",
    "Cancel",
    "CloseCode",
    "Error",
    "Credit",
    "Header",
    "Item",
    "Items",
    "Message",
    "Return",
]


class CloseCode(enum.IntEnum):
    """The WebSocket close codes wsrpc sends, and why."""

    NORMAL = 1000
    """:meth:`close` with no code, either side."""
    GOING_AWAY = 1001
    """The server is shutting down."""
    PROTOCOL_ERROR = 1002
    """A message of the wrong shape or at the wrong time; a reused call id."""
    UNSUPPORTED_DATA = 1003
    """A frame of a type the negotiated codec does not use (text vs binary)."""
    ABNORMAL = 1006
    """No close frame: the connection dropped (never sent, only reported)."""
    INVALID_PAYLOAD = 1007
    """A frame the codec could not decode."""
    POLICY_VIOLATION = 1008
    """No header in time; a rejection with no code of the user's."""
    MESSAGE_TOO_BIG = 1009
    """A frame over ``max_message_size``."""
    INTERNAL_ERROR = 1011
    """The server's handler raised; a keepalive ping went unanswered."""
    TRY_AGAIN_LATER = 1013
    """The server is at its cap of connections (``max_connections``) or of
    connections still waiting for their header (``max_pending_headers``)."""


@dataclass(frozen=True, slots=True)
class Header:
    """The client's activation data, sent once, first."""

    value: Any
    max_calls: int | None = None
    """How many calls the client runs at once; None when the peer does not say."""
    max_size: int | None = None
    """The largest frame the client accepts, in bytes; None when it does not say."""
    streams: int = 0
    """The streams the client takes: 0 none, 1 STREAM, ITEM and CREDIT, 2 also
    ITEMS (announced as ``"streams"`` in its limits)."""


@dataclass(frozen=True, slots=True)
class Accept:
    """The server accepted the client; calls may flow both ways."""

    max_calls: int | None = None
    """How many calls the server runs at once; None when the peer does not say."""
    max_size: int | None = None
    """The largest frame the server accepts, in bytes; None when it does not say."""
    streams: int = 0
    """The streams the server takes, as :attr:`Header.streams`."""


@dataclass(frozen=True, slots=True)
class Call:
    """A request to run the remote method at ``path`` (dotted) with these arguments."""

    uid: int
    path: str
    args: list[Any]
    kwargs: dict[str, Any] | None = None
    parent: int | None = None
    """When the caller makes this call while serving one of the callee's
    calls (a callback), that call's id: the callee lets such nested calls
    past its concurrency limit, so that chains of callbacks cannot deadlock."""
    credit: int | None = None
    """Set for a stream call (a STREAM message on the wire): how many items
    the callee may send before it is granted more (:class:`Credit`). None
    for a plain call, answered by one :class:`Return` or :class:`Error`."""


@dataclass(frozen=True, slots=True)
class Return:
    """The successful outcome of call ``uid``."""

    uid: int
    value: Any


@dataclass(frozen=True, slots=True)
class Error:
    """The failed outcome of call ``uid``."""

    uid: int
    name: str
    message: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """The caller gave up on call ``uid``; the callee should cancel it."""

    uid: int


@dataclass(frozen=True, slots=True)
class Item:
    """One item of stream ``uid``, from the producer (the callee) to the consumer.

    The stream ends with a :class:`Return` (its value is nil) or an
    :class:`Error` for the same ``uid``."""

    uid: int
    value: Any


@dataclass(frozen=True, slots=True)
class Items:
    """Several items of stream ``uid`` in one message, in order (at least one).

    Sent only to a consumer that announced streams 2; each of ``values``
    counts against the credit as one :class:`Item` does."""

    uid: int
    values: list[Any]


@dataclass(frozen=True, slots=True)
class Credit:
    """The consumer of stream ``uid`` lets the producer send ``count`` more items."""

    uid: int
    count: int


Message = Header | Accept | Call | Return | Error | Cancel | Item | Items | Credit
"""Any message of the protocol."""
