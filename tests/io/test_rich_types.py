"""
Rich types through real connections with ``validate=True`` on both sides
(run on both transports): each arrives as its annotated type, in both
directions, in calls, results and stream items, through the async and the
blocking connector and through ``server.get_driver(connection_id)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import threading
import typing
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from decimal import Decimal
from typing import Any, Protocol, TypedDict, TypeVar

import msgpack
import pytest

import wsrpc
import wsrpc.sync

from ..conftest import UNIT, url_of

T = TypeVar("T")

UTC = datetime.UTC
PARIS = datetime.timezone(datetime.timedelta(hours=1))


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Rank(enum.IntEnum):
    FIRST = 1
    SECOND = 2


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    placed: datetime.datetime
    price: Decimal
    level: Level
    pair: tuple[int, str]


class Totals(TypedDict):
    day: datetime.date
    by_hour: dict[int, Decimal]


ORDER = Order(
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    datetime.datetime(2026, 12, 3, 9, 30, 0, 250_000, tzinfo=PARIS),
    Decimal("19.99"),
    Level.HIGH,
    (7, "seven"),
)

Everything = tuple[
    datetime.datetime,
    datetime.datetime,
    datetime.date,
    uuid.UUID,
    Decimal,
    Level,
    Rank,
    tuple[int, str],
    dict[int, str],
    dict[datetime.date, Level],
]

EVERYTHING: Everything = (
    datetime.datetime(2026, 12, 3, 10, 0, 0, 1, tzinfo=PARIS),
    datetime.datetime(2026, 12, 3, 10, 0),  # naive: travels as ISO text
    datetime.date(2026, 12, 3),
    uuid.UUID(int=42),
    Decimal("-0.000001"),
    Level.LOW,
    Rank.SECOND,
    (1, "one"),
    {1: "one", -2: "minus two"},
    {datetime.date(2026, 2, 1): Level.LOW},
)


def assert_everything(value: Everything) -> None:
    """``value`` is EVERYTHING, each part of its exact annotated type."""
    assert value == EVERYTHING
    kinds = [typing.get_origin(tp) or tp for tp in typing.get_args(Everything)]
    assert [type(part) for part in value] == kinds
    assert value[0].tzinfo is UTC  # an aware datetime arrives in UTC...
    assert value[1].tzinfo is None  # ...a naive one stays naive
    assert [type(k) for k in value[8]] == [int, int]
    assert [type(k) for k in value[9]] == [datetime.date]


def assert_order(value: Order) -> None:
    assert type(value) is Order
    assert value == ORDER
    assert type(value.id) is uuid.UUID and type(value.price) is Decimal
    assert type(value.level) is Level and type(value.pair) is tuple


# -- the two sides ------------------------------------------------------------


class ServerApi(Protocol):
    """The server's provider, as the client calls it."""

    async def place(self, order: Order) -> Order: ...
    async def totals(self, day: datetime.date, by_hour: dict[int, Decimal]) -> Totals: ...
    async def everything(self, value: Everything) -> Everything: ...
    async def spread(self, *values: uuid.UUID, **named: Level) -> list[str]: ...
    def orders(self, n: int) -> AsyncIterator[Order]: ...
    async def ask_client(self) -> Everything: ...


class ClientApi(Protocol):
    """The client's provider, as the server calls it."""

    async def everything(self, value: Everything) -> Everything: ...
    async def rank(self, order: Order) -> Rank: ...
    def days(self, start: datetime.date, n: int) -> AsyncIterator[datetime.date]: ...


