"""validate=True through real connections (run on both transports)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import pytest

import wsrpc

from ..conftest import UNIT, AnyAcceptor, accept_with, url_of


class Header(TypedDict):
    token: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Calculator:
    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: int, b: int) -> int:
        self.calls += 1
        return a + b

    async def slow_add(self, a: int, b: int) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        return a + b

    def norm(self, p: Point) -> int:
        assert isinstance(p, Point)  # built from the wire's map
        return p.x + p.y

    def mirror(self, p: Point) -> Point:
        return p  # goes back as plain data

    def wrong(self) -> int:
        return "3"  # type: ignore[return-value]

    async def slow_wrong(self) -> int:
        return "3"  # type: ignore[return-value]

    def broken(self, a: Undefined) -> None:  # type: ignore[name-defined]  # noqa: F821
        self.calls += 1

    async def ticks(self, n: int) -> AsyncIterator[int]:
        self.calls += 1
        for i in range(n):
            yield i


AnyServer = wsrpc.WebSocketServer[Any, Any, Any]


async def serve(provider: object, **options: Any) -> AnyServer:
    server: AnyServer = wsrpc.WebSocketServer[Header, Any, Any](validate=True, **options)
    await server.open(0, accept_with(provider))
    return server


async def connected(server: AnyServer, **options: Any) -> wsrpc.WebSocketConnector[Any, Any, Any]:
    connector: wsrpc.WebSocketConnector[Any, Any, Any] = wsrpc.WebSocketConnector(
        {"token": "t"}, **options
    )
    await connector.connect(url_of(server), timeout=5 * UNIT)
    return connector


async def test_bad_arguments_are_refused_and_the_method_never_runs() -> None:
    calc = Calculator()
    server = await serve(calc)
    try:
        async with await connected(server) as connector:
            remote = connector.get_driver()
            for method in (remote.add, remote.slow_add):
                with pytest.raises(wsrpc.RemoteError) as info:
                    await method("1", "2")
                assert info.value.name == "ValidationError"
                assert info.value.message == "argument 'a': Expected `int`, got `str`"
            with pytest.raises(wsrpc.RemoteError) as info:
                await remote.add(1)
            assert (info.value.name, info.value.message) == (
                "ValidationError",
                "argument 'b': missing",
            )
            assert calc.calls == 0
            assert await remote.add(1, 2) == 3
            assert await remote.slow_add(a=1, b=2) == 3
            assert calc.calls == 2
    finally:
        await server.close()


async def test_rich_arguments_are_built_and_rich_results_sent_as_data() -> None:
    server = await serve(Calculator())
    try:
        async with await connected(server) as connector:
            remote = connector.get_driver()
            assert await remote.norm({"x": 1, "y": 2}) == 3
            assert await remote.mirror({"x": 1, "y": 2}) == {"x": 1, "y": 2}
            with pytest.raises(wsrpc.RemoteError) as info:
                await remote.norm({"x": 1, "y": "2"})
            assert info.value.message == "argument 'p': Expected `int`, got `str` - at `$.y`"
    finally:
        await server.close()


async def test_a_bad_result_is_refused_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    server = await serve(Calculator())
    try:
        async with await connected(server) as connector:
            remote = connector.get_driver()
            with caplog.at_level(logging.INFO, logger="wsrpc"):
                for method in (remote.wrong, remote.slow_wrong):
                    with pytest.raises(wsrpc.RemoteError) as info:
                        await method()
                    assert info.value.name == "ValidationError"
                    assert info.value.message == "result: Expected `int`, got `str`"
    finally:
        await server.close()
    logged = [r for r in caplog.records if "raised ValidationError" in r.getMessage()]
    assert len(logged) == 2 and all(r.levelno == logging.INFO for r in logged)


async def test_annotations_that_do_not_resolve_fail_the_call_as_a_provider_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calc = Calculator()
    server = await serve(calc)
    try:
        async with await connected(server) as connector:
            with caplog.at_level(logging.INFO, logger="wsrpc"):
                with pytest.raises(wsrpc.RemoteError) as info:
                    await connector.get_driver().broken(1)
            assert info.value.name == "NameError"
            assert calc.calls == 0
    finally:
        await server.close()
    assert any("raised NameError" in r.getMessage() for r in caplog.records)


async def test_stream_arguments_are_checked() -> None:
    calc = Calculator()
    server = await serve(calc)
    try:
        async with await connected(server) as connector:
            remote = connector.get_driver()
            with pytest.raises(wsrpc.RemoteError) as info:
                async for _ in remote.ticks("3"):
                    pass
            assert info.value.name == "ValidationError"
            assert calc.calls == 0
            assert [i async for i in remote.ticks(3)] == [0, 1, 2]
    finally:
        await server.close()


async def test_without_validate_arguments_are_not_checked() -> None:
    calc = Calculator()
    server: AnyServer = wsrpc.WebSocketServer[Header, Any, Any]()
    await server.open(0, accept_with(calc))
    try:
        async with await connected(server) as connector:
            assert await connector.get_driver().add("1", "2") == "12"
    finally:
        await server.close()


async def test_the_connector_validates_the_servers_calls() -> None:
    calc = Calculator()
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(None)
        try:
            await acceptor.get_driver().add("1", 2)
        except wsrpc.RemoteError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    server: AnyServer = wsrpc.WebSocketServer[Any, Any, Any]()
    await server.open(0, handler)
    try:
        connector: wsrpc.WebSocketConnector[Any, Any, Any] = wsrpc.WebSocketConnector(
            None, calc, validate=True
        )
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            error = await asyncio.wait_for(outcome, 5 * UNIT)
        assert isinstance(error, wsrpc.RemoteError) and error.name == "ValidationError"
        assert calc.calls == 0
    finally:
        await server.close()


async def test_a_header_of_the_wrong_type_is_rejected_with_1008() -> None:
    seen: list[Any] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        seen.append(acceptor.header)
        await acceptor.accept(Calculator())

    server: AnyServer = wsrpc.WebSocketServer[Header, Any, Any](validate=True)
    await server.open(0, handler)
    try:
        reasons = []
        for header in ({"token": 1}, "token", {}):
            with pytest.raises(wsrpc.RejectedError) as info:
                await wsrpc.WebSocketConnector(header).connect(url_of(server), timeout=5 * UNIT)
            assert info.value.code == 1008
            reasons.append(info.value.reason)
        assert reasons == [
            "invalid header: Expected `str`, got `int` - at `$.token`",
            "invalid header: Expected `object`, got `str`",
            "invalid header: Object missing required field `token`",
        ]
        assert seen == []
        async with wsrpc.WebSocketConnector[Header, None, Any]({"token": "t"}) as connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
        assert seen == [{"token": "t"}]
    finally:
        await server.close()


async def test_the_header_is_converted_for_the_handler() -> None:
    seen: list[Any] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        seen.append(acceptor.header)
        await acceptor.accept(Calculator())

    server: AnyServer = wsrpc.WebSocketServer[Point, Any, Any](validate=True)
    await server.open(0, handler)
    try:
        async with wsrpc.WebSocketConnector[Any, None, Any]({"x": 1, "y": 2}) as connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
    finally:
        await server.close()
    assert seen == [Point(1, 2)]


async def test_a_server_not_made_subscripted_warns_that_headers_are_unchecked() -> None:
    server: AnyServer = wsrpc.WebSocketServer(validate=True)
    with pytest.warns(UserWarning, match="checks calls but not headers"):
        await server.open(0, accept_with(Calculator()))
    await server.close()
