"""Calls in both directions: results, errors, refusals, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, cast

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import wsrpc
from wsrpc._transports.websockets import WebsocketsChannel

from ..conftest import UNIT, AnyAcceptor, accept_with, running_server, url_of


class Scientific:
    def sqrt(self, x: float) -> float:
        return math.sqrt(x)

    async def pow(self, x: float, y: float) -> float:
        return math.pow(x, y)


class Gate:
    """Lets a test hold provider calls open and see them start and end."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.running = 0
        self.most = 0


class Calculator:
    def __init__(self, gate: Gate | None = None) -> None:
        self.scientific = Scientific()
        self.gate = gate or Gate()
        self.recorded: list[Any] = []

    def add(self, a: int, b: int) -> int:
        return a + b

    async def add_async(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    def echo(self, value: Any) -> Any:
        return value

    def greet(self, name: str, *, polite: bool = False) -> str:
        return f"Good day, {name}." if polite else f"hi {name}"

    def nothing(self, value: Any) -> None:
        self.recorded.append(value)

    def fail(self, message: str) -> None:
        raise ValueError(message)

    async def wait(self, tag: str) -> str:
        gate = self.gate
        gate.running += 1
        gate.most = max(gate.most, gate.running)
        gate.started.set()
        try:
            await gate.release.wait()
        except asyncio.CancelledError:
            gate.cancelled.set()
            raise
        finally:
            gate.running -= 1
        return tag

    def big(self, size: int) -> bytes:
        return b"x" * size

    @staticmethod
    def static_add(a: int, b: int) -> int:
        return a + b

    @classmethod
    def kind(cls) -> str:
        return cls.__name__


class ScientificRemote(Protocol):
    async def sqrt(self, x: float) -> float: ...
    async def pow(self, x: float, y: float) -> float: ...


class CalculatorRemote(Protocol):
    scientific: ScientificRemote

    async def add(self, a: int, b: int) -> int: ...
    async def add_async(self, a: int, b: int) -> int: ...
    async def echo(self, value: Any) -> Any: ...
    async def greet(self, name: str, *, polite: bool = False) -> str: ...
    async def nothing(self, value: Any) -> None: ...
    async def fail(self, message: str) -> None: ...
    async def wait(self, tag: str) -> str: ...
    async def big(self, size: int) -> bytes: ...
    async def static_add(self, a: int, b: int) -> int: ...
    async def kind(self) -> str: ...


Connector = wsrpc.WebSocketConnector[None, Any, CalculatorRemote]


@asynccontextmanager
async def connected(
    provider: object, client_provider: object = None, **server_options: Any
) -> AsyncIterator[tuple[wsrpc.WebSocketServer[Any, Any, Any], Connector]]:
    async with running_server(accept_with(provider), **server_options) as server:
        connector: Connector = wsrpc.WebSocketConnector(None, client_provider)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        try:
            yield server, connector
        finally:
            await connector.close()


async def test_plain_nested_async_static_and_class_methods() -> None:
    async with connected(Calculator()) as (_, connector):
        calc = connector.get_driver()
        assert await calc.add(1, 2) == 3
        assert await calc.add_async(20, 22) == 42
        assert await calc.scientific.sqrt(16) == 4.0
        assert await calc.scientific.pow(2, 10) == 1024.0
        assert await calc.static_add(2, 2) == 4
        assert await calc.kind() == "Calculator"
        assert await calc.greet("Ada") == "hi Ada"
        assert await calc.greet("Ada", polite=True) == "Good day, Ada."


async def test_values_round_trip_and_void_returns_none() -> None:
    provider = Calculator()
    async with connected(provider) as (_, connector):
        calc = connector.get_driver()
        values: list[Any] = [
            None,
            True,
            False,
            0,
            -(2**63),
            2**64 - 1,
            1.5,
            "",
            "héllo ✓",
            b"\x00\xff",
            [1, [2, [3]]],
            {"a": {"b": [None]}},
        ]
        for value in values:
            assert await calc.echo(value) == value
        assert await calc.echo((1, 2)) == [1, 2]  # tuples travel as lists
        assert await cast(Any, calc).nothing("x") is None
        assert provider.recorded == ["x"]


async def test_remote_exception_becomes_remote_error_without_traceback() -> None:
    async with connected(Calculator()) as (_, connector):
        with pytest.raises(wsrpc.RemoteError) as info:
            await connector.get_driver().fail("boom")
        assert (info.value.name, info.value.message) == ("ValueError", "boom")
        assert info.value.traceback is None
        assert str(info.value) == "ValueError: boom"
        # A wrong number of arguments is the provider's TypeError.
        with pytest.raises(wsrpc.RemoteError) as info:
            await connector.get_driver().add(1)  # type: ignore[call-arg]
        assert info.value.name == "TypeError"


async def test_tracebacks_are_sent_only_when_enabled() -> None:
    async with connected(Calculator(), send_tracebacks=True) as (_, connector):
        with pytest.raises(wsrpc.RemoteError) as info:
            await connector.get_driver().fail("boom")
    assert info.value.traceback is not None
    assert "Traceback" in info.value.traceback
    assert "def fail" in info.value.traceback or "raise ValueError" in info.value.traceback


async def test_server_calls_the_client_back_during_a_client_call() -> None:
    class Client:
        def __init__(self) -> None:
            self.messages: list[str] = []

        async def on_message(self, text: str) -> int:
            self.messages.append(text)
            return len(text)

    class ClientRemote(Protocol):
        async def on_message(self, text: str) -> int: ...

    class Room:
        def __init__(self, acceptor: wsrpc.WebSocketAcceptor[None, Any, ClientRemote]) -> None:
            self.acceptor = acceptor

        async def shout(self, text: str) -> int:
            # The server calls the client while the client's call is running.
            return await self.acceptor.get_driver().on_message(text.upper())

    async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Any, ClientRemote]) -> None:
        await acceptor.accept(Room(acceptor))

    client = Client()
    async with running_server(handler) as server:
        connector: wsrpc.WebSocketConnector[None, Client, Any] = wsrpc.WebSocketConnector(
            None, client
        )
        await connector.connect(url_of(server), timeout=5 * UNIT)
        assert await connector.get_driver().shout("hey") == 3
        await connector.close()
    assert client.messages == ["HEY"]


