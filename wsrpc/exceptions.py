"""
Every exception wsrpc raises to its users derives from :exc:`WsrpcError`.

The tree::

    WsrpcError
    ├── StateError            you called something the object's state forbids
    │                         (also a RuntimeError)
    ├── EncodeError           a value you passed or returned cannot go on the
    │                         wire: unsupported type, too deep, too large
    ├── ConnectError          the WebSocket could not be opened at all
    ├── RejectedError         the server read your header and said no
    ├── ConnectionClosedError a call failed because the connection closed
    ├── RemoteError           the remote method raised, or was refused
    ├── ValidationError       a value does not match its annotation
    │                         (validate=True); reaches callers as a
    │                         RemoteError named "ValidationError"
    ├── RpcTimeoutError       a connect or a call ran out of time
    │                         (also the built-in TimeoutError)
    ├── BackplaneError        the backplane (Redis) cannot be reached: an
    │                         operation that needs another node failed
    └── ProtocolError         the peer broke the wire protocol; surfaces to
                              users only through the close code it causes

Local misuse (:exc:`StateError`, :exc:`EncodeError`) is kept apart from what
the peer or the network did. Exceptions of ``websockets`` and ``msgpack`` are
converted at the boundary (``raise ... from exc``) and never reach the user.

Layer: the sans-I/O core (docs/architecture.md). Imports only the core:
no asyncio, no socket, no WebSocket library.
"""

from __future__ import annotations

from typing import Any

__all__ = [
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


class WsrpcError(Exception):
    """Root of every exception raised by wsrpc."""


class StateError(WsrpcError, RuntimeError):
    """
    The operation is not allowed in the object's current state.

    For example: accepting a client twice, calling a remote method before the
    connection is open, or opening a server that is already open.
    """


class EncodeError(WsrpcError):
    """
    A value cannot be encoded for the wire.

    Raised locally by a call whose arguments the codec cannot encode (an
    unsupported type, nesting too deep) or whose encoded message is larger
    than the peer accepts. A provider's return value that cannot be encoded
    reaches the *caller* as a :exc:`RemoteError` named ``"EncodeError"``.
    """


class ValidationError(WsrpcError):
    """
    A value does not match the annotation it is checked against (``validate=True``).

    Raised on the side that serves a call, before the method runs (an
    argument: ``"argument 'a': Expected `int`, got `str`"``) or after it
    (its result: ``"result: ..."``). It never reaches a caller as itself:
    the caller gets a :exc:`RemoteError` whose ``name`` is
    ``"ValidationError"`` and whose ``message`` is this one. A provider may
    raise it too, to refuse a value in the same way.
    """


class ConnectError(WsrpcError):
    """The WebSocket connection could not be opened (refused, bad URL, HTTP error)."""


class _CloseInfo(WsrpcError):
    """Shared shape of the errors that carry a WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        # A plain int whatever was passed: most codes (4001, 1012) cannot be
        # CloseCode members, so none is, and equality and repr agree.
        self.code = code = int(code)
        """The WebSocket close code, a plain ``int``: the one in the close
        frame (1005 if it carried none), or 1006 when the connection dropped
        without one."""
        self.reason = reason
        """The close reason, possibly empty."""
        super().__init__(code, reason)

    def __str__(self) -> str:
        if self.reason:
            return f"{self._what} (code {self.code}: {self.reason})"
        return f"{self._what} (code {self.code})"

    _what = ""


class RejectedError(_CloseInfo):
    """
    :meth:`WebSocketConnector.connect` was refused by the server.

    ``code`` and ``reason`` are those the server passed to
    :meth:`WebSocketAcceptor.reject`, or the policy code wsrpc chose when the
    server's handler failed to decide.
    """

    _what = "connection rejected by the server"


class ConnectionClosedError(_CloseInfo):
    """
    A call failed because the connection is closed or is closing.

    Every call pending when the connection closes fails with this error, on
    both sides, carrying the close code and reason. A call made after the
    close fails at once with it.
    """

    _what = "connection closed"


class RemoteError(WsrpcError):
    """
    The remote side answered a call with an error.

    ``name`` is the type name of the exception the remote method raised (for
    example ``"ValueError"``), or ``"MemberAccessError"`` when the remote side
    refused to resolve the called path. ``traceback`` is only set when the
    remote side opted in to sending tracebacks.
    """

    def __init__(self, name: str, message: str, traceback: str | None = None) -> None:
        self.name = name
        """Type name of the remote exception."""
        self.message = message
        """The remote exception's message."""
        self.traceback = traceback
        """The remote traceback, when the remote side sends them; else None."""
        super().__init__(name, message)

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name


class RpcTimeoutError(WsrpcError, TimeoutError):
    """A connect or a call did not complete in time.

    A timed-out call is cancelled on the remote side too, when the peer is
    wsrpc (TGrid has no cancellation message).
    """


class BackplaneError(WsrpcError):
    """
    The backplane joining a server to its application's other nodes (Redis)
    cannot be reached, or refused an operation.

    Raised promptly by what needs another node (a call through
    ``server.get_driver(id)`` to a connection held elsewhere, a cluster-wide
    broadcast, ``server.disconnect(id)`` of a remote connection) while the
    backplane is down, and by ``server.open()`` when it cannot join the
    application. Local connections, local calls and local groups keep
    working; the backplane reconnects by itself.

    A broadcast that called members and then lost the backplane (or could
    not ask it who the members of a silent node are) raises it with
    :attr:`outcomes` set: it cannot account for every member, and says so
    rather than return a list that silently lacks some.
    """

    outcomes: list[Any] | None = None
    """For a broadcast that could not account for every member: the
    outcomes it has (:class:`~wsrpc.Outcome`), local members' included.
    None otherwise."""


class ProtocolError(WsrpcError):
    """
    The peer violated the wire protocol.

    Raised by the sans-I/O core; the I/O layer answers it by closing the
    connection with ``code`` (1002 protocol error, 1003 unsupported data,
    1007 invalid payload), so users meet it only as the code of a
    :exc:`ConnectionClosedError` or :exc:`RejectedError`.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code = int(code)
        """The close code it calls for, a plain ``int``."""
        self.reason = reason
        super().__init__(code, reason)

    def __str__(self) -> str:
        return f"{self.reason} (close code {self.code})"
