"""
The server: :class:`WebSocketServer`, its registry of connections, groups and hooks.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl as _ssl
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from . import _transports
from ._cluster.backplane import Backplane
from ._cluster.registry import ClusterRegistry
from ._hooks import run_hook
from ._options import (
    DEFAULT_CALL_ERROR_LOG_LEVEL,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_DECODE_BUDGET,
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    Options,
    check_timeout,
)
from ._registry import LocalRegistry, Registry
from ._transports import Channel, Listener, TransportName
from ._transports.asgi import AsgiApp, make_app
from ._util import check_close
from .acceptor import TOKEN, ServerSide, WebSocketAcceptor
from .codecs import Codec, CodecName, make_codec
from .driver import CallFunction, Driver, Link
from .exceptions import ConnectionClosedError, StateError
from .groups import Group, Outcome, broadcast, notify
from .http import HttpHandler
from .messages import CloseCode
from .states import CloseInfo, ServerState
from .validation import NATIVE_JSON, NATIVE_MSGPACK, RemoteTypes, type_argument, value_checker

__all__ = ["ConnectHook", "DisconnectHook", "Handler", "WebSocketServer"]

logger = logging.getLogger("wsrpc")

T = TypeVar("T")
HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")

Handler = Callable[[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]], Awaitable[None]]
"""What :meth:`WebSocketServer.open` calls for each client, once its header is in."""

ConnectHook = Callable[[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]], Awaitable[None] | None]
"""``hook(acceptor)``: a client was accepted."""
DisconnectHook = Callable[
    [WebSocketAcceptor[HeaderT, ProviderT, RemoteT], CloseInfo], Awaitable[None] | None
]
"""``hook(acceptor, info)``: an accepted client's connection is gone."""


