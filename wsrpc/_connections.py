"""
websockets connections with two hooks into frame processing.

* :attr:`on_close_frame` is called as soon as the peer's close frame is
  parsed. websockets reports a close only once the TCP connection is gone, so
  a close frame that arrived while the socket is still open is otherwise
  invisible; :meth:`WebSocketAcceptor.on_close_request` hooks run from here.
* :attr:`on_data_frame` sees every complete (unfragmented) binary frame
  before websockets queues it for ``recv()``, and may consume it by returning
  True. wsrpc consumes replies this way: the caller's future is resolved
  right in the protocol callback, instead of waking the receive loop and
  then the caller, and replies keep flowing even while the receive loop has
  stopped reading calls (flow control).

These subclasses are passed to websockets as ``create_connection``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

__all__ = ["ReportingClientConnection", "ReportingServerConnection"]

CloseFrameCallback = Callable[[int, str], None]
DataFrameCallback = Callable[[bytes], bool]
_CLOSE = Opcode.CLOSE
_BINARY = Opcode.BINARY


_READ_SIZE = 64 * 1024


def _shrink_reads(transport: asyncio.BaseTransport) -> None:
    # asyncio's selector transport reads with recv(256 KiB): a buffer above
    # glibc's initial 128 KiB mmap threshold, so unless something in the
    # process happened to raise that threshold, every read of a few bytes
    # maps, shrinks and unmaps fresh pages (a third of the server's time with
    # 1,000 busy clients). 64 KiB reads come from the heap and cost the same
    # per byte for large messages. Other transports (uvloop, SSL) read into
    # buffers of their own and have no such attribute.
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = _READ_SIZE  # type: ignore[attr-defined]


def _report(connection: Connection, callback: CloseFrameCallback | None) -> None:
    protocol = connection.protocol
    close = protocol.close_rcvd
    # Only a close the peer started: not its answer to the one we sent.
    if callback is not None and close is not None and protocol.close_rcvd_then_sent:
        callback(close.code, close.reason)


class _FrameHooks(Connection):
    """The hooks, for either side: mixed in before the side's own class."""

    on_close_frame: CloseFrameCallback | None = None
    on_data_frame: DataFrameCallback | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _shrink_reads(transport)

    def process_event(self, event: Event) -> None:
        # On every frame: keep the common case to a few identity tests.
        if type(event) is Frame:
            opcode = event.opcode
            if opcode is _BINARY and event.fin and self.on_data_frame is not None:
                if self.on_data_frame(bytes(event.data)):
                    return
            elif opcode is _CLOSE:
                super().process_event(event)
                _report(self, self.on_close_frame)
                return
        super().process_event(event)


class ReportingServerConnection(_FrameHooks, ServerConnection):
    upgrade_headers: Sequence[tuple[str, str]] = ()
    """Extra headers for the 101 response, set by the server's http_handler."""


class ReportingClientConnection(_FrameHooks, ClientConnection):
    pass