async def test_calls_run_concurrently_and_replies_match_ids() -> None:
    gate = Gate()
    async with connected(Calculator(gate)) as (_, connector):
        calc = connector.get_driver()
        slow = asyncio.ensure_future(calc.wait("slow"))
        async with asyncio.timeout(5 * UNIT):
            await gate.started.wait()
            # The fast calls complete while the slow one is still running.
            assert await asyncio.gather(*(calc.add(i, i) for i in range(50))) == [
                2 * i for i in range(50)
            ]
            assert not slow.done()
            gate.release.set()
            assert await slow == "slow"


@pytest.mark.parametrize(
    "path",
    [
        "_private",
        "name_",
        "__class__",
        "__init__",
        "__class__.__init__.__globals__",
        "gate",  # data, not a method
        "gate.release",  # builtin-typed object's attribute path
        "recorded",
        "missing",
        "scientific",  # an object, not a method
        "scientific._hidden",
        "a..b",
        "",
        "x" * 1000,
    ],
)
async def test_member_access_refusals_keep_the_connection_usable(path: str) -> None:
    async with connected(Calculator()) as (server, _):
        async with raw_client(url_of(server)) as ws:
            await ws.send(msgpack.packb([2, 1, path, []]))
            reply = msgpack.unpackb(await ws.recv(decode=False))
            assert reply[:3] == [4, 1, "MemberAccessError"]
            await ws.send(msgpack.packb([2, 2, "add", [1, 2]]))
            assert msgpack.unpackb(await ws.recv(decode=False)) == [3, 2, 3]


async def test_driver_refuses_private_names_locally() -> None:
    async with connected(Calculator()) as (_, connector):
        driver = connector.get_driver()
        with pytest.raises(AttributeError):
            driver._secret  # type: ignore[attr-defined]  # noqa: B018
        with pytest.raises(TypeError):
            await driver()  # type: ignore[operator]
        assert "add" in repr(driver.add)


async def test_client_without_provider_refuses_server_calls() -> None:
    result: list[wsrpc.RemoteError] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Calculator())
        try:
            await acceptor.get_driver().anything()
        except wsrpc.RemoteError as exc:
            result.append(exc)

    async with running_server(handler) as server:
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        assert await connector.get_driver().add(1, 1) == 2
        await connector.close()
    assert result and result[0].name == "MemberAccessError"


