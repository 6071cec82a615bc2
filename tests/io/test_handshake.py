"""The header handshake, from both sides, over real sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import wsrpc
from wsrpc import AcceptorState, ConnectorState, ServerState

from ..conftest import UNIT, AnyAcceptor, accept_with, running_server, url_of


class Calculator:
    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b


async def test_accept_exposes_header_path_and_ip() -> None:
    seen: dict[str, Any] = {}

    async def handler(acceptor: AnyAcceptor) -> None:
        seen["state"] = acceptor.state
        seen["header"] = acceptor.header
        seen["path"] = acceptor.path
        seen["ip"] = acceptor.ip
        await acceptor.accept(Calculator())
        seen["after"] = acceptor.state

    server_states = []
    async with running_server(handler) as server:
        server_states.append(server.state)
        connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector(
            {"token": "t", "n": [1, 2]}
        )
        initial = connector.state
        await connector.connect(url_of(server, "/room/1?x=y"), timeout=5 * UNIT)
        assert (initial, connector.state) == (ConnectorState.NONE, ConnectorState.OPEN)
        assert await connector.get_driver().add(2, 3) == 5
        await connector.close()
        assert connector.state is ConnectorState.CLOSED
    assert seen == {
        "state": AcceptorState.ACCEPTING,
        "header": {"token": "t", "n": [1, 2]},
        "path": "/room/1?x=y",
        "ip": "127.0.0.1",
        "after": AcceptorState.OPEN,
    }
    server_states.append(server.state)
    assert server_states == [ServerState.OPEN, ServerState.CLOSED]


async def test_reject_reaches_connect_with_code_and_reason() -> None:
    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.reject(4003, "bad token")
        assert acceptor.state is AcceptorState.CLOSED

    async with running_server(handler) as server:
        connector: wsrpc.WebSocketConnector[str, None, Any] = wsrpc.WebSocketConnector("x")
        with pytest.raises(wsrpc.RejectedError) as info:
            await connector.connect(url_of(server), timeout=5 * UNIT)
        assert (info.value.code, info.value.reason) == (4003, "bad token")
        assert "bad token" in str(info.value)
        assert connector.state is ConnectorState.CLOSED


async def test_handler_returning_without_deciding_rejects() -> None:
    async def handler(acceptor: AnyAcceptor) -> None:
        return None

    async with running_server(handler) as server:
        with pytest.raises(wsrpc.RejectedError) as info:
            await wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
        assert info.value.code == 1008


async def test_handler_raising_rejects_with_1011_and_hides_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(acceptor: AnyAcceptor) -> None:
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.ERROR, logger="wsrpc"):
        async with running_server(handler) as server:
            with pytest.raises(wsrpc.RejectedError) as info:
                await wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
    assert info.value.code == 1011
    assert "hunter2" not in info.value.reason
    assert any("hunter2" in str(r.exc_info) for r in caplog.records)


async def test_header_timeout_closes_with_1008_and_handler_never_runs() -> None:
    called = False

    async def handler(acceptor: AnyAcceptor) -> None:
        nonlocal called
        called = True

    async with running_server(handler, header_timeout=0.2 * UNIT) as server:
        async with ws_connect(url_of(server)) as ws:
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(5 * UNIT):
                    await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1008
    assert not called


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1", 1007),  # never-used msgpack byte
        (msgpack.packb([2, 1, "add", [1, 2]]), 1002),  # a call before the header
        (msgpack.packb([0, 99, None, {}]), 1002),  # unknown protocol version
        (msgpack.packb({"header": 1}), 1002),  # not an array
    ],
)
async def test_bad_header_closes_and_handler_never_runs(frame: bytes, code: int) -> None:
    called = False

    async def handler(acceptor: AnyAcceptor) -> None:
        nonlocal called
        called = True

    async with running_server(handler) as server:
        async with ws_connect(url_of(server)) as ws:
            await ws.send(frame)
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(5 * UNIT):
                    await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == code
    assert not called


async def test_a_call_before_accept_closes_with_1002() -> None:
    # A raw client pipelines a call right behind its header instead of
    # waiting for the verdict: the connection closes with 1002, the provider
    # never sees the call and the handler's accept() comes too late.
    header_seen = asyncio.Event()
    go = asyncio.Event()
    outcome: list[str] = []
    provider = Calculator()

    async def handler(acceptor: AnyAcceptor) -> None:
        header_seen.set()
        try:
            await go.wait()
            await acceptor.accept(provider)
            outcome.append("accepted")
        except (wsrpc.ConnectionClosedError, asyncio.CancelledError) as exc:
            outcome.append(type(exc).__name__)
            raise

    async with running_server(handler) as server:
        async with ws_connect(url_of(server)) as ws:
            await ws.send(msgpack.packb([0, 1, None, {}]))
            await ws.send(msgpack.packb([2, 1, "add", [20, 22]]))
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(5 * UNIT):
                    await ws.recv()
            go.set()
        async with asyncio.timeout(5 * UNIT):
            while server.acceptors:
                await next(iter(server.acceptors.values())).join()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1002, "message before accept")
    assert "accepted" not in outcome
    assert provider.calls == 0


async def test_the_server_may_call_the_client_right_after_accept() -> None:
    # The accept frame and the server's first call can reach the client in
    # one read, before connect() has returned: the call is still answered.
    results: list[int] = []
    done = asyncio.Event()

    class Client:
        def add(self, a: int, b: int) -> int:
            return a + b

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Calculator())
        results.append(await acceptor.get_driver().add(1, 2))
        done.set()

    async with running_server(handler) as server:
        connector: wsrpc.WebSocketConnector[None, Client, Any] = wsrpc.WebSocketConnector(
            None, Client()
        )
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            async with asyncio.timeout(5 * UNIT):
                await done.wait()
    assert results == [3]


async def test_illegal_transitions_raise_state_error() -> None:
    errors: list[str] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        with pytest.raises(wsrpc.StateError):
            await acceptor.get_driver().add(1, 1)  # not accepted yet
        await acceptor.accept(Calculator())
        for action in (acceptor.accept(Calculator()), acceptor.reject()):
            try:
                await action
            except wsrpc.StateError as exc:
                errors.append(str(exc))

    async with running_server(handler) as server:
        with pytest.raises(wsrpc.StateError):
            await server.open(0, handler)
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        with pytest.raises(wsrpc.StateError):
            await connector.get_driver().add(1, 1)  # not connected yet
        await connector.connect(url_of(server), timeout=5 * UNIT)
        with pytest.raises(wsrpc.StateError):
            await connector.connect(url_of(server))
        assert await connector.get_driver().add(1, 1) == 2
        await connector.close()
    assert len(errors) == 2
    assert all("open" in message for message in errors)
    with pytest.raises(wsrpc.StateError):
        _ = server.port


async def test_accept_refuses_a_class_or_module_as_provider() -> None:
    outcome: list[str] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        try:
            await acceptor.accept(Calculator)
        except TypeError as exc:
            outcome.append(str(exc))
        await acceptor.reject(4000, "no provider")

    async with running_server(handler) as server:
        with pytest.raises(wsrpc.RejectedError):
            await wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
    assert outcome and "instance" in outcome[0]


async def test_reject_validates_code_and_reason() -> None:
    problems: list[type[Exception]] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        for code, reason in ((1006, ""), (2999, ""), (4000, "x" * 200)):
            try:
                await acceptor.reject(code, reason)
            except ValueError as exc:
                problems.append(type(exc))
        assert acceptor.state is AcceptorState.ACCEPTING
        await acceptor.reject(4000, "done")

    async with running_server(handler) as server:
        with pytest.raises(wsrpc.RejectedError) as info:
            await wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
    assert info.value.code == 4000
    assert problems == [ValueError, ValueError, ValueError]


async def test_connect_errors_are_wsrpc_errors() -> None:
    async with running_server(accept_with(Calculator())) as server:
        url = url_of(server)
    # The server is closed now: nothing listens on that port.
    with pytest.raises(wsrpc.ConnectError):
        await wsrpc.WebSocketConnector(None).connect(url, timeout=5 * UNIT)
    with pytest.raises(wsrpc.ConnectError):
        await wsrpc.WebSocketConnector(None).connect("http://127.0.0.1:1/", timeout=5 * UNIT)


async def test_connect_times_out_when_the_server_never_decides() -> None:
    release = asyncio.Event()

    async def handler(acceptor: AnyAcceptor) -> None:
        await release.wait()

    async with running_server(handler) as server:
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        with pytest.raises(wsrpc.RpcTimeoutError) as info:
            await connector.connect(url_of(server), timeout=0.2 * UNIT)
        assert isinstance(info.value, TimeoutError)
        assert connector.state is ConnectorState.CLOSED
        release.set()


async def test_header_encode_error_is_raised_locally() -> None:
    async with running_server(accept_with(Calculator())) as server:
        connector: wsrpc.WebSocketConnector[object, None, Any] = wsrpc.WebSocketConnector(object())
        with pytest.raises(wsrpc.EncodeError):
            await connector.connect(url_of(server), timeout=5 * UNIT)
        assert connector.state is ConnectorState.CLOSED


async def test_origins_allow_list_refuses_foreign_origin_with_403() -> None:
    called = False

    async def handler(acceptor: AnyAcceptor) -> None:
        nonlocal called
        called = True
        await acceptor.accept(Calculator())

    async with running_server(handler, origins=["https://good.example"]) as server:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url_of(server), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        # No Origin header at all is refused too, unless None is listed.
        with pytest.raises(wsrpc.ConnectError):
            await wsrpc.WebSocketConnector(None).connect(url_of(server), timeout=5 * UNIT)
        assert not called
        async with ws_connect(url_of(server), origin="https://good.example") as ws:  # type: ignore[arg-type]
            await ws.send(msgpack.packb([0, 1, None, {}]))
            assert msgpack.unpackb(await ws.recv(decode=False))[0] == 1
        assert called


async def test_codecs_allow_list_and_acceptor_codec() -> None:
    seen: list[str] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        seen.append(acceptor.codec)
        await acceptor.accept(Calculator())

    async with running_server(handler, codecs=["msgpack"]) as server:
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        await connector.close()
        with pytest.raises(wsrpc.RejectedError) as info:
            await wsrpc.WebSocketConnector(None, codec="tgrid").connect(
                url_of(server), timeout=5 * UNIT
            )
        assert info.value.code == 1003
    assert seen == ["msgpack"]


@pytest.mark.parametrize(
    "options",
    [
        {"header_timeout": float("nan")},
        {"header_timeout": 0},
        {"codecs": []},
        {"codecs": ["json"]},
        {"max_concurrent_calls": 0},
        {"max_message_size": 10},
        {"ping_interval": -1.0},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wsrpc.WebSocketServer(**options)
