"""The server side: :class:`WebSocketServer` and the :class:`WebSocketAcceptor` it creates."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Self, TypeVar, cast, final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from ._communicator import Communicator, close_info
from ._options import (
    DEFAULT_MAX_CONCURRENT_CALLS,
    DEFAULT_MAX_MESSAGE_SIZE,
    Options,
    check_timeout,
)
from ._util import check_close
from .codecs import Codec, CodecName, make_codec
from .dispatch import check_provider
from .driver import Driver
from .exceptions import ConnectionClosedError, ProtocolError, StateError
from .messages import CloseCode
from .protocol import RpcProtocol, Side
from .states import AcceptorState, ServerState

__all__ = ["Handler", "WebSocketAcceptor", "WebSocketServer"]

logger = logging.getLogger("wsrpc")

HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")

_TOKEN = object()


@final
class WebSocketAcceptor(Generic[HeaderT, ProviderT, RemoteT]):
    """
    One client of a :class:`WebSocketServer`, from its header to its close.

    The server creates acceptors (there is no public constructor) and passes
    each to the handler given to :meth:`WebSocketServer.open` once the
    client's header has arrived. The handler reads :attr:`header` and must
    either :meth:`accept` or :meth:`reject`; if it returns or raises without
    deciding, the client is rejected (1008, or 1011 when it raised).

    Frames the client sends after its header are not read until the handler
    has decided, so nothing is lost while it thinks.
    """

    def __init__(
        self,
        token: object,
        server: WebSocketServer[HeaderT, ProviderT, RemoteT],
        ws: ServerConnection,
        acceptor_id: int,
    ) -> None:
        if token is not _TOKEN:
            raise TypeError("WebSocketAcceptor has no public constructor; the server creates it")
        self._server = server
        self._ws = ws
        self._options = server._options
        self._id = acceptor_id
        self._protocol: RpcProtocol | None = None  # once the first frame shows the codec
        self._state = AcceptorState.NONE
        self._header: Any = None
        self._communicator: Communicator | None = None
        self._driver: Driver | None = None
        self._closed = asyncio.Event()

    # -- what the handler reads ----------------------------------------------

    @property
    def id(self) -> int:
        """Identifier of this connection, unique within its server."""
        return self._id

    @property
    def header(self) -> HeaderT:
        """
        The client's header, as decoded from the wire.

        Its type is *not* checked at run time: it is whatever the client sent
        (any msgpack value). Validate it before trusting it.
        """
        return cast(HeaderT, self._header)

    @property
    def path(self) -> str:
        """The request target of the WebSocket upgrade: path and query string."""
        return self._ws.request.path if self._ws.request is not None else ""

    @property
    def ip(self) -> str:
        """The client's IP address as seen by the server."""
        address = self._ws.remote_address
        return str(address[0]) if address else ""

    @property
    def state(self) -> AcceptorState:
        """Where this connection stands; see :class:`AcceptorState`."""
        state = self._state
        if state is AcceptorState.OPEN and self._communicator is not None:
            if self._communicator.closed is not None:
                # Closing underway (the peer closed, or a protocol error):
                # calls already fail; the socket is still being torn down.
                return AcceptorState.CLOSING
        return state

    # -- the decision --------------------------------------------------------

    async def accept(self, provider: ProviderT) -> None:
        """
        Accept the client and serve ``provider`` to it.

        After this, the client may call the provider's public methods and
        :meth:`get_driver` calls the client's.

        Raises:
            StateError: not in the ``ACCEPTING`` state (already accepted or
                rejected, or the client left).
            TypeError: ``provider`` is a class or a module, not an instance.
            ConnectionClosedError: the client left while being accepted.
        """
        self._expect(AcceptorState.ACCEPTING, "accept")
        check_provider(provider)
        protocol = self._protocol
        assert protocol is not None
        frame = protocol.send_accept()
        self._state = AcceptorState.OPEN
        # Created before the accept frame goes out so that get_driver() works
        # at once; its receive loop starts at the next await.
        self._communicator = Communicator(
            self._ws,
            protocol,
            provider,
            on_closed=self._set_closed,
            **self._options.communicator_kwargs(),
        )
        try:
            await self._ws.send(frame)
            if protocol.codec.name == "tgrid":
                await self._tgrid_barrier()
        except ConnectionClosed as exc:
            raise ConnectionClosedError(*close_info(exc)) from None

    async def _tgrid_barrier(self) -> None:
        # TGrid's client installs its message handler only after an await
        # that follows the "1" frame, so a call arriving in the same TCP read
        # as "1" is lost. A ping sent after "1" is answered while that read
        # is parsed; once its pong is back, the client's microtasks have run
        # and its handler is in place. Calls sent after this are safe.
        pong = await self._ws.ping()
        try:
            async with asyncio.timeout(self._options.close_timeout):
                await pong
        except TimeoutError:
            pass  # a silent client is for keepalive to judge, not accept()

    async def reject(
        self, code: int = CloseCode.POLICY_VIOLATION, reason: str = "rejected"
    ) -> None:
        """
        Refuse the client: close the connection with ``code`` and ``reason``.

        The client's :meth:`WebSocketConnector.connect` raises
        :exc:`RejectedError` with the same code and reason. Use codes in
        4000–4999 for the application's own reasons.

        Raises:
            StateError: not in the ``ACCEPTING`` state.
            ValueError: the code may not be sent, or the reason is too long.
        """
        check_close(code, reason)
        self._expect(AcceptorState.ACCEPTING, "reject")
        self._state = AcceptorState.REJECTING
        await self._ws.close(code, reason)
        self._set_closed()

    def _expect(self, state: AcceptorState, action: str) -> None:
        if self._state is not state:
            raise StateError(f"cannot {action}: the acceptor is {self._state.value}")

    # -- once open -----------------------------------------------------------

    def get_driver(self, *, timeout: float | None = None) -> RemoteT:
        """
        The proxy for the client's provider, typed as ``Remote``.

        Args:
            timeout: Seconds after which each call through this driver fails
                with :exc:`RpcTimeoutError` (and is cancelled on the client);
                None uses the server's ``call_timeout``.

        Raises:
            StateError: the client has not been accepted.
        """
        communicator = self._communicator
        if communicator is None:
            raise StateError(f"no driver before accept(): the acceptor is {self._state.value}")
        if timeout is not None:
            check_timeout(timeout)
            return cast(RemoteT, Driver(communicator, "", timeout))
        if self._driver is None:
            self._driver = Driver(communicator, "", None)
        return cast(RemoteT, self._driver)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """
        Close the connection; every pending call on both sides fails at once.

        Idempotent: closing a closed acceptor waits for it to be closed.
        Closing one that is still ``ACCEPTING`` rejects it.

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
        """
        check_close(code, reason)
        state = self._state
        if state is AcceptorState.OPEN:
            assert self._communicator is not None
            self._state = AcceptorState.CLOSING
            await self._communicator.close(code, reason)
        elif state is AcceptorState.ACCEPTING:
            await self.reject(code, reason)
        elif state is AcceptorState.NONE:
            await self._ws.close(code, reason)
        await self.join()

    async def join(self) -> None:
        """Wait until the connection is closed and its calls have unwound."""
        await self._closed.wait()

    def _set_closed(self) -> None:
        self._state = AcceptorState.CLOSED
        self._closed.set()

    def __repr__(self) -> str:
        return f"<WebSocketAcceptor id={self._id} {self._state.value} {self.ip} {self.path!r}>"

    # -- driven by the server ------------------------------------------------

    async def _run(
        self,
        handler: Handler[HeaderT, ProviderT, RemoteT],
        header_timeout: float,
    ) -> None:
        if not await self._receive_header(header_timeout):
            self._set_closed()
            return
        self._state = AcceptorState.ACCEPTING
        loop = asyncio.get_running_loop()
        handler_task: asyncio.Future[None] = asyncio.ensure_future(handler(self))
        gone = loop.create_task(self._ws.wait_closed())
        try:
            await asyncio.wait({handler_task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not handler_task.done() and self._communicator is None:
                # The connection is gone before the handler accepted it (the
                # client left, or the server is closing): stop deciding.
                handler_task.cancel()
            if self._communicator is not None and not handler_task.done():
                # Accepted, and the handler goes on (a loop, or join()):
                # wait for it to end, or for the connection to end.
                closed: asyncio.Future[Any] = loop.create_task(self._closed.wait())
                await asyncio.wait({handler_task, closed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
            if not handler_task.done():
                # The connection is closed; the handler gets close_timeout to
                # finish its own cleanup, then it is cancelled so that it can
                # never hold up the server's close().
                await asyncio.wait({handler_task}, timeout=self._options.close_timeout)
                handler_task.cancel()
            await asyncio.wait({handler_task})
            await self._after_handler(handler_task)
        finally:
            gone.cancel()
        await self._closed.wait()

    async def _receive_header(self, timeout: float) -> bool:
        ws = self._ws
        try:
            async with asyncio.timeout(timeout):
                frame = await ws.recv()
        except TimeoutError:
            await ws.close(CloseCode.POLICY_VIOLATION, "no header received in time")
            return False
        except ConnectionClosed:
            return False
        self._protocol = protocol = RpcProtocol(
            Side.SERVER,
            self._server._codec_for_first_frame(frame),
            max_calls=self._options.max_concurrent_calls,
            max_size=self._options.max_message_size,
            send_tracebacks=self._options.send_tracebacks,
        )
        try:
            self._header = protocol.receive_header(frame).value
        except ProtocolError as exc:
            await ws.close(exc.code, f"bad header: {exc.reason}"[:120])
            return False
        return True

    async def _after_handler(self, task: asyncio.Future[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if self._state is AcceptorState.ACCEPTING:
            if error is not None:
                logger.error("connection handler raised before deciding", exc_info=error)
                await self.reject(CloseCode.INTERNAL_ERROR, "internal error")
            else:
                await self.reject(
                    CloseCode.POLICY_VIOLATION, "the server did not accept the connection"
                )
        elif error is not None and not isinstance(error, ConnectionClosedError):
            logger.error("connection handler raised", exc_info=error)
            if self._state is AcceptorState.OPEN:
                await self.close(CloseCode.INTERNAL_ERROR, "internal error")


Handler = Callable[[WebSocketAcceptor[HeaderT, ProviderT, RemoteT]], Awaitable[None]]
"""What :meth:`WebSocketServer.open` calls for each client, once its header is in."""


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
        close_timeout: Seconds to wait for the closing handshake (default 10).
        compression: Negotiate permessage-deflate (default False: small RPC
            messages rarely gain from it and it costs latency and memory).
        send_tracebacks: Include provider tracebacks in error replies
            (default False; they reveal source code, enable for debugging).
        call_timeout: Default seconds for calls made to clients (default
            None: no limit).
        origins: Allowed values of the ``Origin`` request header, for
            defending browser clients against cross-site WebSocket hijacking:
            a request with another origin gets HTTP 403 before any acceptor
            exists. Include None to allow requests without an ``Origin``
            (non-browser clients). Default None: any origin.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        header_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
        compression: bool = False,
        send_tracebacks: bool = False,
        call_timeout: float | None = None,
        origins: Sequence[str | None] | None = None,
    ) -> None:
        if header_timeout <= 0:
            raise ValueError("header_timeout must be positive")
        self._origins = None if origins is None else [cast(Origin | None, o) for o in origins]
        self._options = Options(
            max_message_size=max_message_size,
            max_concurrent_calls=max_concurrent_calls,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            compression=compression,
            send_tracebacks=send_tracebacks,
            call_timeout=call_timeout,
        )
        self._header_timeout = header_timeout
        self._state = ServerState.NONE
        self._server: Server | None = None
        self._handler: Handler[HeaderT, ProviderT, RemoteT] | None = None
        self._acceptors: dict[int, WebSocketAcceptor[HeaderT, ProviderT, RemoteT]] = {}
        self._ids = itertools.count(1)
        self._codecs: dict[str, Codec] = {}
        self._closed = asyncio.Event()

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
        if self._server is None or self._state is not ServerState.OPEN:
            raise StateError(f"no port: the server is {self._state.value}")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def acceptors(self) -> MappingProxyType[int, WebSocketAcceptor[HeaderT, ProviderT, RemoteT]]:
        """Live connections by :attr:`WebSocketAcceptor.id` (a read-only view)."""
        return MappingProxyType(self._acceptors)

    async def open(
        self,
        port: int,
        handler: Handler[HeaderT, ProviderT, RemoteT],
        *,
        host: str = "127.0.0.1",
    ) -> None:
        """
        Start listening on ``host``:``port`` and serve each client with ``handler``.

        Args:
            port: TCP port; 0 picks a free one (read it back from :attr:`port`).
            handler: Coroutine function called with each client's acceptor
                once its header has arrived; it must accept or reject it.
            host: Interface to bind. The default is loopback only; pass
                ``"0.0.0.0"`` or ``"::"`` to serve other machines.

        Raises:
            StateError: the server is not in the ``NONE`` state.
            OSError: the address cannot be bound (the state returns to ``NONE``).
        """
        if self._state is not ServerState.NONE:
            raise StateError(f"cannot open: the server is {self._state.value}")
        self._state = ServerState.OPENING
        self._handler = handler
        try:
            self._server = await serve(
                self._handle,
                host,
                port,
                origins=self._origins,
                **cast(Any, self._options.websockets_kwargs()),
            )
        except BaseException:
            self._state = ServerState.NONE
            raise
        self._state = ServerState.OPEN

    async def _handle(self, ws: ServerConnection) -> None:
        assert self._handler is not None
        if self._state is not ServerState.OPEN:
            # Upgraded just as close() began: it will not see this one.
            await ws.close(CloseCode.GOING_AWAY, "server closing")
            return
        acceptor_id = next(self._ids)
        acceptor = WebSocketAcceptor[HeaderT, ProviderT, RemoteT](_TOKEN, self, ws, acceptor_id)
        self._acceptors[acceptor_id] = acceptor
        try:
            await acceptor._run(self._handler, self._header_timeout)
        finally:
            del self._acceptors[acceptor_id]

    def _codec_for_first_frame(self, frame: bytes | str) -> Codec:
        # TGrid clients open with a JSON text frame, wsrpc clients with a
        # binary msgpack frame: one server serves both on the same port.
        # Connections share the server's codecs (all run on its loop).
        name: CodecName = "tgrid" if isinstance(frame, str) else "msgpack"
        codec = self._codecs.get(name)
        if codec is None:
            codec = self._codecs[name] = make_codec(name)
        return codec

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
        assert server is not None
        try:
            server.close(close_connections=False)
            acceptors = list(self._acceptors.values())
            if acceptors:
                await asyncio.gather(
                    *(a.close(CloseCode.GOING_AWAY, "server closing") for a in acceptors),
                    return_exceptions=True,
                )
            await server.wait_closed()
        finally:
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