async def test_cancelling_a_call_cancels_it_remotely() -> None:
    gate = Gate()
    async with connected(Calculator(gate)) as (_, connector):
        call = asyncio.ensure_future(connector.get_driver().wait("x"))
        async with asyncio.timeout(5 * UNIT):
            await gate.started.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await gate.cancelled.wait()
        communicator = connector._communicator
        assert communicator is not None
        assert not communicator._pending
        assert not communicator._protocol.outgoing
        # The connection is still fine.
        assert await connector.get_driver().add(1, 2) == 3


async def test_per_call_timeout_raises_and_cancels_remotely() -> None:
    gate = Gate()
    async with connected(Calculator(gate)) as (_, connector):
        driver = connector.get_driver(timeout=0.2 * UNIT)
        with pytest.raises(wsrpc.RpcTimeoutError) as info:
            await driver.wait("x")
        assert isinstance(info.value, TimeoutError)
        assert "wait" in str(info.value)
        async with asyncio.timeout(5 * UNIT):
            await gate.cancelled.wait()
        assert await driver.add(1, 2) == 3


async def test_default_call_timeout_applies_to_every_call() -> None:
    gate = Gate()
    async with running_server(accept_with(Calculator(gate))) as server:
        connector: Connector = wsrpc.WebSocketConnector(None, call_timeout=0.2 * UNIT)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        with pytest.raises(wsrpc.RpcTimeoutError):
            await connector.get_driver().wait("x")
        await connector.close()


async def test_argument_over_the_peer_limit_is_a_local_encode_error() -> None:
    async with connected(Calculator(), max_message_size=4096) as (_, connector):
        calc = connector.get_driver()
        with pytest.raises(wsrpc.EncodeError):
            await calc.echo(b"x" * 5000)
        with pytest.raises(wsrpc.EncodeError):
            await calc.echo(object())
        assert await calc.add(1, 2) == 3


async def test_reply_over_the_caller_limit_is_an_error_not_a_dead_connection() -> None:
    async with running_server(accept_with(Calculator())) as server:
        connector: Connector = wsrpc.WebSocketConnector(None, max_message_size=4096)
        await connector.connect(url_of(server), timeout=5 * UNIT)
        calc = connector.get_driver()
        with pytest.raises(wsrpc.RemoteError) as info:
            await calc.big(10_000)
        assert info.value.name == "EncodeError"
        assert await calc.big(10) == b"x" * 10
        await connector.close()


async def test_unencodable_result_is_an_error() -> None:
    class Odd:
        def thing(self) -> object:
            return object()

    async with connected(Odd()) as (_, connector):
        with pytest.raises(wsrpc.RemoteError) as info:
            await cast(Any, connector.get_driver()).thing()
        assert info.value.name == "EncodeError"


async def test_oversized_frame_closes_with_1009() -> None:
    async with connected(Calculator(), max_message_size=4096) as (server, _):
        async with raw_client(url_of(server)) as ws:
            await ws.send(msgpack.packb([2, 1, "echo", [b"x" * 10_000]]))
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009


async def test_concurrency_limit_is_respected_and_everything_completes() -> None:
    gate = Gate()
    async with connected(Calculator(gate), max_concurrent_calls=3) as (_, connector):
        calc = connector.get_driver()
        calls = [asyncio.ensure_future(calc.wait(str(i))) for i in range(20)]
        async with asyncio.timeout(5 * UNIT):
            await gate.started.wait()
            gate.release.set()
            assert await asyncio.gather(*calls) == [str(i) for i in range(20)]
    # The client held back what the server said it could not run at once.
    assert gate.most == 3


async def test_callbacks_flow_while_the_server_is_at_its_limit() -> None:
    # Every server slot is taken by a call that waits on a callback to the
    # client: the callbacks' replies must still get through.
    class Client:
        async def double(self, x: int) -> int:
            await asyncio.sleep(0)
            return 2 * x

    class Service:
        def __init__(self, acceptor: AnyAcceptor) -> None:
            self.acceptor = acceptor

        async def via_client(self, x: int) -> int:
            result: int = await self.acceptor.get_driver().double(x)
            return result + 1

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Service(acceptor))

    async with running_server(handler, max_concurrent_calls=1) as server:
        connector: wsrpc.WebSocketConnector[None, Client, Any] = wsrpc.WebSocketConnector(
            None, Client()
        )
        await connector.connect(url_of(server), timeout=5 * UNIT)
        async with asyncio.timeout(5 * UNIT):
            results = await asyncio.gather(
                *(connector.get_driver().via_client(i) for i in range(10))
            )
        assert results == [2 * i + 1 for i in range(10)]
        await connector.close()


