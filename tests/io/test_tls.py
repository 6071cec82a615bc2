"""
TLS: ``server.open(..., ssl=)``, ``connector.connect("wss://...", ssl=)``.

Every certificate is made at test time by trustme, under a private CA the
system does not trust. The server runs on the tests' transport
(``WSRPC_TEST_TRANSPORT``); clients run on each transport in turn, so that
each transport's TLS is shaken hands with by both. Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest
import trustme

import wsrpc
import wsrpc.sync
from wsrpc import ConnectError, TransportName

from ..conftest import TRANSPORT, UNIT, accept_with

CLIENT_TRANSPORTS: list[TransportName] = ["websockets", "picows"]


class Echo:
    def echo(self, value: object) -> object:
        return value


class EchoRemote(Protocol):
    async def echo(self, value: object) -> object: ...


class SyncEchoRemote(Protocol):
    def echo(self, value: object) -> object: ...


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A server-side context with ``cert``; requiring client certificates of ``client_ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client-side context trusting ``ca``, presenting ``cert`` if given."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def tls_server(
    context: ssl.SSLContext,
) -> AsyncIterator[wsrpc.WebSocketServer[Any, Echo, None]]:
    server: wsrpc.WebSocketServer[Any, Echo, None] = wsrpc.WebSocketServer()
    await server.open(0, accept_with(Echo()), ssl=context)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def server(
    server_cert: trustme.LeafCert,
) -> AsyncIterator[wsrpc.WebSocketServer[Any, Echo, None]]:
    async for server in tls_server(server_context(server_cert)):
        yield server


@pytest.fixture
async def mtls_server(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[wsrpc.WebSocketServer[Any, Echo, None]]:
    async for server in tls_server(server_context(server_cert, client_ca=ca)):
        yield server


def wss(server: wsrpc.WebSocketServer[Any, Any, Any], host: str = "127.0.0.1") -> str:
    return f"wss://{host}:{server.port}/"


async def echo_over(
    url: str, transport: TransportName, context: ssl.SSLContext | None, value: object = "hi"
) -> object:
    async with wsrpc.WebSocketConnector[None, None, EchoRemote](
        None, transport=transport
    ) as connector:
        await connector.connect(url, ssl=context, timeout=10 * UNIT)
        return await connector.get_driver().echo(value)


async def refused(
    url: str, transport: TransportName, context: ssl.SSLContext | None
) -> ConnectError:
    connector = wsrpc.WebSocketConnector[None, None, EchoRemote](None, transport=transport)
    with pytest.raises(ConnectError) as info:
        await connector.connect(url, ssl=context, timeout=10 * UNIT)
    assert connector.state is wsrpc.ConnectorState.CLOSED
    return info.value


@pytest.fixture(autouse=True)
async def handshake_errors() -> AsyncIterator[list[BaseException]]:
    """
    The TLS errors of the server's failed handshakes, as the event loop is
    told of them instead of logging them: refusing a client is what these
    tests expect of the server. asyncio reports them in debug mode
    (``-X dev``) only; picows' TLS (aiofastnet 1.2) reports a handshake the
    client aborted always, as "SSL handshake failed" with an exception class
    instead of an exception (see docs/deployment.md).
    """
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        if isinstance(exception, ssl.SSLError):
            errors.append(exception)
        elif context.get("message") == "SSL handshake failed":
            errors.append(ConnectionError(context["message"], exception))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


def assert_server_saw(errors: list[BaseException], reason: str) -> None:
    """The server's event loop reported its refusal, when it reports them (see above)."""
    if TRANSPORT == "websockets" and asyncio.get_running_loop().get_debug():
        assert any(reason in str(error) for error in errors), errors