class WebSocketServer(Generic[HeaderT, ProviderT, RemoteT]):
    """
    A WebSocket endpoint serving wsrpc clients.

    Type parameters: the ``Header`` clients send, the ``Provider`` the server
    gives each client, and the ``Remote`` interface of the clients' providers
    (what :meth:`WebSocketAcceptor.get_driver` returns).

    Usage::

        async with WebSocketServer[Header, Calculator, Client]() as server:
            await server.open(0, handler)
            print(server.port)
            ...

    Args:
        max_message_size: Largest incoming frame, in bytes (default 1 MiB).
            Larger frames close the connection with 1009. Told to clients, so
            a reply too large for a client becomes an error for its caller.
        max_concurrent_calls: Calls one client may have running here at
            once (default 128). Clients wait before sending more.
        header_timeout: Seconds a client has to send its header after the
            upgrade (default 10); then it is closed with 1008.
        ping_interval: Seconds between keepalive pings (default 20; None
            disables keepalive).
        ping_timeout: Seconds to wait for a pong before the connection is
            deemed dead and closed with 1011 (default 20).
        close_timeout: Seconds any close may take, from its start (our close
            frame, the client's, or the end of its stream) to the socket's
            release (default 10): a client that does not complete the
            closing handshake by then, or reads nothing, is aborted.
        stall_timeout: Seconds a client may keep the server's write buffer
            over its high-water mark, reading nothing of what it is sent,
            before it is aborted with 1008 (default 20; None: no limit, the
            keepalive alone catches it).
        compression: Negotiate permessage-deflate (default False: small RPC
            messages rarely gain from it and it costs latency and memory).
        send_tracebacks: Include provider tracebacks in error replies
            (default False; they reveal source code, enable for debugging).
        call_timeout: Default seconds for calls made to clients (default
            None: no limit).
        max_connections: Most connections open at once, from the upgrade
            to the close (default 10,000). One more is closed with 1013
            (try again later) right after its upgrade.
        max_pending_headers: Most connections open at once that have not
            sent their header yet (default 1,000): they cost the server
            memory before anyone is identified. One more is closed with
            1013. Each waits at most ``header_timeout``.
        decode_budget: Seconds a connection may spend decoding its messages
            (those over 256 bytes) per second (default 0.1: 10 %), beyond
            2 ns per byte (what copying a blob costs is never charged); a
            connection over it is not read until that second ends
            (back-pressure: one peer sending frames expensive to decode
            cannot take the event loop from the others). None: no budget.
        call_error_log_level: Level at which a provider method that raises
            is logged, with its traceback, on the ``wsrpc`` logger (default
            ``logging.INFO``; ``logging.DEBUG`` to quieten it). Never above
            INFO, since any client can make a method raise at will:
            ``ValueError`` for a higher level.
        origins: Allowed values of the ``Origin`` request header, for
            defending browser clients against cross-site WebSocket hijacking:
            a request with another origin gets HTTP 403 before any acceptor
            exists. Include None to allow requests without an ``Origin``
            (non-browser clients). Default None: any origin.
        codecs: The protocols clients may speak: ``"msgpack"`` (wsrpc
            clients) and ``"tgrid"`` (TGrid clients, JSON); the default
            serves both. A client opening with another is closed with 1003.
        transport: The WebSocket library underneath: ``"websockets"`` (the
            default) or ``"picows"`` (``pip install wsrpc[fast]``; no
            compression, no ``http_handler``). Clients may use either.
        validate: Check every incoming call's arguments against the
            provider method's annotations before it runs, strictly (``"1"``
            is not an ``int``), and its result on the way out; a mismatch
            reaches the caller as a :exc:`RemoteError` named
            ``"ValidationError"``. The client's header is checked against
            ``Header`` too, for a server made as
            ``WebSocketServer[Header, ...](...)``: a mismatch closes the
            connection with 1008 ``"invalid header: ..."`` before the
            handler runs. Default False (its cost: ``docs/validation.md``);
            needs ``pip install 'wsrpc[validate]'`` (msgspec), else
            ImportError.
        backplane: Joins this server to the other servers of its
            application, in other processes or on other machines, such as
            :class:`RedisBackplane` (``pip install wsrpc[redis]``): ids are
            unique across them, :meth:`get_driver` and :meth:`disconnect`
            reach connections on any of them, groups and broadcasts span
            them (see ``docs/scaling.md``). One backplane per server.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        header_timeout: float = 10.0,
        max_connections: int = 10_000,
        max_pending_headers: int = 1_000,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        compression: bool = False,
        send_tracebacks: bool = False,
        call_timeout: float | None = None,
        call_error_log_level: int = DEFAULT_CALL_ERROR_LOG_LEVEL,
        decode_budget: float | None = DEFAULT_DECODE_BUDGET,
        origins: Sequence[str | None] | None = None,
        codecs: Sequence[CodecName] = ("msgpack", "tgrid"),
        transport: TransportName = "websockets",
        validate: bool = False,
        backplane: Backplane | None = None,
    ) -> None:
        check_timeout(header_timeout, "header_timeout")
        if max_connections < 1 or max_pending_headers < 1:
            raise ValueError("max_connections and max_pending_headers must be at least 1")
        self._max_connections = max_connections
        self._max_pending_headers = max_pending_headers
        self._pending_headers: set[int] = set()  # ids of acceptors before their header
        if not codecs or not set(codecs) <= {"msgpack", "tgrid"}:
            raise ValueError("codecs must name 'msgpack', 'tgrid' or both")
        self._allowed_codecs = frozenset(codecs)
        self._origins = None if origins is None else list(origins)
        self._options = Options(
            max_message_size=max_message_size,
            max_concurrent_calls=max_concurrent_calls,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            stall_timeout=stall_timeout,
            compression=compression,
            send_tracebacks=send_tracebacks,
            call_timeout=call_timeout,
            call_error_log_level=call_error_log_level,
            decode_budget=decode_budget,
            transport=transport,
            validate=validate,
        )
        self._state = ServerState.NONE
        self._server: Listener | None = None
        self._handler: Handler[HeaderT, ProviderT, RemoteT] | None = None
        self._entry = _Entry(self._handle)
        self._cluster: ClusterRegistry | None = None
        self._registry: Registry[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]]
        if backplane is None:
            self._registry = LocalRegistry()
        else:
            if not isinstance(backplane, Backplane):
                raise TypeError(f"backplane must be a Backplane, not {type(backplane).__name__}")
            self._cluster = ClusterRegistry(
                backplane, max_message_size=max_message_size, call_timeout=call_timeout
            )
            self._registry = self._cluster
        self._connect_hooks: list[ConnectHook[HeaderT, ProviderT, RemoteT]] = []
        self._disconnect_hooks: list[DisconnectHook[HeaderT, ProviderT, RemoteT]] = []
        # What acceptors need of the server. Partials of module functions
        # over the server's parts, not bound methods: nothing refers back to
        # the server itself, so a closed server is freed by reference counting.
        self._side = ServerSide(
            options=self._options,
            header_timeout=header_timeout,
            codec_for=functools.partial(_codec_for_first_frame, self._allowed_codecs, {}),
            connected=functools.partial(_run_hooks, self._connect_hooks),
            disconnected=functools.partial(_run_hooks, self._disconnect_hooks),
            release=self._registry.remove,
            groups_of=self._registry.groups_of,
        )
        self._http_handler: HttpHandler | None = None
        self._closed = asyncio.Event()
        self._draining = False  # shutdown() stopped accepting
        self._asgi = False  # served through asgi(), not open()

    @property
    def state(self) -> ServerState:
        """Where the server stands; see :class:`ServerState`."""
        return self._state

    @property
    def port(self) -> int:
        """
        The TCP port the server listens on (useful after ``open(0, ...)``).

        Raises:
            StateError: the server is not open.
        """
        if self._asgi and self._state is ServerState.OPEN:
            raise StateError("no port: the server is served by an ASGI server (asgi())")
        if self._server is None or self._state is not ServerState.OPEN:
            raise StateError(f"no port: the server is {self._state.value}")
        return self._server.port

    @property
    def acceptors(self) -> MappingProxyType[int, WebSocketAcceptor[HeaderT, ProviderT, RemoteT]]:
        """
        Live connections by :attr:`WebSocketAcceptor.id` (a read-only view).

        A connection is listed from its upgrade (before its header, in state
        ``NONE``) until it is closed and its close hooks have run. Store an
        id, and look it up here later to reach that connection again: ids are
        never reused, so an old id never finds a newer connection.
        """
        connections = self._registry.connections
        assert isinstance(connections, MappingProxyType)
        return connections

    # -- groups and broadcast ------------------------------------------------

    def group(self, name: str) -> Group[HeaderT, ProviderT, RemoteT]:
        """The group called ``name`` (empty until connections are added to it)."""
        return Group(self._registry, name)

    @property
    def groups(self) -> dict[str, Group[HeaderT, ProviderT, RemoteT]]:
        """The groups that have members, by name (a snapshot)."""
        return {name: Group(self._registry, name) for name in self._registry.group_names()}

    async def broadcast(
        self, call: Callable[[RemoteT], Awaitable[T]], *, timeout: float | None = None
    ) -> list[Outcome[T]]:
        """
        Run ``call(driver)`` for every open connection at once; return each
        outcome. See :meth:`Group.broadcast`.
        """
        members = list(self._registry.connections.values())
        if self._cluster is not None:
            return await self._cluster.broadcast(None, members, call, timeout)
        return await broadcast(members, call, timeout)

    def notify(
        self, call: Callable[[RemoteT], Awaitable[Any]], *, timeout: float | None = None
    ) -> int:
        """Fire and forget ``call(driver)`` to every open connection; see :meth:`Group.notify`."""
        registry = self._registry
        members = list(registry.connections.values())
        if self._cluster is not None:
            return self._cluster.notify(None, members, call, timeout)
        return notify(registry, members, call, timeout)

    # -- connections by id, on any node ------------------------------------------

    def get_driver(self, connection_id: int, *, timeout: float | None = None) -> RemoteT:
        """
        A driver for the client of connection ``connection_id``, typed as ``Remote``.

        The connection may be held by this server or, with a backplane, by
        any server of the application: calls through the driver run on that
        connection and return its result (or raise its error) here. An id
        that no live node holds fails each call at once with
        :exc:`ConnectionClosedError` (code 1006), not after a timeout. A call
        to another node while the backplane is down raises
        :exc:`BackplaneError`; one in flight to a node that dies fails with
        :exc:`ConnectionClosedError` within a few seconds (see
        ``docs/scaling.md``). Cancelling a call cancels it where it runs.

        The driver is looked up on every call, so it may be made before the
        connection exists and kept after it closed.

        Args:
            timeout: Seconds after which each call fails with
                :exc:`RpcTimeoutError`; None uses ``call_timeout``.

        Raises:
            ValueError: ``timeout`` is not positive, or the id is not in
                ``[0, 2**63)``.
        """
        check_timeout(timeout)
        if type(connection_id) is not int or not 0 <= connection_id < 2**63:
            raise ValueError(f"connection ids are integers in [0, 2**63), not {connection_id!r}")
        # Streams through a connection id are not served (yet): iterating
        # such a call fails at once with StateError, saying so.
        link = Link("streams through server.get_driver(connection_id) are not supported")
        call: CallFunction = functools.partial(
            _call_by_id, self._registry, self._cluster, connection_id, self._options.call_timeout
        )
        stream = link.stream
        if self._side.remote_types is not None:  # validate=True: convert here, once
            call, stream = self._side.remote_types[True].wrap(call, stream)
        link.open(call, stream)
        return cast(RemoteT, Driver(link, "", timeout))

    async def disconnect(
        self, connection_id: int, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> bool:
        """
        Close connection ``connection_id``, held by this server or (with a
        backplane) by any server of the application, with ``code`` and
        ``reason``; return whether a live connection had that id.

        Returns once the connection is closed (its close hooks ran).

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
            BackplaneError: the connection may be on another node and the
                backplane is down.
        """
        check_close(code, reason)
        acceptor = self._registry.connections.get(connection_id)
        if acceptor is not None:
            if acceptor.is_closed:
                return False
            await acceptor.close(code, reason)
            return True
        cluster = self._cluster
        if cluster is None or cluster.holds_slot_of(connection_id):
            return False
        wait = self._options.close_timeout + 5.0
        return await cluster.disconnect(connection_id, code, reason, wait)

    # -- lifecycle hooks -----------------------------------------------------

    def on_connect(
        self, hook: ConnectHook[HeaderT, ProviderT, RemoteT]
    ) -> ConnectHook[HeaderT, ProviderT, RemoteT]:
        """
        Register ``hook(acceptor)``, run when a client is accepted, before
        :meth:`WebSocketAcceptor.accept` returns. Plain or async; its
        exceptions are logged. Usable as a decorator; returns ``hook``.
        """
        self._connect_hooks.append(hook)
        return hook

    def on_disconnect(
        self, hook: DisconnectHook[HeaderT, ProviderT, RemoteT]
    ) -> DisconnectHook[HeaderT, ProviderT, RemoteT]:
        """
        Register ``hook(acceptor, info)``, run when an accepted client's
        connection is gone, after its own :meth:`WebSocketAcceptor.on_closed`
        hooks and before it leaves :attr:`acceptors` and its groups.
        ``info.clean`` tells a graceful close from a failure. Usable as a
        decorator; returns ``hook``.
        """
        self._disconnect_hooks.append(hook)
        return hook

    async def open(
        self,
        port: int,
        handler: Handler[HeaderT, ProviderT, RemoteT],
        *,
        host: str = "127.0.0.1",
        http_handler: HttpHandler | None = None,
        ssl: _ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        """
        Start listening on ``host``:``port`` and serve each client with ``handler``.

        Args:
            port: TCP port; 0 picks a free one (read it back from :attr:`port`).
            handler: Coroutine function called with each client's acceptor
                once its header has arrived; it must accept or reject it.
            host: Interface to bind. The default is loopback only; pass
                ``"0.0.0.0"`` or ``"::"`` to serve other machines.
            http_handler: Sees every HTTP request before the upgrade and may
                answer it or add headers to the upgrade (see :mod:`wsrpc.http`).
            ssl: Serve TLS (``wss://``) with this server-side context (its
                certificate chain loaded; ``verify_mode = CERT_REQUIRED``
                and a CA to demand client certificates). None: plain ``ws://``.
            reuse_port: Set ``SO_REUSEPORT`` on the listening socket, so that
                several processes may serve the same port, each opening it
                with ``reuse_port=True`` (Linux spreads new connections
                among them). With port 0, the first process gets a free
                port, which the others then open by its number.

        Raises:
            StateError: the server is not in the ``NONE`` state.
            OSError: the address cannot be bound (the state returns to ``NONE``).
            ValueError: an ``http_handler`` with ``transport="picows"``.
        """
        if self._state is not ServerState.NONE:
            raise StateError(f"cannot open: the server is {self._state.value}")
        self._side = _typed_side(self, self._side)
        if self._cluster is not None and self._side.remote_types is not None:
            self._cluster.remote_types = self._side.remote_types[True]
        self._state = ServerState.OPENING
        self._handler = handler
        self._http_handler = http_handler
        if self._cluster is not None:
            try:
                await self._cluster.start()
            except BaseException:
                self._state = ServerState.NONE
                raise
        try:
            self._server = await _transports.listen(
                host,
                port,
                self._entry,
                options=self._options,
                origins=self._origins,
                http_handler=http_handler,
                ssl=ssl,
                reuse_port=reuse_port,
            )
        except BaseException:
            if self._cluster is not None:
                await self._cluster.stop()
            self._state = ServerState.NONE
            raise
        self._state = ServerState.OPEN

    def asgi(self, handler: Handler[HeaderT, ProviderT, RemoteT]) -> AsgiApp:
        """
        An ASGI application that serves ``handler`` to WebSocket clients,
        for an ASGI server (uvicorn, hypercorn) to run, alone or mounted in
        a web framework (Starlette, FastAPI)::

            app.mount("/rpc", server.asgi(handler))

        Everything of the server holds as with :meth:`open`: its limits,
        ``origins`` (HTTP 403), codecs, hooks, groups, :attr:`acceptors`,
        :meth:`close` and :meth:`shutdown`. The ASGI server owns the socket,
        the upgrade, TLS, frame-level limits and compression: see "Inside an
        ASGI app" in docs/deployment.md. Each acceptor's
        :attr:`~WebSocketAcceptor.ip`, :attr:`~WebSocketAcceptor.path` and
        :attr:`~WebSocketAcceptor.request_headers` come from the ASGI scope
        (so a proxy-headers middleware sets the ``ip``).

        The application answers ``http`` scopes with 404, and ``lifespan``
        events (its shutdown closes the server), so that ``uvicorn
        module:app`` may run it alone.

        The server is ``OPEN`` from this call on (no :attr:`port`: the ASGI
        server listens) until :meth:`close`, after which new connections
        get HTTP 503.

        Raises:
            StateError: the server is not in the ``NONE`` state (opened
                already, or ``asgi()`` called before).
            ValueError: ``transport="picows"`` (the ASGI server is the
                transport), or a ``backplane`` (served with :meth:`open` only).
        """
        if self._state is not ServerState.NONE:
            raise StateError(f"cannot serve through ASGI: the server is {self._state.value}")
        if self._options.transport != "websockets":
            raise ValueError("asgi() serves through the ASGI server: leave transport= alone")
        if self._cluster is not None:
            # Joining the application (claiming a node slot) needs Redis,
            # and this method cannot wait: open() does it.
            raise ValueError("a server with a backplane is served with open(), not asgi() (yet)")
        self._side = _typed_side(self, self._side)
        self._handler = handler
        self._asgi = True
        self._state = ServerState.OPEN
        return make_app(
            self._entry,
            options=self._options,
            origins=self._origins,
            accepting=self._accepting,
            on_shutdown=self.close,
        )

    def _accepting(self) -> bool:
        return self._state is ServerState.OPEN and not self._draining

    async def _handle(self, channel: Channel) -> None:
        assert self._handler is not None
        if self._state is not ServerState.OPEN:
            # Upgraded just as close() began: it will not see this one.
            await channel.close(CloseCode.GOING_AWAY, "server closing")
            return
        registry = self._registry
        if (
            len(registry.connections) >= self._max_connections
            or len(self._pending_headers) >= self._max_pending_headers
        ):
            # Refused before anything is made for it: a flood of sockets
            # costs at most the caps' worth of connections.
            await channel.close(CloseCode.TRY_AGAIN_LATER, "server busy, try again later")
            return
        acceptor_id = registry.new_id()
        pending = self._pending_headers
        pending.add(acceptor_id)
        # The plain class, not WebSocketAcceptor[...]: a subscripted call
        # would store __orig_class__ on every connection.
        acceptor: WebSocketAcceptor[HeaderT, ProviderT, RemoteT] = WebSocketAcceptor(
            TOKEN, self._side, channel, acceptor_id, functools.partial(pending.discard, acceptor_id)
        )
        registry.add(acceptor)
        try:
            await acceptor._run(self._handler)
        finally:
            pending.discard(acceptor_id)
            registry.remove(acceptor)

    async def shutdown(self, grace: float = 10.0) -> None:
        """
        Stop gracefully: stop accepting, let running calls finish, then close.

        New connections are refused at once (the listening socket closes);
        open connections stay open while any provider method called by a
        client is still running here, for at most ``grace`` seconds, and
        their clients may go on calling meanwhile. Then :meth:`close`:
        every client is closed with 1001 (going away), and calls still
        running are cancelled. What ``wsrpc serve`` does on SIGTERM.

        Idempotent, as :meth:`close`; a server that is not open is just closed.

        Raises:
            ValueError: ``grace`` is negative.
        """
        if not grace >= 0:
            raise ValueError(f"grace must be 0 or more, not {grace!r}")
        if self._state is ServerState.OPEN and not self._draining:
            self._draining = True
            if self._server is not None:
                self._server.stop_accepting()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            running = self._running_calls()
            logger.info(
                "stopped accepting connections; waiting up to %s s for %d running calls",
                grace,
                len(running),
            )
            while True:
                left = deadline - loop.time()
                if not running or left <= 0 or self._state is not ServerState.OPEN:
                    break
                await asyncio.wait(running, timeout=left)
                running = self._running_calls()
            if running:
                logger.info("grace period over: cancelling %d running calls", len(running))
        await self.close()

    def _running_calls(self) -> list[asyncio.Task[None]]:
        """The tasks of the calls clients have running here."""
        return [
            task
            for acceptor in list(self._registry.connections.values())
            for task in acceptor._running_calls()
        ]

    async def close(self) -> None:
        """
        Stop listening and close every client with 1001 (going away).

        Pending calls on every connection fail at once; new connections are
        refused. Returns once every connection is closed. Idempotent.
        """
        if self._state in (ServerState.NONE, ServerState.CLOSED):
            self._state = ServerState.CLOSED
            self._closed.set()
            return
        if self._state is ServerState.CLOSING:
            await self._closed.wait()
            return
        self._state = ServerState.CLOSING
        server = self._server
        assert server is not None or self._asgi
        try:
            if not self._draining and server is not None:
                server.stop_accepting()
            acceptors = list(self._registry.connections.values())
            if acceptors:
                await asyncio.gather(
                    *(a.close(CloseCode.GOING_AWAY, "server closing") for a in acceptors),
                    return_exceptions=True,
                )
            if server is not None:
                await server.wait_closed()
            await self._registry.wait_idle()  # notifications still running
            if self._cluster is not None:
                await self._cluster.stop()
        finally:
            # The transport may keep its listener, and what it calls, in
            # cycles of its own: cut the way back to this server, so that a
            # closed server is freed by reference counting.
            self._server = None
            self._entry.target = None
            self._state = ServerState.CLOSED
            self._closed.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _Entry:
    """The door the transport calls for each new connection; closed with the server."""

    __slots__ = ("target",)

    def __init__(self, target: Callable[[Channel], Awaitable[None]]) -> None:
        self.target: Callable[[Channel], Awaitable[None]] | None = target

    async def __call__(self, channel: Channel) -> None:
        target = self.target
        if target is None:  # the server is closed
            await channel.close(CloseCode.GOING_AWAY, "server closing")
            return
        await target(channel)


def _typed_side(server: WebSocketServer[Any, Any, Any], side: ServerSide) -> ServerSide:
    """
    ``side`` checking headers against the server's ``Header`` and converting
    calls to clients from its ``Remote``, with ``validate=True``.

    The type parameters are known at run time only for a server made in the
    subscripted form, ``WebSocketServer[Header, Provider, Remote](...)``
    (Python then sets ``__orig_class__`` on it, after ``__init__``, hence
    read here), or of a subclass of a subscripted one. Without them,
    headers are not checked, nor calls converted, and a warning says so.
    """
    if not side.options.validate:
        return side
    header_type, remote = type_argument(server, 0), type_argument(server, 2)
    if getattr(server, "__orig_class__", None) is None and header_type is Any and remote is Any:
        warnings.warn(
            "validate=True checks calls but not headers: make the server as "
            "WebSocketServer[Header, Provider, Remote](...) to check them too "
            "(WebSocketServer[Any, ...] to check none without this warning)",
            stacklevel=3,
        )
    check_header = None if header_type is Any else value_checker(header_type, "invalid header")
    remote_types = None
    if remote is not Any:
        remote_types = {
            True: RemoteTypes(remote, NATIVE_MSGPACK),
            False: RemoteTypes(remote, NATIVE_JSON),
        }
    return replace(side, check_header=check_header, remote_types=remote_types)


def _codec_for_first_frame(
    allowed: frozenset[CodecName], codecs: dict[str, Codec], frame: bytes | str
) -> Codec | None:
    """The codec for a client whose first frame is ``frame``; None if not served."""
    # TGrid clients open with a JSON text frame, wsrpc clients with a binary
    # msgpack frame: one server serves both on the same port. Connections
    # share the server's codecs (``codecs``, a cache: all run on its loop).
    name: CodecName = "tgrid" if isinstance(frame, str) else "msgpack"
    if name not in allowed:
        return None
    codec = codecs.get(name)
    if codec is None:
        codec = codecs[name] = make_codec(name)
    return codec


async def _call_by_id(
    registry: Registry[WebSocketAcceptor[Any, Any, Any]],
    cluster: ClusterRegistry | None,
    connection_id: int,
    call_timeout: float | None,
    path: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float | None,
) -> Any:
    """The call function of :meth:`WebSocketServer.get_driver`'s drivers."""
    acceptor = registry.connections.get(connection_id)
    if acceptor is not None:
        return await acceptor._call_path(path, args, kwargs, timeout)
    if cluster is None or cluster.holds_slot_of(connection_id):
        raise ConnectionClosedError(
            CloseCode.ABNORMAL, f"connection {connection_id} is not open on any node"
        )
    return await cluster.call(
        connection_id, path, args, kwargs, call_timeout if timeout is None else timeout
    )


async def _run_hooks(hooks: Sequence[Callable[..., Any]], *args: Any) -> None:
    """Run the server's ``on_connect`` or ``on_disconnect`` hooks, in order."""
    for hook in hooks:
        await run_hook(hook, *args)
