"""
A loopback TCP proxy that tests put between a client and a server to break
the network on purpose.

Usage::

    async with TcpProxy(server.port) as proxy:
        await connector.connect(f"ws://127.0.0.1:{proxy.port}/")
        ...
        proxy.drop()  # or proxy.stall(), proxy.resume()

The proxy listens on 127.0.0.1, port 0, and opens one upstream connection per
accepted client. It forwards bytes both ways, half-closes (EOF) like the
endpoints do, and has three faults:

* :meth:`TcpProxy.drop` resets every current connection on both sides
  (``SO_LINGER`` 0, then abort: each end gets an RST, no FIN, no close frame);
* :meth:`TcpProxy.stall` stops reading from every socket, current and future,
  while keeping them open: nothing more is forwarded in either direction, as
  on a frozen network (bytes the proxy already holds still drain);
* :meth:`TcpProxy.resume` starts forwarding again.

Leaving the ``async with`` block (or :meth:`TcpProxy.close`) stops listening,
aborts every connection and returns once every socket of the proxy is closed.
Everything runs on the event loop that entered the block.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from types import TracebackType
from typing import Self, cast

__all__ = ["TcpProxy"]

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


class _Half(asyncio.Protocol):
    """One socket of a proxied connection: forwards what it reads to its peer."""

    def __init__(self, link: _Link) -> None:
        self._link = link
        self.peer: _Half | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False
        """The socket has sent us its EOF: it is never read again."""
        self.write_paused = False
        """This socket's write buffer is full: its peer must stop reading."""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Resolved once the socket is closed."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._link.proxy._sockets.add(self)
        if self._link.closed:
            # The other side went away while this socket was being opened.
            self.close(abort=True)
        else:
            self._link.update_reading()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.eof:
                # Both directions are finished: nothing is left to forward.
                self._link.close()
            else:
                peer.transport.write_eof()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.proxy._sockets.discard(self)
        self.lost.set_result(None)
        # One side gone means the other goes too: gracefully (pending bytes
        # are flushed) after a normal close, abruptly after an error.
        self._link.close(abort=exc is not None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._link.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._link.update_reading()

    # used by _Link

    def set_reading(self, reading: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.eof:
            # After EOF the transport no longer reads; resume_reading() would
            # make it read the EOF again.
            return
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def close(self, *, abort: bool, reset: bool = False) -> None:
        transport = self.transport
        if transport is None or (transport.is_closing() and not abort):
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                except OSError:  # pragma: no cover - already closed by the kernel
                    pass
        if abort:
            transport.abort()
        else:
            transport.close()


class _Link:
    """One proxied connection: the accepted (downstream) and upstream sockets."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.downstream = _Half(self)
        self.upstream = _Half(self)
        self.downstream.peer = self.upstream
        self.upstream.peer = self.downstream
        self.closed = False

    def halves(self) -> tuple[_Half, _Half]:
        return self.downstream, self.upstream

    def update_reading(self) -> None:
        """Read each socket unless stalled, not yet linked, or its peer is full."""
        down, up = self.downstream, self.upstream
        linked = down.transport is not None and up.transport is not None
        flowing = linked and not self.proxy.stalled and not self.closed
        down.set_reading(flowing and not up.write_paused)
        up.set_reading(flowing and not down.write_paused)

    def close(self, *, abort: bool = False, reset: bool = False) -> None:
        self.closed = True
        for half in self.halves():
            half.close(abort=abort, reset=reset)
        self.proxy._links.discard(self)


class TcpProxy:
    """
    A TCP proxy on 127.0.0.1 in front of ``upstream_host``:``upstream_port``.

    An async context manager: entering starts listening (read :attr:`port`),
    leaving closes everything.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._sockets: set[_Half] = set()  # every open socket, both sides
        self._closing = False
        self.stalled = False
        """Whether forwarding is stopped; see :meth:`stall`."""

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """How many proxied connections are currently open."""
        return len(self._links)

    async def start(self) -> None:
        """Start listening on 127.0.0.1, port 0."""
        if self._server is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, "127.0.0.1", 0)

    def _accepted(self) -> asyncio.Protocol:
        link = _Link(self)
        if self._closing:
            # Accepted just before close(): the socket is aborted once made.
            link.closed = True
            return link.downstream
        self._links.add(link)
        # The accepted socket is not read until the upstream socket is open.
        task = asyncio.get_running_loop().create_task(self._connect_upstream(link))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return link.downstream

    async def _connect_upstream(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        host, port = self._upstream
        try:
            await loop.create_connection(lambda: link.upstream, host, port)
        except OSError:
            link.close(abort=True)

    def drop(self) -> None:
        """Cut every current connection: both of its sockets are reset (RST)."""
        for link in list(self._links):
            link.close(abort=True, reset=True)
        for half in list(self._sockets):
            # Closed gracefully already, but still flushing to a silent peer.
            half.close(abort=True, reset=True)

    def stall(self) -> None:
        """Stop forwarding in both directions; sockets stay open."""
        self.stalled = True
        for link in self._links:
            link.update_reading()

    def resume(self) -> None:
        """Forward again after :meth:`stall`."""
        self.stalled = False
        for link in self._links:
            link.update_reading()

    async def close(self) -> None:
        """Stop listening, abort every connection, wait for every socket to close."""
        self._closing = True
        server = self._server
        if server is not None:
            server.close()
        for task in list(self._connecting):
            task.cancel()
        if self._connecting:
            await asyncio.wait(list(self._connecting))
        for link in list(self._links):
            link.close(abort=True)
        sockets = list(self._sockets)
        for half in sockets:
            half.close(abort=True)
        if sockets:
            # A socket is closed right after its protocol's connection_lost().
            await asyncio.wait([half.lost for half in sockets])
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
