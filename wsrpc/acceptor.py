"""
The server's side of one connection: :class:`WebSocketAcceptor`.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast, final

from ._communicator import Communicator, close_info_of
from ._hooks import ClosedHook, CloseRequestHook, call_hook_soon, run_hook, run_within
from ._options import Options
from ._transports import Channel, ChannelClosed
from ._util import check_close
from .codecs import Codec
from .dispatch import check_provider
from .driver import Drivers
from .exceptions import (
    ConnectionClosedError,
    ProtocolError,
    RemoteError,
    RpcTimeoutError,
    StateError,
    ValidationError,
)
from .http import HeadersView
from .messages import CloseCode
from .protocol import RpcProtocol, Side
from .states import AcceptorState, CloseInfo

if TYPE_CHECKING:
    from .server import Handler
    from .validation import RemoteTypes

__all__ = ["PROBE_PATH", "ServerSide", "WebSocketAcceptor", "loop_of"]

logger = logging.getLogger("wsrpc")

HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")

TOKEN = object()
"""Proof that the server, not a user, creates an acceptor."""

PROBE_PATH = "_wsrpc_probe"
"""
The call that stands for a ping on a transport that cannot ping (ASGI).

A name starting with ``_`` is refused by every wsrpc peer (the member
rules) and by every TGrid peer (its own rule), at once and without running
anything: the refusal is the pong.
"""

_PROBE_FIRST_WAIT = 0.05
"""Seconds the first TGrid barrier probe waits for its answer (doubled per retry)."""


@dataclass(frozen=True, slots=True)
class ServerSide:
    """
    What an acceptor needs of its server, handed to it rather than reached for.

    One per server, shared by its acceptors.
    """

    options: Options
    header_timeout: float
    codec_for: Callable[[bytes | str], Codec | None]
    """The codec for a client whose first frame is this one; None if not served."""
    connected: Callable[[WebSocketAcceptor[Any, Any, Any]], Awaitable[None]]
    """Runs the server's ``on_connect`` hooks."""
    disconnected: Callable[[WebSocketAcceptor[Any, Any, Any], CloseInfo], Awaitable[None]]
    """Runs the server's ``on_disconnect`` hooks."""
    release: Callable[[WebSocketAcceptor[Any, Any, Any]], None]
    """Takes the connection out of the registry, and out of its groups."""
    groups_of: Callable[[int], frozenset[str]]
    """The names of the groups a connection belongs to."""
    check_header: Callable[[Any], Any] | None = None
    """Converts a client's header to the server's ``Header`` type, or raises
    ValidationError (``validate=True``); None: headers are taken as they come."""
    remote_types: Mapping[bool, RemoteTypes] | None = None
    """Converts calls to clients from the server's ``Remote`` (``validate=True``),
    by whether the codec is binary; None: values are sent as they are."""


