"""
The client side: :class:`WebSocketConnector`.

Layer: the connections, wsrpc's asyncio layer (docs/architecture.md).
Imports the core and the transports; never a front end.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Generic, Self, TypeVar, cast

from . import _transports
from ._communicator import Communicator
from ._hooks import ClosedHook, CloseRequestHook, call_hook_soon, run_hook, run_within
from ._options import (
    DEFAULT_CALL_ERROR_LOG_LEVEL,
    DEFAULT_CLOSE_TIMEOUT,
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
from .driver import Drivers
from .exceptions import ConnectError, ProtocolError, RejectedError, RpcTimeoutError, StateError
from .http import HeadersView
from .messages import CloseCode
from .protocol import RpcProtocol, Side
from .states import CloseInfo, ConnectorState

__all__ = ["WebSocketConnector"]

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

    A connector connects once; to reconnect, make a new one.

    Args:
        header: Activation data sent first; the server's handler reads it as
            :attr:`WebSocketAcceptor.header`. Any msgpack-encodable value.
        provider: The object whose public methods the server may call, or
            None to serve nothing.
        max_message_size, max_concurrent_calls, ping_interval, ping_timeout,
        close_timeout, stall_timeout, compression, send_tracebacks,
        call_timeout, call_error_log_level: as for
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
    """

    def __init__(
        self,
        header: HeaderT,
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
        codec: CodecName | Codec = "msgpack",
        additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        transport: TransportName = "websockets",
    ) -> None:
        if provider is not None:
            check_provider(provider)
        self._codec = make_codec(codec)
        if additional_headers is None:
            self._additional_headers: list[tuple[str, str]] = []
        elif isinstance(additional_headers, Mapping):
            self._additional_headers = list(additional_headers.items())
        else:
            self._additional_headers = list(additional_headers)
        self._header = header
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
            transport=transport,
        )
        self._state = ConnectorState.NONE
        self._communicator: Communicator | None = None
        self._drivers = Drivers(
            "the connector is not connected; calls through this driver work once "
            "connect() has returned"
        )
        self._url = ""
        self._response_headers: list[tuple[str, str]] = []
        self._closed = asyncio.Event()
        self._close_info: CloseInfo | None = None
        self._close_request_hooks: list[CloseRequestHook] = []
        self._closed_hooks: list[ClosedHook[Self]] = []

    @property
    def header(self) -> HeaderT:
        """The header this connector sends."""
        return self._header

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
        if state is ConnectorState.OPEN and self._communicator is not None:
            if self._communicator.closed is not None:
                # Closing underway (the peer closed, or a protocol error):
                # calls already fail; the socket is still being torn down.
                return ConnectorState.CLOSING
        return state

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
                channel, self._response_headers = await self._open(url, ssl)
                early = await self._handshake(channel, protocol)
        except BaseException as exc:
            self._set_closed(_failed_connect_info(exc, channel))
            if channel is not None:
                if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
                    channel.abort()  # no time left for a closing handshake
                else:
                    await channel.close(CloseCode.NORMAL, "")
            if isinstance(exc, TimeoutError):
                raise RpcTimeoutError(f"connect to {url} timed out after {timeout} s") from None
            raise
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
        self._drivers.open(communicator.call)
        self._state = ConnectorState.OPEN

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

    async def _handshake(self, channel: Channel, protocol: RpcProtocol) -> list[bytes | str]:
        """Send the header and wait for the verdict; return the messages that followed it."""
        verdict: asyncio.Future[bytes | str | None] = asyncio.get_running_loop().create_future()
        early: list[bytes | str] = []  # the server may call us right after accepting

        def on_message(data: bytes | str) -> None:
            if verdict.done():
                early.append(data)
            else:
                verdict.set_result(data)

        def on_lost() -> None:
            if not verdict.done():
                verdict.set_result(None)

        channel.start(on_message, on_lost, self._on_close_frame)
        try:
            channel.send(protocol.send_header(self._header))
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
        with :exc:`ConnectionClosedError`.

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
            raise StateError("cannot close while connect() is in progress; cancel it instead")
        if state is ConnectorState.NONE:
            self._set_closed(CloseInfo(code, reason, clean=True, by_peer=False))
        elif state is ConnectorState.OPEN:
            assert self._communicator is not None
            self._state = ConnectorState.CLOSING
            await self._communicator.close(code, reason)
        await self.join()

    async def join(self) -> CloseInfo:
        """Wait until the connection is closed and its calls have unwound; return how it ended."""
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
        as a decorator; returns ``hook``.
        """
        self._closed_hooks.append(hook)
        return hook

    def _on_close_frame(self, code: int, reason: str) -> None:
        for hook in self._close_request_hooks:
            call_hook_soon(hook, code, reason)

    async def _on_communicator_closed(self, info: CloseInfo) -> None:
        self._close_info = info
        self._drivers.close(info.code, info.reason)
        try:
            await run_within(
                self._run_close_hooks(info), self._options.close_timeout, "close hooks"
            )
        finally:
            self._set_closed(info)

    async def _run_close_hooks(self, info: CloseInfo) -> None:
        for hook in self._closed_hooks:
            await run_hook(hook, self, info)

    def _set_closed(self, info: CloseInfo) -> None:
        if self._close_info is None:
            self._close_info = info
        self._drivers.close(self._close_info.code, self._close_info.reason)
        self._closed_hooks.clear()  # they often close over the connector: a cycle
        self._close_request_hooks.clear()
        self._state = ConnectorState.CLOSED
        self._closed.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not ConnectorState.CONNECTING:
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