async def test_peer_ignoring_the_limit_is_queued_not_refused() -> None:
    # A raw client sends more calls than the advertised limit; they wait in
    # the backlog and are all answered.
    gate = Gate()
    async with connected(Calculator(gate), max_concurrent_calls=2) as (server, _):
        async with raw_client(url_of(server)) as ws:
            for uid in range(1, 5):
                await ws.send(msgpack.packb([2, uid, "wait", [str(uid)]]))
            async with asyncio.timeout(5 * UNIT):
                await gate.started.wait()
                gate.release.set()
                replies = sorted([msgpack.unpackb(await ws.recv(decode=False)) for _ in range(4)])
    assert replies == [[3, uid, str(uid)] for uid in range(1, 5)]
    assert gate.most == 2


async def test_cancel_reaches_a_call_still_in_the_backlog() -> None:
    gate = Gate()
    async with connected(Calculator(gate), max_concurrent_calls=2) as (server, _):
        async with raw_client(url_of(server)) as ws:
            # Two run, the third waits in the backlog (which holds up to two).
            for uid in (1, 2, 3):
                await ws.send(msgpack.packb([2, uid, "wait", [str(uid)]]))
            async with asyncio.timeout(5 * UNIT):
                await gate.started.wait()
                await ws.send(msgpack.packb([5, 3]))  # cancel the third, never started
                # A call answered after the cancel proves the cancel was read.
                await ws.send(msgpack.packb([2, 4, "add", [1, 1]]))
                assert msgpack.unpackb(await ws.recv(decode=False)) == [3, 4, 2]
                gate.release.set()
                replies = [msgpack.unpackb(await ws.recv(decode=False)) for _ in range(2)]
                await ws.send(msgpack.packb([2, 5, "add", [2, 2]]))
                assert msgpack.unpackb(await ws.recv(decode=False)) == [3, 5, 4]
    assert sorted(replies) == [[3, 1, "1"], [3, 2, "2"]]
    assert gate.most == 2


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[ClientConnection]:
    """A bare websockets client that has done wsrpc's handshake by hand."""
    async with ws_connect(url) as ws:
        await ws.send(msgpack.packb([0, 1, None, {}]))
        async with asyncio.timeout(5 * UNIT):
            assert msgpack.unpackb(await ws.recv(decode=False))[0] == 1
            yield ws


class Awkward:
    """Providers that misbehave in ways a caller must survive."""

    async def raises_cancelled(self) -> None:
        raise asyncio.CancelledError

    def plain_raises_cancelled(self) -> None:
        raise asyncio.CancelledError

    def deep(self, depth: int) -> list[Any]:
        value: list[Any] = []
        for _ in range(depth):
            value = [value]
        return value

    def wraps_coroutine(self, x: int) -> Any:
        # A plain function that returns a coroutine (a decorator's wrapper).
        return self._double(x)

    async def _double(self, x: int) -> int:
        return 2 * x

    def bad_text(self) -> None:
        raise ValueError("lone surrogate \ud800 in a message")

    def huge_error(self) -> None:
        raise ValueError("x" * 100_000)


async def test_misbehaving_providers_still_answer() -> None:
    async with connected(Awkward(), max_message_size=4096) as (_, connector):
        driver = cast(Any, connector.get_driver())
        with pytest.raises(wsrpc.RemoteError) as info:
            await driver.raises_cancelled()
        assert info.value.name == "CancelledError"
        with pytest.raises(wsrpc.RemoteError) as info:
            await driver.plain_raises_cancelled()
        assert info.value.name == "CancelledError"
        # Just deeper than the peer's decoder: an error, not a dead connection.
        with pytest.raises(wsrpc.RemoteError) as info:
            await driver.deep(1023)
        assert info.value.name == "EncodeError"
        assert len(await driver.deep(100)) == 1
        assert await driver.wraps_coroutine(21) == 42
        with pytest.raises(wsrpc.RemoteError) as info:
            await driver.bad_text()
        assert info.value.name == "ValueError"
        assert "lone surrogate" in info.value.message
    async with running_server(accept_with(Awkward())) as server:
        small: Connector = wsrpc.WebSocketConnector(None, max_message_size=256)
        await small.connect(url_of(server), timeout=5 * UNIT)
        with pytest.raises(wsrpc.RemoteError) as info:
            await cast(Any, small.get_driver()).huge_error()
        # Cut to fit the caller's limit rather than killing the connection.
        assert info.value.name == "ValueError"
        assert info.value.message.endswith("…")
        assert await cast(Any, small.get_driver()).wraps_coroutine(1) == 2
        await small.close()


