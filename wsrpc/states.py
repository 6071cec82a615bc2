"""
Lifecycle states of the server, the acceptor and the connector.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["AcceptorState", "CloseInfo", "ConnectorState", "ServerState"]


class ServerState(enum.Enum):
    """
    ``NONE`` ─open()─▶ ``OPENING`` ─▶ ``OPEN`` ─close()─▶ ``CLOSING`` ─▶ ``CLOSED``

    A failed :meth:`~WebSocketServer.open` goes back to ``NONE``.
    """

    NONE = "none"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class AcceptorState(enum.Enum):
    """
    ``NONE`` (waiting for the header) ─▶ ``ACCEPTING`` (the handler decides) ─▶
    ``OPEN`` ─close()─▶ ``CLOSING`` ─▶ ``CLOSED``; or ``ACCEPTING`` ─reject()─▶
    ``REJECTING`` ─▶ ``CLOSED``. A close by the peer, a dropped connection
    or a protocol error also pass through ``CLOSING``: from then on calls
    fail, while the socket is torn down.

    The handler only ever sees an acceptor from ``ACCEPTING`` on.
    """

    NONE = "none"
    ACCEPTING = "accepting"
    OPEN = "open"
    REJECTING = "rejecting"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnectorState(enum.Enum):
    """
    ``NONE`` ─connect()─▶ ``CONNECTING`` ─▶ ``OPEN`` ─close()─▶ ``CLOSING`` ─▶
    ``CLOSED``. A close by the server, a dropped connection or a protocol
    error also pass through ``CLOSING``: from then on calls fail, while the
    socket is torn down.

    A failed :meth:`~WebSocketConnector.connect` ends in ``CLOSED``.

    A reconnecting connector (``reconnect=True``) that loses its connection
    goes ``OPEN`` ─▶ ``CONNECTING`` ─▶ ``OPEN`` (calls made meanwhile
    wait); ``CLOSED`` stays final. Without ``reconnect``, a connector
    connects once; make a new one to connect again.
    """

    NONE = "none"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended; what :meth:`join` returns and close hooks receive."""

    code: int
    """The close code that explains the end (1006 when the connection
    dropped); always a plain ``int``, never a :class:`CloseCode` member."""
    reason: str
    """The close reason, possibly empty."""
    clean: bool
    """True when the closing handshake completed (both close frames went
    through): a graceful close, whatever the code. False for a failure: the
    connection dropped, a keepalive ping went unanswered, the peer never
    answered our close frame."""
    by_peer: bool
    """True when the peer started the close (its close frame came first, or
    the connection dropped); False when this side did."""

    def __post_init__(self) -> None:
        if type(self.code) is not int:  # a CloseCode member, or a bool
            object.__setattr__(self, "code", int(self.code))