class Server:
    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[Any, Any, ClientApi]) -> None:
        self._acceptor = acceptor

    def place(self, order: Order) -> Order:
        assert_order(order)  # built from the wire's map before the method runs
        return order

    def totals(self, day: datetime.date, by_hour: dict[int, Decimal]) -> Totals:
        assert type(day) is datetime.date
        assert all(type(k) is int and type(v) is Decimal for k, v in by_hour.items())
        return {"day": day, "by_hour": by_hour}

    def everything(self, value: Everything) -> Everything:
        assert_everything(value)
        return value

    def spread(self, *values: uuid.UUID, **named: Level) -> list[str]:
        assert all(type(v) is uuid.UUID for v in values)
        assert all(type(v) is Level for v in named.values())
        return [str(v) for v in values] + [f"{k}={v.value}" for k, v in named.items()]

    async def orders(self, n: int) -> AsyncIterator[Order]:
        for _ in range(n):
            yield ORDER

    async def ask_client(self) -> Everything:
        client = self._acceptor.get_driver()
        value = await client.everything(EVERYTHING)
        assert_everything(value)  # converted on this (the calling) side
        assert await client.rank(ORDER) is Rank.FIRST
        days = [day async for day in client.days(datetime.date(2026, 12, 30), 3)]
        start = datetime.date(2026, 12, 30)
        assert days == [start, datetime.date(2026, 12, 31), datetime.date(2027, 1, 1)]
        assert all(type(day) is datetime.date for day in days)
        return value


class Client:
    def everything(self, value: Everything) -> Everything:
        assert_everything(value)
        return value

    def rank(self, order: Order) -> Rank:
        assert_order(order)
        return Rank.FIRST

    async def days(self, start: datetime.date, n: int) -> AsyncIterator[datetime.date]:
        for i in range(n):
            yield start + datetime.timedelta(days=i)


ServerT = wsrpc.WebSocketServer[None, Server, ClientApi]
ConnectorT = wsrpc.WebSocketConnector[None, Client, ServerApi]


async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Server, ClientApi]) -> None:
    await acceptor.accept(Server(acceptor))


async def serve(**options: Any) -> ServerT:
    server = wsrpc.WebSocketServer[None, Server, ClientApi](validate=True, **options)
    await server.open(0, handler)
    return server


async def connect(server: ServerT, **options: Any) -> ConnectorT:
    connector = wsrpc.WebSocketConnector[None, Client, ServerApi](
        None, Client(), validate=True, **options
    )
    await connector.connect(url_of(server), timeout=5 * UNIT)
    return connector


# -- the async connector ------------------------------------------------------


async def test_a_dataclass_goes_and_comes_back_as_itself() -> None:
    async with await serve() as server, await connect(server) as connector:
        assert_order(await connector.get_driver().place(ORDER))


async def test_every_rich_type_round_trips_from_the_client() -> None:
    async with await serve() as server, await connect(server) as connector:
        assert_everything(await connector.get_driver().everything(EVERYTHING))


async def test_every_rich_type_round_trips_from_the_server() -> None:
    async with await serve() as server, await connect(server) as connector:
        assert_everything(await connector.get_driver().ask_client())


async def test_a_typed_dict_with_int_keys_and_decimals() -> None:
    async with await serve() as server, await connect(server) as connector:
        totals = await connector.get_driver().totals(
            datetime.date(2026, 1, 31), {9: Decimal("1.10"), 17: Decimal("2")}
        )
    assert totals == {"day": datetime.date(2026, 1, 31), "by_hour": {9: Decimal("1.10"), 17: 2}}
    assert type(totals["day"]) is datetime.date
    assert [type(k) for k in totals["by_hour"]] == [int, int]


async def test_variadic_and_keyword_arguments_convert() -> None:
    async with await serve() as server, await connect(server) as connector:
        got = await connector.get_driver().spread(uuid.UUID(int=1), uuid.UUID(int=2), a=Level.LOW)
    assert got == [str(uuid.UUID(int=1)), str(uuid.UUID(int=2)), "a=low"]


async def test_stream_items_arrive_as_their_type() -> None:
    async with await serve() as server, await connect(server) as connector:
        orders = [order async for order in connector.get_driver().orders(3)]
    assert len(orders) == 3
    for order in orders:
        assert_order(order)


async def test_server_get_driver_by_id_converts() -> None:
    async with await serve() as server, await connect(server) as connector:
        (connection_id,) = server.acceptors
        client = server.get_driver(connection_id)
        assert_everything(await client.everything(EVERYTHING))
        assert await client.rank(ORDER) is Rank.FIRST
        assert connector.state is wsrpc.ConnectorState.OPEN