async def test_get_driver_refuses_a_non_positive_timeout() -> None:
    async with connected(Calculator()) as (_, connector):
        for bad in (0, -1.0):
            with pytest.raises(ValueError):
                connector.get_driver(timeout=bad)


async def test_callback_chains_do_not_deadlock_at_a_limit_of_one() -> None:
    # client -> server -> client -> server ... 6 hops, one slot on each side:
    # each callback is a nested call, let past the slot its ancestor holds.
    class Side:
        def __init__(self) -> None:
            self.driver: Any = None

        async def nest(self, depth: int) -> int:
            if depth == 0:
                return 0
            result: int = await self.driver.nest(depth - 1)
            return result + 1

    server_side = Side()

    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(server_side)
        server_side.driver = acceptor.get_driver()

    async with running_server(handler, max_concurrent_calls=1) as server:
        client_side = Side()
        connector: wsrpc.WebSocketConnector[None, Side, Any] = wsrpc.WebSocketConnector(
            None, client_side, max_concurrent_calls=1
        )
        await connector.connect(url_of(server), timeout=5 * UNIT)
        client_side.driver = connector.get_driver()
        async with asyncio.timeout(5 * UNIT):
            assert await client_side.driver.nest(6) == 6
            # Several chains at once: the top-level calls queue for the one
            # slot, their callbacks never do.
            assert await asyncio.gather(*(client_side.driver.nest(5) for _ in range(4))) == [5] * 4
        await connector.close()


async def test_reads_are_small_enough_to_stay_off_mmap() -> None:
    # asyncio reads with recv(256 KiB), above glibc's mmap threshold: wsrpc's
    # connections read 64 KiB at a time (see wsrpc/_transports/websockets.py), and a
    # large message still arrives whole over several reads. (websockets only:
    # picows reads into buffers of its own.)
    async with running_server(accept_with(Calculator()), transport="websockets") as server:
        connector: Connector = wsrpc.WebSocketConnector(None, transport="websockets")
        await connector.connect(url_of(server), timeout=5 * UNIT)
        (acceptor,) = server.acceptors.values()
        assert connector._communicator is not None
        for channel in (acceptor._channel, connector._communicator._channel):
            assert isinstance(channel, WebsocketsChannel)
            assert channel.ws.transport.max_size == 64 * 1024  # type: ignore[attr-defined]
        calc = connector.get_driver()
        payload = bytes(range(256)) * 2048  # 512 KiB
        assert await calc.echo(payload) == payload
        await connector.close()


# -- large messages: the fast transport hands them over without a copy ----------------


SIZES_AROUND_THE_VIEW = [16 * 1024 - 64, 16 * 1024 + 64, 200_000, 1 << 20]
"""Values on either side of 16 KiB, where picows' channel passes a view (see
wsrpc/_transports/picows.py, _VIEW_ABOVE), and a large one."""


async def test_large_values_both_ways_and_a_large_header() -> None:
    header = "h" * 100_000
    early = b"e" * 100_000
    seen: list[Any] = []
    handled = asyncio.Event()

    async def handler(acceptor: AnyAcceptor) -> None:
        seen.append(acceptor.header)
        await acceptor.accept(Calculator())
        # Sent right behind the verdict: the client holds it until it is open.
        seen.append(await acceptor.get_driver().echo(early))
        handled.set()

    recorder = Calculator()
    async with running_server(handler, max_message_size=4 << 20) as server:
        connector = wsrpc.WebSocketConnector[str, Calculator, CalculatorRemote](
            header, recorder, max_message_size=4 << 20
        )
        await connector.connect(url_of(server), timeout=5 * UNIT)
        try:
            calc = connector.get_driver()
            for size in SIZES_AROUND_THE_VIEW:
                value = bytes(range(256)) * (size // 256) + b"!" * (size % 256)
                assert await calc.echo(value) == value
                assert await calc.echo([value, {"k": value}]) == [value, {"k": value}]
                assert await calc.big(size) == b"x" * size
            async with asyncio.timeout(5 * UNIT):
                await handled.wait()
        finally:
            await connector.close()
    assert seen == [header, early]
