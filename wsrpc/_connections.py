"""
websockets connections that tell wsrpc when the peer's close frame arrives.

websockets reports a close only once the TCP connection is gone; a close
frame that has arrived while the socket is still open is invisible to
``recv()``. These subclasses, passed to websockets as ``create_connection``,
call :attr:`on_close_frame` as soon as the peer's close frame is parsed, so
that :meth:`WebSocketAcceptor.on_close_request` hooks can run then.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

__all__ = ["ReportingClientConnection", "ReportingServerConnection"]

CloseFrameCallback = Callable[[int, str], None]
_CLOSE = Opcode.CLOSE


def _report(
    connection: ServerConnection | ClientConnection, callback: CloseFrameCallback | None
) -> None:
    protocol = connection.protocol
    close = protocol.close_rcvd
    # Only a close the peer started: not its answer to the one we sent.
    if callback is not None and close is not None and protocol.close_rcvd_then_sent:
        callback(close.code, close.reason)


class ReportingServerConnection(ServerConnection):
    on_close_frame: CloseFrameCallback | None = None

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        # On every frame: keep the common case to one type and one opcode test.
        if type(event) is Frame and event.opcode is _CLOSE:
            _report(self, self.on_close_frame)


class ReportingClientConnection(ClientConnection):
    on_close_frame: CloseFrameCallback | None = None

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        # On every frame: keep the common case to one type and one opcode test.
        if type(event) is Frame and event.opcode is _CLOSE:
            _report(self, self.on_close_frame)