@final
class WebSocketAcceptor(Generic[HeaderT, ProviderT, RemoteT]):
    """
    One client of a :class:`WebSocketServer`, from its header to its close.

    The server creates acceptors (there is no public constructor) and passes
    each to the handler given to :meth:`WebSocketServer.open` once the
    client's header has arrived. The handler reads :attr:`header` and must
    either :meth:`accept` or :meth:`reject`; if it returns or raises without
    deciding, the client is rejected (1008, or 1011 when it raised).

    A client must wait for the verdict before it sends anything else: a
    message after the header and before :meth:`accept` closes the connection
    with 1002 (protocol error), and the handler's decision is moot.
    """

    def __init__(
        self,
        token: object,
        side: ServerSide,
        channel: Channel,
        acceptor_id: int,
        on_header: Callable[[], None],
    ) -> None:
        if token is not TOKEN:
            raise TypeError("WebSocketAcceptor has no public constructor; the server creates it")
        self._side = side
        self._loop = asyncio.get_running_loop()
        self._channel = channel
        self._options = side.options
        self._id = acceptor_id
        self._on_header: Callable[[], None] | None = on_header
        self._protocol: RpcProtocol | None = None  # once the first frame shows the codec
        self._state = AcceptorState.NONE
        self._header: Any = None
        self._communicator: Communicator | None = None
        self._drivers = Drivers(
            "the client is not accepted yet; calls through this driver work once "
            "accept() has been called"
        )
        # A future, not an Event: one per connection, and an Event's deque is
        # several times its size.
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._close_info: CloseInfo | None = None
        self._close_request_hooks: list[CloseRequestHook] = []
        self._closed_hooks: list[ClosedHook[Self]] = []
        self._in_close_hooks = False
        self._connecting: asyncio.Future[None] | None = None
        # The first message (the header): whether it came, the frame until it
        # is decoded, and who waits for it.
        self._header_arrived = False
        self._header_frame: bytes | str | None = None
        self._header_waiter: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] | None = None  # lost while deciding
        self._violation: asyncio.Task[None] | None = None
        channel.start(self._on_handshake_message, self._on_handshake_lost, self._on_close_frame)

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
        (any msgpack value, or any JSON value from a TGrid client). Validate
        it before trusting it.
        """
        return cast(HeaderT, self._header)

    @property
    def path(self) -> str:
        """The request target of the WebSocket upgrade: path and query string."""
        return self._channel.request_path

    @property
    def ip(self) -> str:
        """The client's IP address as seen by the server."""
        return self._channel.remote_ip

    @property
    def request_headers(self) -> Mapping[str, str]:
        """
        The HTTP headers of the upgrade request (read-only, case-insensitive).

        A header sent several times reads as its values joined with ``", "``;
        ``request_headers.get_all(name)`` is not offered: use
        :attr:`request_header_list` for the raw pairs.
        """
        return HeadersView(self._channel.request_headers)

    @property
    def request_header_list(self) -> list[tuple[str, str]]:
        """The upgrade request's headers as (name, value) pairs, in order."""
        return list(self._channel.request_headers)

    @property
    def codec(self) -> str:
        """
        The protocol this client speaks: ``"msgpack"`` (a wsrpc client) or
        ``"tgrid"`` (a TGrid client, JSON); empty before its header arrived.
        """
        return self._protocol.codec.name if self._protocol is not None else ""

    @property
    def is_closed(self) -> bool:
        """
        Whether the connection is closing or closed: calls through it fail.

        Cheap to call, from the event loop's thread; true from the moment the
        close begins, either side, so that nothing is sent to a dead client.
        """
        return self.state in (
            AcceptorState.CLOSING,
            AcceptorState.REJECTING,
            AcceptorState.CLOSED,
        )

    @property
    def close_info(self) -> CloseInfo | None:
        """How the connection ended, once it is ``CLOSED``; None before."""
        return self._close_info

    @property
    def groups(self) -> frozenset[str]:
        """Names of the groups this connection belongs to (see :meth:`WebSocketServer.group`)."""
        return self._side.groups_of(self._id)

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
        channel = self._channel
        if channel.is_closing:  # the client left, or broke the protocol
            raise ConnectionClosedError(*channel.close_frames.cause)
        frame = protocol.send_accept()
        self._state = AcceptorState.OPEN
        # Takes the client's messages from here on; made before the accept
        # frame goes out so that the provider may call the client at once.
        self._communicator = communicator = Communicator(
            channel,
            protocol,
            provider,
            on_closed=self._on_communicator_closed,
            on_close_frame=self._on_close_frame,
            label=f"connection {self._id} from {self.ip or 'unknown'}",
            **self._options.communicator_kwargs(),
        )
        types = self._side.remote_types
        self._drivers.open(
            communicator.call,
            communicator.stream,
            None if types is None else types[protocol.codec.binary],
            start=communicator.start,
        )
        if channel.needs_round_trip:
            channel.set_round_trip(functools.partial(_probe, communicator, None))
        try:
            channel.send(frame)
            if protocol.codec.name == "tgrid":
                await self._tgrid_barrier()
        except ChannelClosed as exc:
            raise ConnectionClosedError(exc.code, exc.reason) from None
        # Close hooks wait for these: on_disconnect never runs before (or
        # during) on_connect for the same connection, however fast it closes.
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            await self._side.connected(self)
        finally:
            self._connecting.set_result(None)

    async def _tgrid_barrier(self) -> None:
        # TGrid's client installs its message handler only after an await
        # that follows the "1" frame, so a call arriving in the same TCP read
        # as "1" is lost. A ping sent after "1" is answered while that read
        # is parsed; once its pong is back, the client's microtasks have run
        # and its handler is in place. Calls sent after this are safe.
        if self._channel.needs_round_trip:
            await self._probe_barrier()
            return
        pong = self._channel.ping()
        try:
            async with asyncio.timeout(self._options.close_timeout):
                await pong
        except TimeoutError:
            pass  # a silent client is for keepalive to judge, not accept()

    async def _probe_barrier(self) -> None:
        # No ping (ASGI): a probe call instead, whose refusal comes back
        # once the client's handler is in place. A probe in the same read as
        # "1" is lost, so an unanswered one is sent again, waiting twice as
        # long each time, for close_timeout in all.
        communicator = self._communicator
        assert communicator is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.close_timeout
        wait = _PROBE_FIRST_WAIT
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return  # a silent client is for keepalive to judge, not accept()
            try:
                await _probe(communicator, min(wait, left))
                return
            except RpcTimeoutError:
                wait *= 2

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
        channel = self._channel
        await channel.close(code, reason)
        # The frames tell what happened: our code, or the 1002 of a client
        # that did not wait, or nothing if the client vanished.
        frames = channel.close_frames
        await self._set_closed(close_info_of(frames, *frames.cause))

    def _expect(self, state: AcceptorState, action: str) -> None:
        if self._state is not state:
            raise StateError(f"cannot {action}: the acceptor is {self._state.value}")

    # -- calling the client ----------------------------------------------------

    def get_driver(self, *, timeout: float | None = None) -> RemoteT:
        """
        The proxy for the client's provider, typed as ``Remote``.

        Works in every state, so that the handler can give the provider its
        client before accepting it (TGrid's idiom)::

            async def handler(acceptor: Acceptor) -> None:
                await acceptor.accept(ChatService(acceptor.get_driver()))

        Calls through the driver before :meth:`accept` fail at once with
        :exc:`StateError` (nothing is sent, nothing closes); from
        :meth:`accept` on, the same driver calls the client; once the
        connection is closing or closed, its calls fail with
        :exc:`ConnectionClosedError`. Holding a driver never keeps a closed
        connection alive.

        Args:
            timeout: Seconds after which each call through this driver fails
                with :exc:`RpcTimeoutError` (and is cancelled on a wsrpc client;
                TGrid has no cancellation);
                None uses the server's ``call_timeout``.

        Raises:
            ValueError: ``timeout`` is not positive.
        """
        return cast(RemoteT, self._drivers.get(timeout))

    def _call_path(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Awaitable[Any]:
        """Call the client's ``path`` as the driver would (for calls from other nodes)."""
        return self._drivers.call(path, args, kwargs, timeout)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """
        Close the connection; every pending call on both sides fails at once.

        Idempotent: closing a closed acceptor waits for it to be closed.
        Closing one that is still ``ACCEPTING`` rejects it.

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
        """
        check_close(code, reason)
        if self._in_close_hooks:
            return  # closing already; waiting here would wait for ourselves
        state = self._state
        if state is AcceptorState.OPEN:
            assert self._communicator is not None
            self._state = AcceptorState.CLOSING
            await self._communicator.close(code, reason)
        elif state is AcceptorState.ACCEPTING:
            await self.reject(code, reason)
        elif state is AcceptorState.NONE:
            await self._channel.close(code, reason)
        await self.join()

    async def join(self) -> CloseInfo:
        """
        Wait until the connection is closed, its calls have unwound and its
        close hooks have run; return how it ended.
        """
        await asyncio.shield(self._closed)
        assert self._close_info is not None
        return self._close_info

    # -- lifecycle hooks -----------------------------------------------------

    def on_close_request(self, hook: CloseRequestHook) -> CloseRequestHook:
        """
        Register ``hook(code, reason)``, called when the client's close frame
        arrives: the client asked to close, the socket is still open.

        Not called when the connection drops without a close frame, nor when
        the server closes first. May be a plain or an async function (an async
        one runs in a task of its own). Usable as a decorator; returns ``hook``.
        """
        self._close_request_hooks.append(hook)
        return hook

    def on_closed(self, hook: ClosedHook[Self]) -> ClosedHook[Self]:
        """
        Register ``hook(acceptor, info)``, called once the connection is gone.

        ``info.clean`` tells a graceful close (the closing handshake completed)
        from a failure (dropped, keepalive timeout). Hooks run after every
        pending call has failed and before the connection is released: it is
        still in :attr:`WebSocketServer.acceptors` and in its groups, and
        :meth:`join` has not returned. Calls through it fail. A hook may be
        plain or async; its exceptions are logged. Usable as a decorator.
        """
        self._closed_hooks.append(hook)
        return hook

    def _on_handshake_message(self, data: bytes | str | memoryview) -> None:
        if not self._header_arrived:
            self._header_arrived = True
            # Kept until decoded: a view is only valid during this call.
            self._header_frame = bytes(data) if type(data) is memoryview else data
            on_header, self._on_header = self._on_header, None
            if on_header is not None:
                on_header()  # no longer counts against max_pending_headers
            if self._header_waiter is not None and not self._header_waiter.done():
                self._header_waiter.set_result(None)
        elif self._violation is None and not self._channel.is_closing:
            # A message after the header, before accept(): the client did not
            # wait for the verdict. Nothing of it reaches the handler.
            self._violation = self._loop.create_task(
                self._channel.close(CloseCode.PROTOCOL_ERROR, "message before accept")
            )

    def _on_handshake_lost(self) -> None:
        for waiter in (self._header_waiter, self._gone):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _on_close_frame(self, code: int, reason: str) -> None:
        for hook in self._close_request_hooks:
            call_hook_soon(hook, code, reason)

    async def _on_communicator_closed(self, info: CloseInfo) -> None:
        await self._set_closed(info)

    async def _set_closed(self, info: CloseInfo) -> None:
        if self._closed.done():
            return
        self._close_info = info
        self._drivers.close(info.code, info.reason)
        self._in_close_hooks = True
        try:
            # Bounded: server.close() must end however the hooks behave.
            await run_within(
                self._run_close_hooks(info),
                self._options.close_timeout,
                f"close hooks of connection {self._id}",
            )
        finally:
            self._in_close_hooks = False
            # Hooks often close over the acceptor: a cycle once they are done.
            self._closed_hooks.clear()
            self._close_request_hooks.clear()
        self._side.release(self)
        self._state = AcceptorState.CLOSED
        self._closed.set_result(None)

    async def _run_close_hooks(self, info: CloseInfo) -> None:
        if self._connecting is not None:
            # on_disconnect never runs before (or during) on_connect.
            await asyncio.shield(self._connecting)
        for hook in self._closed_hooks:
            await run_hook(hook, self, info)
        if self._connecting is not None:  # on_connect ran: on_disconnect pairs with it
            await self._side.disconnected(self, info)

    def __repr__(self) -> str:
        return f"<WebSocketAcceptor id={self._id} {self._state.value} {self.ip} {self.path!r}>"

    # -- driven by the server ------------------------------------------------

    def _running_calls(self) -> list[asyncio.Task[None]]:
        """The tasks of the client's calls running here (for ``server.shutdown()``)."""
        communicator = self._communicator
        if communicator is None or communicator.closed is not None:
            return []
        return communicator.running_calls()

    async def _run(self, handler: Handler[HeaderT, ProviderT, RemoteT]) -> None:
        """The connection's whole life: header, handler, close (driven by the server)."""
        if not await self._receive_header(self._side.header_timeout):
            await self._channel.wait_closed()
            frames = self._channel.close_frames
            await self._set_closed(close_info_of(frames, *frames.cause))
            return
        self._state = AcceptorState.ACCEPTING
        loop = asyncio.get_running_loop()
        handler_task: asyncio.Future[None] = asyncio.ensure_future(handler(self))
        # Resolved by the channel if the connection goes while the handler
        # decides; once accepted, the communicator reports the close.
        self._gone = gone = loop.create_future()
        if self._channel.is_closing:
            gone.set_result(None)
        try:
            await asyncio.wait(
                {handler_task, gone, self._closed}, return_when=asyncio.FIRST_COMPLETED
            )
            if not handler_task.done() and self._communicator is None:
                # The connection is gone before the handler accepted it (the
                # client left, or the server is closing): stop deciding.
                handler_task.cancel()
            if self._communicator is not None and not handler_task.done():
                # Accepted, and the handler goes on (a loop, or join()):
                # wait for it to end, or for the connection to end.
                await asyncio.wait(
                    {handler_task, self._closed}, return_when=asyncio.FIRST_COMPLETED
                )
            if not handler_task.done():
                # The connection is closed; the handler gets close_timeout to
                # finish its own cleanup, then it is cancelled so that it can
                # never hold up the server's close().
                await asyncio.wait({handler_task}, timeout=self._options.close_timeout)
                handler_task.cancel()
            await asyncio.wait({handler_task})
            await self._after_handler(handler_task)
        finally:
            self._gone = None
        await asyncio.shield(self._closed)

    async def _receive_header(self, timeout: float) -> bool:
        channel = self._channel
        if not self._header_arrived and not channel.is_closing:
            self._header_waiter = self._loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._header_waiter
            except TimeoutError:
                await channel.close(CloseCode.POLICY_VIOLATION, "no header received in time")
                return False
        frame = self._header_frame
        if frame is None:
            return False  # the client left first
        codec = self._side.codec_for(frame)
        if codec is None:
            kind = "text" if isinstance(frame, str) else "binary"
            await channel.close(CloseCode.UNSUPPORTED_DATA, f"{kind} frames are not served here")
            return False
        self._protocol = protocol = RpcProtocol(
            Side.SERVER,
            codec,
            max_calls=self._options.max_concurrent_calls,
            max_size=self._options.max_message_size,
            send_tracebacks=self._options.send_tracebacks,
        )
        self._header_frame = None  # let it go: only the decoded value is kept
        try:
            self._header = protocol.receive_header(frame).value
        except ProtocolError as exc:
            await channel.close(exc.code, f"bad header: {exc.reason}"[:120])
            return False
        check = self._side.check_header
        if check is not None:
            try:
                self._header = check(self._header)
            except ValidationError as exc:
                # Like a missing header: 1008, with msgspec's account of the
                # mismatch (cut to fit a close frame's 123 bytes).
                reason = str(exc).encode()[:120].decode(errors="ignore")
                await channel.close(CloseCode.POLICY_VIOLATION, reason)
                return False
        # Closing already: the client sent more than its header at once.
        return not channel.is_closing

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


async def _probe(communicator: Communicator, timeout: float | None) -> None:
    """
    Call :data:`PROBE_PATH` on the peer; return once it answered.

    Raises:
        ConnectionClosedError: the connection closed first.
        RpcTimeoutError: no answer within ``timeout`` (or the ``call_timeout``).
    """
    try:
        await communicator.call(PROBE_PATH, (), {}, timeout)
    except RemoteError:
        pass  # the refusal: the answer expected


def loop_of(acceptor: WebSocketAcceptor[Any, Any, Any]) -> asyncio.AbstractEventLoop:
    """The event loop ``acceptor`` runs on (for :mod:`wsrpc.sync`, from any thread)."""
    return acceptor._loop
