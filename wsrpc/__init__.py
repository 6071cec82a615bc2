"""
wsrpc: typed remote procedure calls over WebSocket for asyncio.

A :class:`WebSocketServer` hands each client's header to your handler through
a :class:`WebSocketAcceptor`, which accepts the client with a provider or
rejects it; a :class:`WebSocketConnector` is the client. Once open, each side
calls the other's provider through ``get_driver()``, typed as the remote's
``Protocol``.

Layer: a front end (docs/architecture.md). May import any of wsrpc;
nothing in wsrpc imports it.
"""

from __future__ import annotations

# The blocking API lives in wsrpc.sync; imported so that ``import wsrpc`` is
# enough to reach wsrpc.sync.WebSocketConnector.
from . import sync as sync
from ._transports import TransportName
from .acceptor import WebSocketAcceptor
from .blocking import blocking
from .cluster import RedisBackplane
from .codecs import MsgpackCodec
from .connector import WebSocketConnector
from .exceptions import (
    BackplaneError,
    ConnectError,
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RejectedError,
    RemoteError,
    RpcTimeoutError,
    StateError,
    ValidationError,
    WsrpcError,
)
from .groups import Group, Outcome
from .http import HttpRequest, HttpResponse, Upgrade
from .messages import CloseCode
from .reconnect import ReconnectPolicy
from .server import Handler, WebSocketServer
from .states import AcceptorState, CloseInfo, ConnectorState, ServerState

__version__ = "0.1.0"

__all__ = [
    # server.py
    "Handler",
    "WebSocketServer",
    # cluster.py
    "RedisBackplane",
    # acceptor.py
    "WebSocketAcceptor",
    # blocking.py
    "blocking",
    # groups.py
    "Group",
    "Outcome",
    # http.py
    "HttpRequest",
    "HttpResponse",
    "Upgrade",
    # connector.py
    "WebSocketConnector",
    "TransportName",
    # reconnect.py
    "ReconnectPolicy",
    # states.py
    "AcceptorState",
    "CloseInfo",
    "ConnectorState",
    "ServerState",
    # messages.py
    "CloseCode",
    # codecs.py
    "MsgpackCodec",
    # exceptions.py
    "BackplaneError",
    "ConnectError",
    "ConnectionClosedError",
    "EncodeError",
    "ProtocolError",
    "RejectedError",
    "RemoteError",
    "RpcTimeoutError",
    "StateError",
    "ValidationError",
    "WsrpcError",
]
