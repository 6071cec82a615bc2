"""
The transports: the libraries that speak WebSocket for wsrpc, behind one seam.

* :mod:`.base`: the seam itself (:class:`Channel`, :class:`Listener`,
  :class:`ChannelClosed`, :class:`CloseFrames`); imports nothing of wsrpc.
* :mod:`.assembly`: RFC 6455 message assembly, sans-I/O, for transports
  that hand wsrpc frames rather than messages.
* One module per transport, each mapping wsrpc's :class:`~wsrpc._options.Options`
  to its library's own settings: :mod:`.websockets` (the default) and
  :mod:`.picows` (``transport="picows"``, the ``wsrpc[fast]`` extra).

This package picks a transport by name (:func:`listen`, :func:`connect`),
importing it only when used. The transports import the sans-I/O core
(close codes, HTTP types, options) and nothing above themselves: no
connection, server or communicator.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._options import TransportName
from .base import Channel, ChannelClosed, CloseFrames, Listener

if TYPE_CHECKING:
    from .._options import Options
    from ..http import HttpHandler

__all__ = [
    "Channel",
    "ChannelClosed",
    "CloseFrames",
    "Listener",
    "TransportName",
    "connect",
    "listen",
    "tls_context_for",
]

_FAST_MISSING = "transport='picows' needs picows: pip install 'wsrpc[fast]'"


async def listen(
    host: str,
    port: int,
    on_channel: Callable[[Channel], Awaitable[None]],
    *,
    options: Options,
    origins: Sequence[str | None] | None,
    http_handler: HttpHandler | None,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
) -> Listener:
    """
    Listen on ``host``:``port`` with the transport ``options.transport`` names.

    Each upgraded connection runs ``on_channel(channel)`` in a task of its own.
    ``ssl``: serve TLS (``wss://``) with this server-side context.
    ``reuse_port``: set ``SO_REUSEPORT``, so that other processes may listen
    on the same port (Linux spreads the connections among them).

    Raises:
        OSError: the address cannot be bound.
        ValueError: the transport cannot do what is asked (``http_handler``
            on picows).
    """
    if options.transport == "websockets":
        from . import websockets

        return await websockets.listen(
            host,
            port,
            on_channel,
            options=options,
            origins=origins,
            http_handler=http_handler,
            ssl=ssl,
            reuse_port=reuse_port,
        )
    if http_handler is not None:
        raise ValueError("http_handler needs transport='websockets'")
    try:
        from . import picows
    except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
        raise ImportError(_FAST_MISSING) from exc
    return await picows.listen(
        host, port, on_channel, options=options, origins=origins, ssl=ssl, reuse_port=reuse_port
    )


def tls_context_for(url: str, ssl: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    """
    The TLS context to open ``url`` with: ``ssl`` for a ``wss://`` URL, or
    the system's default one (:func:`ssl.create_default_context`) if it is
    None; None for a ``ws://`` URL.

    Raises:
        ValueError: ``ssl`` given with a URL that is not ``wss://``.
    """
    secure = urlsplit(url).scheme.lower() == "wss"
    if not secure:
        if ssl is not None:
            raise ValueError(f"ssl= needs a wss:// URL, not {url!r}")
        return None
    return ssl if ssl is not None else _ssl.create_default_context()


async def connect(
    url: str,
    *,
    additional_headers: Sequence[tuple[str, str]],
    options: Options,
    ssl: _ssl.SSLContext | None = None,
) -> tuple[Channel, list[tuple[str, str]]]:
    """
    Open a WebSocket to ``url`` with the transport ``options.transport``
    names; return its channel (not started) and the upgrade response's headers.

    ``ssl`` is the client-side TLS context of a ``wss://`` URL; the
    default one when None (see :func:`tls_context_for`).

    Raises:
        OSError: the TCP (or TLS) connection failed (:exc:`ssl.SSLError`
            for TLS).
        ValueError: a bad URL, ``ssl`` with a ``ws://`` URL, or the server
            refused the upgrade.
    """
    context = tls_context_for(url, ssl)
    if options.transport == "websockets":
        from . import websockets

        return await websockets.connect(
            url, additional_headers=additional_headers, options=options, ssl=context
        )
    try:
        from . import picows
    except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
        raise ImportError(_FAST_MISSING) from exc
    return await picows.connect(
        url, additional_headers=additional_headers, options=options, ssl=context
    )