async def test_the_wire_forms_are_the_documented_ones() -> None:
    # What a client that does not convert (validate=False) receives: the
    # wire forms of docs/protocol.md, as plain data.
    async with await serve() as server:
        plain: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await plain.connect(url_of(server), timeout=5 * UNIT)
        async with plain:
            got = await plain.get_driver().place(
                {
                    "id": str(ORDER.id),
                    "placed": ORDER.placed,
                    "price": "19.99",
                    "level": "high",
                    "pair": [7, "seven"],
                }
            )
    assert got == {
        "id": "12345678-1234-5678-1234-567812345678",
        "placed": datetime.datetime(2026, 12, 3, 8, 30, 0, 250_000, tzinfo=UTC),
        "price": "19.99",
        "level": "high",
        "pair": [7, "seven"],
    }


async def test_a_wrong_wire_form_is_refused_naming_the_field() -> None:
    async with await serve() as server:
        plain: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await plain.connect(url_of(server), timeout=5 * UNIT)
        async with plain:
            bad = {"id": "not a uuid", "placed": 0, "price": "1", "level": "low", "pair": [1, "a"]}
            with pytest.raises(wsrpc.RemoteError) as info:
                await plain.get_driver().place(bad)
    assert info.value.name == "ValidationError"
    assert "argument 'order'" in info.value.message
    assert "$.id" in info.value.message


async def test_a_result_of_the_wrong_form_is_a_validation_error_for_the_caller() -> None:
    # A server that does not validate returns what its method returns.
    class Careless:
        def place(self, order: Any) -> Any:
            return {"id": "x"}

    async def careless(acceptor: wsrpc.WebSocketAcceptor[None, Careless, Any]) -> None:
        await acceptor.accept(Careless())

    server = wsrpc.WebSocketServer[None, Careless, Any]()
    await server.open(0, careless)
    async with server, await connect(server) as connector:  # type: ignore[arg-type]
        with pytest.raises(wsrpc.ValidationError, match=r"^result: .*`\$\.id`"):
            await connector.get_driver().place(ORDER)


async def test_an_argument_without_a_wire_form_fails_the_call_locally() -> None:
    async with await serve() as server, await connect(server) as connector:
        with pytest.raises(wsrpc.EncodeError, match="argument 'order'"):
            await connector.get_driver().place(object())  # type: ignore[arg-type]
        assert_order(await connector.get_driver().place(ORDER))  # still open


async def test_without_the_remote_type_nothing_is_converted() -> None:
    async with await serve() as server:
        untyped: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(
            None, validate=True
        )
        await untyped.connect(url_of(server), timeout=5 * UNIT)
        async with untyped:
            with pytest.raises(wsrpc.EncodeError):
                await untyped.get_driver().place(ORDER)
            day = await untyped.get_driver().totals(datetime.date(2026, 1, 1).isoformat(), {})
    assert day == {"day": "2026-01-01", "by_hour": {}}


def test_timestamps_are_msgpack_ext_minus_one() -> None:
    codec = wsrpc.MsgpackCodec()
    frame = codec.encode(wsrpc.messages.Return(1, ORDER.placed))
    value = msgpack.unpackb(frame, timestamp=0)[2]
    assert isinstance(value, msgpack.Timestamp)
    assert value.to_datetime() == ORDER.placed


# -- the blocking connector ---------------------------------------------------


class SyncServerApi(Protocol):
    """What the blocking connector sees of Server."""

    def place(self, order: Order) -> Order: ...
    def everything(self, value: Everything) -> Everything: ...
    def orders(self, n: int) -> Iterator[Order]: ...


class ServerThread:
    """The server on an event loop of its own, as a threaded program has it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(serve())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10 * UNIT)

    def stop(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10 * UNIT)
        assert not self.thread.is_alive()
        self.loop.close()


def test_the_blocking_connector_converts_calls_and_stream_items() -> None:
    served = ServerThread()
    try:
        connector = wsrpc.sync.WebSocketConnector[None, None, SyncServerApi](None, validate=True)
        connector.connect(url_of(served.server), timeout=5 * UNIT)
        with connector:
            driver = connector.get_driver()
            assert_order(driver.place(ORDER))
            assert_everything(driver.everything(EVERYTHING))
            orders = list(driver.orders(2))
        assert len(orders) == 2
        for order in orders:
            assert_order(order)
    finally:
        served.stop()