# -- server-only TLS, a private CA -------------------------------------------


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_calls_over_tls_with_a_private_ca(
    server: wsrpc.WebSocketServer[Any, Echo, None], ca: trustme.CA, client: TransportName
) -> None:
    assert await echo_over(wss(server), client, client_context(ca), b"\x00bytes") == b"\x00bytes"
    # By name too: the certificate names both.
    assert await echo_over(wss(server, "localhost"), client, client_context(ca)) == "hi"


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_default_context_refuses_a_private_ca(
    server: wsrpc.WebSocketServer[Any, Echo, None], client: TransportName
) -> None:
    # wss:// without ssl= uses the system's CAs, which do not know ours.
    error = await refused(wss(server), client, None)
    assert "TLS failed: certificate verify failed" in str(error)
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_certificate_of_another_name_is_refused(
    ca: trustme.CA, client: TransportName
) -> None:
    # A certificate for another host, under the trusted CA.
    async for server in tls_server(server_context(ca.issue_cert("elsewhere.example"))):
        error = await refused(wss(server), client, client_context(ca))
        assert "certificate verify failed" in str(error)
        assert "mismatch" in str(error)


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_plain_client_of_a_tls_server_fails_to_connect(
    server: wsrpc.WebSocketServer[Any, Echo, None], client: TransportName
) -> None:
    # ws:// to a wss:// server: the server reads no HTTP request.
    connector = wsrpc.WebSocketConnector[None, None, EchoRemote](None, transport=client)
    with pytest.raises((ConnectError, wsrpc.RpcTimeoutError)):
        await connector.connect(f"ws://127.0.0.1:{server.port}/", timeout=5 * UNIT)
    # And the server still serves TLS clients.


async def test_ssl_with_a_ws_url_is_a_value_error(
    server: wsrpc.WebSocketServer[Any, Echo, None], ca: trustme.CA
) -> None:
    connector = wsrpc.WebSocketConnector[None, None, EchoRemote](None)
    with pytest.raises(ValueError, match="wss://"):
        await connector.connect(f"ws://127.0.0.1:{server.port}/", ssl=client_context(ca))
    assert connector.state is wsrpc.ConnectorState.NONE  # still usable
    await connector.connect(wss(server), ssl=client_context(ca), timeout=10 * UNIT)
    assert await connector.get_driver().echo(1) == 1
    await connector.close()


# -- client certificates ------------------------------------------------------


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_client_certificate_required_and_given(
    mtls_server: wsrpc.WebSocketServer[Any, Echo, None], ca: trustme.CA, client: TransportName
) -> None:
    context = client_context(ca, ca.issue_cert("client@example.com"))
    assert await echo_over(wss(mtls_server), client, context, [1, 2]) == [1, 2]


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_client_without_a_certificate_is_refused(
    mtls_server: wsrpc.WebSocketServer[Any, Echo, None],
    ca: trustme.CA,
    client: TransportName,
    handshake_errors: list[BaseException],
) -> None:
    error = await refused(wss(mtls_server), client, client_context(ca))
    assert "TLS failed" in str(error), str(error)
    assert "refused this client's certificate" in str(error), str(error)
    assert_server_saw(handshake_errors, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


@pytest.mark.parametrize("client", CLIENT_TRANSPORTS)
async def test_client_certificate_of_another_ca_is_refused(
    mtls_server: wsrpc.WebSocketServer[Any, Echo, None],
    ca: trustme.CA,
    client: TransportName,
    handshake_errors: list[BaseException],
) -> None:
    stranger = trustme.CA().issue_cert("client@example.com")
    error = await refused(wss(mtls_server), client, client_context(ca, stranger))
    assert "TLS failed" in str(error), str(error)
    assert "refused this client's certificate" in str(error), str(error)
    assert_server_saw(handshake_errors, "CERTIFICATE_VERIFY_FAILED")


# -- the blocking connector ---------------------------------------------------


async def test_sync_connector_over_tls(
    mtls_server: wsrpc.WebSocketServer[Any, Echo, None], ca: trustme.CA
) -> None:
    url = wss(mtls_server)
    good = client_context(ca, ca.issue_cert("client@example.com"))

    def calls() -> object:
        with wsrpc.sync.WebSocketConnector[None, None, SyncEchoRemote](None) as connector:
            connector.connect(url, ssl=good, timeout=10 * UNIT)
            return connector.get_driver().echo("sync")

    def refused_without_cert() -> str:
        connector = wsrpc.sync.WebSocketConnector[None, None, SyncEchoRemote](None)
        with pytest.raises(ConnectError) as info:
            connector.connect(url, ssl=client_context(ca), timeout=10 * UNIT)
        return str(info.value)

    def value_error() -> None:
        connector = wsrpc.sync.WebSocketConnector[None, None, SyncEchoRemote](None)
        with pytest.raises(ValueError, match="wss://"):
            connector.connect(f"ws://127.0.0.1:{mtls_server.port}/", ssl=good)

    async with asyncio.timeout(30 * UNIT):
        assert await asyncio.to_thread(calls) == "sync"
        assert "TLS failed" in await asyncio.to_thread(refused_without_cert)
        await asyncio.to_thread(value_error)


def test_transport_under_test_is_known() -> None:
    assert TRANSPORT in CLIENT_TRANSPORTS
