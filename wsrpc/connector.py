"""
The client side: :class:`WebSocketConnector`.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from . import _transports
from ._communicator import Communicator, close_info_of
from ._hooks import (
    BackHook,
    ClosedHook,
    CloseRequestHook,
    LostHook,
    call_hook_soon,
    run_hook,
    run_within,
)
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
)
from ._transports import Channel, ChannelClosed, TransportName
from ._util import check_close
from .codecs import Codec, CodecName, make_codec
from .dispatch import check_provider
from .driver import DeferredStream, Drivers
from .exceptions import (
    ConnectError,
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RejectedError,
    RpcTimeoutError,
    StateError,
)
from .http import HeadersView
from .messages import CloseCode
from .protocol import RpcProtocol, Side
from .reconnect import ReconnectPolicy
from .states import CloseInfo, ConnectorState
from .validation import NATIVE_JSON, NATIVE_MSGPACK, RemoteTypes, type_argument

__all__ = ["WebSocketConnector"]

logger = logging.getLogger("wsrpc")

HeaderT = TypeVar("HeaderT")
ProviderT = TypeVar("ProviderT")
RemoteT = TypeVar("RemoteT")


class WebSocketConnector(Generic[HeaderT, ProviderT, RemoteT]):
    """
    A client of a wsrpc server.

    Type parameters: the ``Header`` this client sends, the ``Provider`` it
    serves to the server (for callbacks), and the ``Remote`` interface of the
    server's provider (what :meth:`get_driver` returns).

    Usage::

        async with WebSocketConnector[Header, Client, Calculator](
            {"token": token}, Client()
        ) as connector:
            await connector.connect(f"ws://127.0.0.1:{port}/")
            calc = connector.get_driver()
            print(await calc.add(1, 2))

    Without ``reconnect``, a connector connects once; to connect again,
    make a new one. With ``reconnect=True`` (or a :class:`ReconnectPolicy`)
    it reconnects by itself after a lost connection, and its drivers stay
    valid; see ``docs/reconnect.md``.

    Args:
        header: Activation data sent first; the server's handler reads it as
            :attr:`WebSocketAcceptor.header`. Any msgpack-encodable value, or
            a callable without arguments (plain or async) returning it,
            called for every handshake (a token that expires).
        provider: The object whose public methods the server may call, or
            None to serve nothing.
        max_message_size, max_concurrent_calls, ping_interval, ping_timeout,
        close_timeout, stall_timeout, compression, send_tracebacks,
        call_timeout, call_error_log_level, decode_budget, validate: as for
            :class:`WebSocketServer`, applied to this client's side.
        codec: ``"msgpack"`` (the default) to talk to wsrpc servers,
            ``"tgrid"`` to talk to TGrid servers (JSON in text frames), or a
            codec object.
        additional_headers: Extra HTTP headers for the upgrade request (a
            cookie, an ``Authorization`` header); the server reads them as
            :attr:`WebSocketAcceptor.request_headers`.
        transport: The WebSocket library underneath: ``"websockets"`` (the
            default) or ``"picows"`` (``pip install wsrpc[fast]``; no
            compression). Either talks to servers on either.
        reconnect: False (the default): a lost connection closes the
            connector for good. True, or a :class:`ReconnectPolicy`:
            reconnect after a loss, with backoff (the first
            :meth:`connect` does not retry).
    """

    def __init__(
        self,
        header: HeaderT | Callable[[], HeaderT | Awaitable[HeaderT]],
        provider: ProviderT | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = DEFAULT_PING_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        stall_timeout: float | None = DEFAULT_STALL_TIMEOUT,
        compression: bool = False,
        send_tracebacks: bool = False,
        call_timeout: float | None = None,
        call_error_log_level: int = DEFAULT_CALL_ERROR_LOG_LEVEL,
        decode_budget: float | None = DEFAULT_DECODE_BUDGET,
        codec: CodecName | Codec = "msgpack",
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        transport: TransportName = "websockets",
        reconnect: bool | ReconnectPolicy = False,
        validate: bool = False,
    ) -> None:
        if provider is not None:
            check_provider(provider)
        if isinstance(reconnect, ReconnectPolicy):
            self._policy: ReconnectPolicy | None = reconnect
        elif reconnect is True:
            self._policy = ReconnectPolicy()
        elif reconnect is False:
            self._policy = None
        else:
            raise TypeError(f"reconnect must be a bool or a ReconnectPolicy, not {reconnect!r}")
        self._codec = make_codec(codec)
        if additional_headers is None:
            self._additional_headers: list[tuple[str, str]] = []
        elif isinstance(additional_headers, Mapping):
            self._additional_headers = list(additional_headers.items())
        else:
            self._additional_headers = list(additional_headers)
        self._header_source = header
        self._header_known = not callable(header)
        self._header = cast(HeaderT, None if callable(header) else header)
        self._provider = provider
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
        self._state = ConnectorState.NONE
        self._communicator: Communicator | None = None
        self._channel: Channel | None = None
        self._connect_timeout: float | None = None
        self._connecting_first = False
        # Reconnection: the task that reconnects (None while open), why the
        # connector is ending for good (calls waiting for the connection
        # then fail), an event replaced at every change that waiting calls
        # wait on, and the hooks.
        self._reconnect_task: asyncio.Task[None] | None = None
        self._ending: ConnectionClosedError | None = None
        self._changed = asyncio.Event()
        self._lost_hooks: list[LostHook[Self]] = []
        self._back_hooks: list[BackHook[Self]] = []
        self._failure: CloseInfo | None = None
        self._peer_closing = False
        self._drivers = Drivers(
            "the connector is not connected; calls through this driver work once "
            "connect() has returned"
        )
        # The Remote type, when a wrapper knows it better than type_argument
        # (wsrpc.sync's connector), and its conversions (validate=True).
        self._remote: Any = None
        self._remote_types: RemoteTypes | None = None
        self._url = ""
        self._ssl: _ssl.SSLContext | None = None
        self._response_headers: list[tuple[str, str]] = []
        self._closed = asyncio.Event()
        self._close_info: CloseInfo | None = None
        self._close_request_hooks: list[CloseRequestHook] = []
        self._closed_hooks: list[ClosedHook[Self]] = []

    @property
    def header(self) -> HeaderT:
        """
        The header this connector sends; with a callable header, the one it
        returned for the latest handshake.

        Raises:
            StateError: the header is a callable that has not been called yet.
        """
        if not self._header_known:
            raise StateError("the header is computed by its callable at connect()")
        return self._header

    @property
    def reconnect(self) -> ReconnectPolicy | None:
        """The reconnection policy; None if this connector does not reconnect."""
        return self._policy

    @property
    def url(self) -> str:
        """The URL given to :meth:`connect`; empty before it (TGrid's ``url``)."""
        return self._url

    @property
    def response_headers(self) -> Mapping[str, str]:
        """
        The HTTP headers of the server's upgrade response (read-only,
        case-insensitive), e.g. a ``Set-Cookie``; empty before connect().
        """
        return HeadersView(self._response_headers)

    @property
    def state(self) -> ConnectorState:
        """Where the connector stands; see :class:`ConnectorState`."""
        state = self._state
        communicator = self._communicator
        if state is ConnectorState.OPEN and communicator is not None:
            closed = communicator.closed
            if closed is not None:
                # Closing underway (the peer closed, or a protocol error):
                # calls already fail; the socket is still being torn down.
                # A connector that will reconnect is already coming back.
                if self._policy is not None and self._will_reconnect(closed):
                    return ConnectorState.CONNECTING
                return ConnectorState.CLOSING
        return state

    def _will_reconnect(self, closed: ConnectionClosedError) -> bool:
        """The policy's verdict on a connection that is being lost (a snapshot)."""
        assert self._policy is not None and self._channel is not None
        frames = self._channel.close_frames
        return self._policy.reconnects_after(close_info_of(frames, closed.code, closed.reason))

    async def connect(
        self, url: str, *, timeout: float | None = 10.0, ssl: _ssl.SSLContext | None = None
    ) -> None:
        """
        Open the WebSocket to ``url``, send the header and wait for the verdict.

        Args:
            url: ``ws://`` or ``wss://`` URL of a wsrpc server.
            timeout: Seconds for the whole of it (TCP, TLS, upgrade,
                verdict); None waits for ever.
            ssl: The client-side TLS context of a ``wss://`` URL: the CAs it
                trusts, a client certificate. None uses the system's
                default (:func:`ssl.create_default_context`).

        Raises:
            StateError: the connector was already used.
            ValueError: ``ssl`` with a ``ws://`` URL.
            ConnectError: the WebSocket could not be opened (TLS included:
                a certificate that fails verification, on either side).
            RejectedError: the server rejected the header (or closed before
                deciding); carries its close code and reason.
            EncodeError: the header cannot be encoded.
            RpcTimeoutError: no verdict within ``timeout``.
        """
        if self._state is not ConnectorState.NONE:
            raise StateError(f"cannot connect: the connector is {self._state.value}")
        _transports.tls_context_for(url, ssl)  # ValueError before anything changes
        self._state = ConnectorState.CONNECTING
        self._url = url
        self._ssl = ssl  # every reconnection uses it too
        self._connect_timeout = timeout
        self._connecting_first = True
        self._failure = None
        try:
            await self._attempt()
        except BaseException as exc:
            self._set_closed(self._failure or _failed_connect_info(exc, None))
            raise
        finally:
            self._connecting_first = False

    async def _attempt(self) -> None:
        """
        Connect once (the first connect() or a reconnection attempt); OPEN on success.

        On failure, :attr:`_failure` says how it ended and the exception
        propagates, as connect() documents it.
        """
        url, timeout = self._url, self._connect_timeout
        protocol = RpcProtocol(
            Side.CLIENT,
            self._codec,
            max_calls=self._options.max_concurrent_calls,
            max_size=self._options.max_message_size,
            send_tracebacks=self._options.send_tracebacks,
        )
        channel: Channel | None = None
        try:
            async with asyncio.timeout(timeout):
                header = await self._next_header()
                channel, response_headers = await self._open(url, self._ssl)
                early = await self._handshake(channel, protocol, header)
        except BaseException as exc:
            self._failure = _failed_connect_info(exc, channel)
            if channel is not None:
                if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
                    channel.abort()  # no time left for a closing handshake
                else:
                    await channel.close(CloseCode.NORMAL, "")
            if isinstance(exc, TimeoutError):
                raise RpcTimeoutError(f"connect to {url} timed out after {timeout} s") from None
            raise
        self._response_headers = response_headers
        self._channel = channel
        self._peer_closing = False
        self._communicator = communicator = Communicator(
            channel,
            protocol,
            self._provider,
            on_closed=self._on_communicator_closed,
            on_close_frame=self._on_close_frame,
            early=early,
            label=f"connection to {url}",
            **self._options.communicator_kwargs(),
        )
        # A reconnecting connector's drivers go through _call_or_wait, for good.
        if self._policy is None:
            self._drivers.open(
                communicator.call,
                communicator.stream,
                self._conversion(),
                start=communicator.start,
            )
        else:
            self._drivers.open(self._call_or_wait, self._stream_or_wait, self._conversion())
        self._state = ConnectorState.OPEN
        self._wake()

    def _conversion(self) -> RemoteTypes | None:
        """
        With ``validate=True`` and a known ``Remote`` type, what converts the
        drivers' calls from its annotations (see ``docs/validation.md``).
        """
        if not self._options.validate:
            return None
        if self._remote_types is None:
            remote = self._remote if self._remote is not None else type_argument(self, 2)
            if remote is Any:
                return None
            native = NATIVE_MSGPACK if self._codec.binary else NATIVE_JSON
            self._remote_types = RemoteTypes(remote, native)
        return self._remote_types

    async def _next_header(self) -> HeaderT:
        """The header for this handshake: the value, or what its callable returns."""
        source = self._header_source
        if callable(source):
            result = source()
            if inspect.isawaitable(result):
                result = await result
            self._header = cast(HeaderT, result)
            self._header_known = True
        return self._header

    async def _open(
        self, url: str, ssl: _ssl.SSLContext | None
    ) -> tuple[Channel, list[tuple[str, str]]]:
        try:
            return await _transports.connect(
                url, additional_headers=self._additional_headers, options=self._options, ssl=ssl
            )
        except (OSError, ValueError) as exc:
            tls = _tls_error(exc)
            if tls is not None:
                raise ConnectError(f"cannot open {url}: TLS failed: {tls}") from exc
            raise ConnectError(f"cannot open {url}: {exc}") from exc

    async def _handshake(
        self, channel: Channel, protocol: RpcProtocol, header: HeaderT
    ) -> list[bytes | str]:
        """Send the header and wait for the verdict; return the messages that followed it."""
        verdict: asyncio.Future[bytes | str | None] = asyncio.get_running_loop().create_future()
        early: list[bytes | str] = []  # the server may call us right after accepting

        def on_message(data: bytes | str | memoryview) -> None:
            if type(data) is memoryview:
                data = bytes(data)  # kept: a view is only valid during this call
            if verdict.done():
                early.append(data)
            else:
                verdict.set_result(data)

        def on_lost() -> None:
            if not verdict.done():
                verdict.set_result(None)

        channel.start(on_message, on_lost, self._on_close_frame)
        try:
            channel.send(protocol.send_header(header))
        except ChannelClosed as exc:
            raise RejectedError(exc.code, exc.reason) from None
        frame = await verdict
        if frame is None:  # closed before accepting: rejected
            raise RejectedError(*channel.close_frames.cause)
        try:
            protocol.receive_accept(frame)
        except ProtocolError as exc:
            await channel.close(exc.code, exc.reason)
            raise ConnectError(f"the server broke the wsrpc protocol: {exc}") from None
        return early

    def get_driver(self, *, timeout: float | None = None) -> RemoteT:
        """
        The proxy for the server's provider, typed as ``Remote``.

        Works in every state: a driver fetched before :meth:`connect` (to
        hand to this connector's own provider, say) fails its calls at once
        with :exc:`StateError` until ``connect()`` has returned, then calls
        the server; once the connection is closing or closed, its calls fail
        with :exc:`ConnectionClosedError`. A reconnecting connector's driver
        stays valid across reconnections: calls made while it reconnects
        wait for the connection (within their timeout).

        Args:
            timeout: Seconds after which each call through this driver fails
                with :exc:`RpcTimeoutError` (and is cancelled on a wsrpc server;
                TGrid has no cancellation);
                None uses the connector's ``call_timeout``.

        Raises:
            ValueError: ``timeout`` is not positive.
        """
        return cast(RemoteT, self._drivers.get(timeout))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """
        Close the connection; every pending call on both sides fails at once.

        Idempotent. Closing a connector that never connected just marks it
        ``CLOSED``.

        Raises:
            ValueError: the code may not be sent, or the reason is too long.
            StateError: :meth:`connect` is in progress (cancel it instead).
        """
        check_close(code, reason)
        state = self._state
        if state is ConnectorState.CONNECTING:
            if self._connecting_first or self._reconnect_task is None:
                raise StateError("cannot close while connect() is in progress; cancel it instead")
            # Reconnecting: stop now, whatever the attempt is doing.
            task = self._reconnect_task
            await self._end(CloseInfo(code, reason, clean=True, by_peer=False), stop=task)
        elif state is ConnectorState.NONE:
            self._set_closed(CloseInfo(code, reason, clean=True, by_peer=False))
        elif state is ConnectorState.OPEN:
            assert self._communicator is not None
            self._state = ConnectorState.CLOSING
            self._ending = ConnectionClosedError(code, reason)
            self._wake()
            await self._communicator.close(code, reason)
        await self.join()

    async def join(self) -> CloseInfo:
        """
        Wait until the connection is closed and its calls have unwound; return how it ended.

        For a reconnecting connector: until it is closed for good (by
        :meth:`close`, a close code the policy does not reconnect after, a
        rejected handshake, or too many failed attempts).
        """
        await self._closed.wait()
        assert self._close_info is not None
        return self._close_info

    @property
    def close_info(self) -> CloseInfo | None:
        """How the connection ended, once ``CLOSED``; None before."""
        return self._close_info

    @property
    def is_closed(self) -> bool:
        """Whether the connector is closing or closed: calls through it fail."""
        return self.state in (ConnectorState.CLOSING, ConnectorState.CLOSED)

    def on_close_request(self, hook: CloseRequestHook) -> CloseRequestHook:
        """
        Register ``hook(code, reason)``, called when the server's close frame
        arrives: the server asked to close, the socket is still open. Plain
        or async. Usable as a decorator; returns ``hook``.
        """
        self._close_request_hooks.append(hook)
        return hook

    def on_closed(self, hook: ClosedHook[Self]) -> ClosedHook[Self]:
        """
        Register ``hook(connector, info)``, called once an open connection is
        gone, before :meth:`join` returns; ``info.clean`` tells a graceful
        close from a failure. Plain or async; exceptions are logged. Usable
        as a decorator; returns ``hook``. On a reconnecting connector, only
        the final close runs it (see :meth:`on_lost`).
        """
        self._closed_hooks.append(hook)
        return hook

    def on_lost(self, hook: LostHook[Self]) -> LostHook[Self]:
        """
        Register ``hook(connector, info)``, called when a reconnecting
        connector has lost its connection and will reconnect: the calls
        pending then have failed, ``info`` says how the connection ended,
        the state is ``CONNECTING``. Runs before the first attempt, which
        waits for it (at most ``close_timeout``). Plain or async; exceptions
        are logged. Usable as a decorator; returns ``hook``.
        """
        self._lost_hooks.append(hook)
        return hook

    def on_back(self, hook: BackHook[Self]) -> BackHook[Self]:
        """
        Register ``hook(connector)``, called when a reconnecting connector is
        connected again (``OPEN``; calls that waited are already on their
        way). Plain or async; exceptions are logged. Usable as a decorator;
        returns ``hook``.
        """
        self._back_hooks.append(hook)
        return hook

    def _on_close_frame(self, code: int, reason: str) -> None:
        # The server is closing: calls made from now on would not be sent.
        self._peer_closing = True
        for hook in self._close_request_hooks:
            call_hook_soon(hook, code, reason)

    async def _on_communicator_closed(self, info: CloseInfo) -> None:
        if (
            self._policy is not None
            and self._state is ConnectorState.OPEN  # not close(): lost
            and self._policy.reconnects_after(info)
        ):
            self._communicator = self._channel = None
            self._state = ConnectorState.CONNECTING
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect(info, self._reconnect_task)
            )
            return
        await self._end(info)

    async def _end(self, info: CloseInfo, stop: asyncio.Task[None] | None = None) -> None:
        """
        Close for good: calls waiting for the connection fail, the close
        hooks run, ``join()`` returns. ``stop`` is a reconnection task to
        cancel first (unless it is the one ending).
        """
        if self._ending is None:
            self._ending = ConnectionClosedError(info.code, info.reason)
        self._state = ConnectorState.CLOSING
        self._close_info = info
        self._drivers.close(info.code, info.reason)
        self._wake()
        if stop is not None and stop is not asyncio.current_task():
            stop.cancel()
            await asyncio.wait([stop])
        try:
            await run_within(
                self._run_close_hooks(info), self._options.close_timeout, "close hooks"
            )
        finally:
            self._set_closed(info)

    # -- reconnecting ----------------------------------------------------------

    async def _reconnect(self, lost: CloseInfo, previous: asyncio.Task[None] | None) -> None:
        """Tell the lost hooks, then attempt with backoff until open or ended."""
        policy = self._policy
        assert policy is not None
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # its back hooks run before our lost hooks
        await run_within(
            self._run_hooks(self._lost_hooks, lost), self._options.close_timeout, "lost hooks"
        )
        attempt = 0
        last = ""
        while self._state is ConnectorState.CONNECTING:
            attempt += 1
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                reason = f"gave up reconnecting after {policy.max_attempts} attempts: {last}"
                await self._end(CloseInfo(CloseCode.ABNORMAL, reason[:123], False, False))
                return
            await asyncio.sleep(policy.delay(attempt))
            self._failure = None
            try:
                await self._attempt()
            except (RejectedError, EncodeError) as exc:
                info = self._failure or _failed_connect_info(exc, None)
                if isinstance(exc, EncodeError) or not policy.reconnects_after(info):
                    logger.info("reconnecting to %s: %s; closing for good", self._url, exc)
                    await self._end(info)
                    return
                last = f"rejected with {exc.code} {exc.reason!r}"
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                logger.info("reconnect attempt %d to %s failed: %s", attempt, self._url, last)
            else:
                logger.info("reconnected to %s", self._url)
                await self._run_hooks(self._back_hooks)
                return

    async def _run_hooks(self, hooks: list[Any], *args: Any) -> None:
        for hook in list(hooks):
            await run_hook(hook, self, *args)

    def _wake(self) -> None:
        """Wake the calls waiting for the connection: something changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _call_or_wait(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        """
        The call function of a reconnecting connector's drivers, until the final close.

        A coroutine, so that whether the connection is open is decided when
        the call starts, on the event loop (wsrpc.sync's drivers make their
        coroutines in the caller's thread, and anyone may await one later).
        """
        communicator = self._communicator
        if communicator is None or communicator.closed is not None or self._peer_closing:
            return await self._call_when_back(path, args, kwargs, timeout)
        return await communicator.call(path, args, kwargs, timeout)

    def _stream_or_wait(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> AsyncIterator[Any]:
        """
        The stream function of a reconnecting connector's drivers.

        The stream starts on the connection open when it is first iterated,
        or on the next one (waiting as calls do, within ``timeout``). A
        stream does not move to a new connection: when its connection is
        lost, it ends with :exc:`ConnectionClosedError`.
        """

        async def opener() -> AsyncIterator[Any]:
            communicator = self._communicator
            if communicator is None or communicator.closed is not None or self._peer_closing:
                limit = self._options.call_timeout if timeout is None else timeout
                try:
                    async with asyncio.timeout(limit):
                        communicator = await self._wait_open()
                except TimeoutError:
                    raise RpcTimeoutError(
                        f"stream {path!r} timed out after {limit} s: the connection was not back"
                    ) from None
            return communicator.stream(path, args, kwargs, timeout)

        return DeferredStream(opener)

    async def _call_when_back(
        self, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:
        if timeout is None:
            timeout = self._options.call_timeout
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                communicator = await self._wait_open()
        except TimeoutError:
            raise RpcTimeoutError(
                f"call to {path!r} timed out after {timeout} s: the connection was not back"
            ) from None
        if deadline is None:
            return await communicator.call(path, args, kwargs, None)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise RpcTimeoutError(f"call to {path!r} timed out after {timeout} s")
        return await communicator.call(path, args, kwargs, remaining)

    async def _wait_open(self) -> Communicator:
        """The open connection, once there is one; ConnectionClosedError once ending."""
        while True:
            ending = self._ending
            if ending is not None:
                raise ConnectionClosedError(ending.code, ending.reason)
            communicator, channel = self._communicator, self._channel
            if (
                self._state is ConnectorState.OPEN
                and communicator is not None
                and channel is not None
                and communicator.closed is None
                and not self._peer_closing
                and not channel.is_closing
            ):
                return communicator
            await self._changed.wait()

    async def _run_close_hooks(self, info: CloseInfo) -> None:
        for hook in self._closed_hooks:
            await run_hook(hook, self, info)

    def _set_closed(self, info: CloseInfo) -> None:
        if self._close_info is None:
            self._close_info = info
        self._drivers.close(self._close_info.code, self._close_info.reason)
        if self._ending is None:
            self._ending = ConnectionClosedError(self._close_info.code, self._close_info.reason)
        self._closed_hooks.clear()  # they often close over the connector: a cycle
        self._close_request_hooks.clear()
        self._lost_hooks.clear()
        self._back_hooks.clear()
        self._state = ConnectorState.CLOSED
        self._closed.set()
        self._wake()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._connecting_first:
            await self.close()


def _tls_error(exc: BaseException) -> str | None:
    """What went wrong with TLS, if ``exc`` (or what caused it) is a TLS error."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, _ssl.SSLCertVerificationError):
            return f"certificate verify failed: {error.verify_message}"
        if isinstance(error, _ssl.SSLError):
            # "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert ..." -> its reason
            reason = error.reason or str(error)
            return reason.lower().replace("_", " ")
        error = error.__cause__ or error.__context__
    return None


def _failed_connect_info(exc: BaseException, channel: Channel | None) -> CloseInfo:
    """How a connector that never opened ended."""
    if isinstance(exc, RejectedError):
        return CloseInfo(exc.code, exc.reason, clean=True, by_peer=True)
    sent = channel.close_frames.sent if channel is not None else None
    if sent is not None:
        return CloseInfo(sent[0], sent[1], clean=False, by_peer=False)
    return CloseInfo(CloseCode.ABNORMAL, f"connect failed: {type(exc).__name__}", False, False)
