"""
Streams without sockets: the wire form, the credit rules of the protocol
core, and the communicator's flow control on an in-memory channel pair.

The rules under test (``docs/protocol.md#streams``): a stream starts with a
STREAM message carrying the consumer's credit; the producer sends at most as
many ITEMs as it was granted and pauses its generator otherwise; the
consumer grants more as its user takes items; an ITEM beyond the credit is a
protocol violation (1002); a producer holds at most ``MAX_CREDIT`` whatever
it is granted; CANCEL closes the generator; RETURN ends the stream and an
ERROR ends it with an error after the items sent.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from wsrpc._communicator import MAX_CREDIT, STREAM_WINDOW
from wsrpc.codecs import MsgpackCodec
from wsrpc.driver import Drivers
from wsrpc.exceptions import ConnectionClosedError, ProtocolError, RemoteError, StateError
from wsrpc.messages import Accept, Call, Cancel, CloseCode, Credit, Header, Item, Return
from wsrpc.protocol import RpcProtocol, Side
from wsrpc.tgrid import TgridCodec

from .memory import channel_pair, communicator, open_protocols, settle


class Ticker:
    """A provider whose generator counts what it produced and sees its end."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()
        self.calls: list[str] = []

    async def ticks(self, n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                self.produced += 1
                yield i
        finally:
            self.closed.set()

    async def forever(self) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed.set()

    async def failing(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise ValueError("out of ticks")

    async def unsendable(self) -> AsyncIterator[object]:
        yield 1
        yield {1, 2}  # a set does not travel

    def add(self, a: int, b: int) -> int:
        return a + b


def frames(raw: list[Any]) -> list[list[Any]]:
    return [msgpack.unpackb(frame) for frame in raw]


# -- the wire form -------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "hex_frame"),
    [
        (Call(1, "ticks", [3], None, None, 16), "96 06 01 a5 74 69 63 6b 73 91 03 c0 10"),
        (
            Call(2, "ticks", [3], {"x": 1}, 7, 16),
            "97 06 02 a5 74 69 63 6b 73 91 03 81 a1 78 01 10 07",
        ),
        (Item(1, 42), "93 07 01 2a"),
        (Credit(1, 8), "93 08 01 08"),
        (Return(1, None), "93 03 01 c0"),
    ],
)
def test_stream_messages_round_trip_as_documented(message: Any, hex_frame: str) -> None:
    codec = MsgpackCodec()
    frame = codec.encode(message)
    assert frame.hex(" ") == hex_frame  # the bytes docs/protocol.md shows
    assert codec.decode(frame) == message


def test_streams_are_announced_in_the_limits_map() -> None:
    codec = MsgpackCodec()
    frame = codec.encode(Accept(128, 2**20, True))
    assert msgpack.unpackb(frame) == [1, {"calls": 128, "size": 2**20, "streams": 1}]
    assert codec.decode(frame) == Accept(128, 2**20, True)
    # A peer that does not announce them (an older wsrpc) takes no streams.
    assert codec.decode(msgpack.packb([0, 1, None, {"calls": 1}])) == Header(None, 1, None, False)


@pytest.mark.parametrize(
    "obj",
    [
        [6, 1, "ticks", [], None, 0],  # no credit
        [6, 1, "ticks", [], None, -1],
        [6, 1, "ticks", [], None, "16"],
        [6, 1, "ticks", [], None],  # too short
        [8, 1, 0],  # a grant of nothing
        [8, 1, True],
        [7, 0, 1],  # a bad id
        [7, 1],
        [1, {"streams": 0}],
    ],
    ids=repr,
)
def test_malformed_stream_messages_are_protocol_errors(obj: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        MsgpackCodec().decode(msgpack.packb(obj))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR


# -- the protocol core -----------------------------------------------------------


def test_items_beyond_the_credit_are_a_protocol_violation() -> None:
    client, server = open_protocols()
    uid, frame = client.send_call("ticks", [], None, credit=2)
    assert server.receive(frame) == Call(uid, "ticks", [], None, None, 2)
    assert client.receive(server.send_item(uid, "a")) == Item(uid, "a")
    assert client.receive(server.send_item(uid, "b")) == Item(uid, "b")
    with pytest.raises(ProtocolError) as caught:
        client.receive(server.send_item(uid, "c"))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR
    assert "beyond its credit" in caught.value.reason


def test_a_grant_extends_the_credit_and_the_end_forgets_it() -> None:
    client, server = open_protocols()
    uid, frame = client.send_call("ticks", [], None, credit=1)
    server.receive(frame)
    client.receive(server.send_item(uid, 1))
    grant = client.send_credit(uid, 1)
    assert grant is not None and server.receive(grant) == Credit(uid, 1)
    client.receive(server.send_item(uid, 2))  # within the new credit
    assert client.receive(server.send_return(uid, None)) == Return(uid, None)
    assert client.credit == {} and client.outgoing == set()
    assert client.send_credit(uid, 1) is None  # nothing to grant to any more
    assert client.receive(server.send_item(uid, 3)) is None  # a late item is dropped


def test_items_of_a_cancelled_stream_are_dropped() -> None:
    client, server = open_protocols()
    uid, _ = client.send_call("ticks", [], None, credit=4)
    assert client.send_cancel(uid) is not None
    assert client.receive(server.send_item(uid, 1)) is None


def test_a_stream_to_a_peer_that_does_not_announce_streams_is_refused_at_once() -> None:
    codec = MsgpackCodec()
    client = RpcProtocol(Side.CLIENT, codec, max_calls=8, max_size=None)
    server = RpcProtocol(Side.SERVER, codec, max_calls=8, max_size=None)
    server.streams = False  # as an older wsrpc: no "streams" in its ACCEPT
    server.receive_header(client.send_header(None))
    client.receive_accept(server.send_accept())
    assert not client.peer_streams and server.peer_streams
    with pytest.raises(StateError, match="the peer does not support streams"):
        client.send_call("ticks", [], None, credit=16)
    assert client.outgoing == set()  # no id spent


def test_a_stream_call_to_a_peer_that_did_not_announce_streams_closes_with_1002() -> None:
    _, server = open_protocols()
    server.streams = False
    frame = MsgpackCodec().encode(Call(1, "ticks", [], None, None, 16))
    with pytest.raises(ProtocolError) as caught:
        server.receive(frame)
    assert caught.value.code == CloseCode.PROTOCOL_ERROR


def test_the_tgrid_codec_has_no_streams() -> None:
    codec = TgridCodec()
    client = RpcProtocol(Side.CLIENT, codec, max_calls=8, max_size=None)
    server = RpcProtocol(Side.SERVER, codec, max_calls=8, max_size=None)
    server.receive_header(client.send_header(None))
    client.receive_accept(server.send_accept())
    with pytest.raises(StateError, match="the tgrid protocol has no streams"):
        client.send_call("ticks", [], None, credit=16)


# -- the communicator --------------------------------------------------------------


async def test_a_consumer_that_stops_reading_pauses_the_generator() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    stream = client.stream("forever", (), {}, None)
    assert await stream.__anext__() == 0
    await settle()
    # One item taken of a window of 16: the generator made the 16 it was
    # granted and waits, paused at its yield, for more credit.
    assert ticker.produced == STREAM_WINDOW
    assert len(client._inboxes[1].items) == STREAM_WINDOW - 1
    # Taking half a window grants that much again, and no more is made.
    for expected in range(1, STREAM_WINDOW // 2 + 1):
        assert await stream.__anext__() == expected
    await settle()
    assert ticker.produced == STREAM_WINDOW + STREAM_WINDOW // 2
    await stream.aclose()
    await asyncio.wait_for(ticker.closed.wait(), 5)  # the generator's finally ran


async def test_all_items_then_the_end() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    items = [item async for item in client.stream("ticks", (100,), {}, None)]
    assert items == list(range(100))
    await settle()
    assert client._slots == 128 and client._inboxes == {}  # the slot is back
    assert client_protocol.credit == {} and server_protocol.incoming == set()


async def test_an_error_after_items_comes_after_the_items() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    communicator(server_end, server_protocol, Ticker())
    client, _ = communicator(client_end, client_protocol, None)
    items = []
    with pytest.raises(RemoteError) as caught:
        async for item in client.stream("failing", (3,), {}, None):
            items.append(item)
    assert items == [0, 1, 2]
    assert (caught.value.name, caught.value.message) == ("ValueError", "out of ticks")


async def test_an_item_that_cannot_travel_ends_the_stream_with_encode_error() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    communicator(server_end, server_protocol, Ticker())
    client, _ = communicator(client_end, client_protocol, None)
    stream = client.stream("unsendable", (), {}, None)
    assert await stream.__anext__() == 1
    with pytest.raises(RemoteError) as caught:
        await stream.__anext__()
    assert caught.value.name == "EncodeError"


async def test_a_hostile_consumer_granting_without_bound_is_capped() -> None:
    client_end, server_end = channel_pair()
    client, server_protocol = open_protocols()
    ticker = Ticker()
    server, _ = communicator(server_end, server_protocol, ticker)
    received: list[Any] = []
    client_end.start(received.append, lambda: None)
    uid, frame = client.send_call("forever", [], None, credit=16)
    client_end.send(frame)
    client_end.send(MsgpackCodec().encode(Credit(uid, 2**62)))
    await settle()
    await settle()
    # The producer held at most MAX_CREDIT, whatever it was granted.
    assert ticker.produced == MAX_CREDIT
    assert sum(1 for message in frames(received) if message[0] == 7) == MAX_CREDIT
    client_end.send(MsgpackCodec().encode(Cancel(uid)))
    await asyncio.wait_for(ticker.closed.wait(), 5)
    await settle()
    assert server.running_calls() == [] and server._producers == {}


async def test_a_producer_sending_beyond_the_credit_is_closed_with_1002() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server = open_protocols()
    client, client_closed = communicator(client_end, client_protocol, None)
    server_end.start(lambda frame: None, lambda: None)
    stream = client.stream("ticks", (), {}, None)
    first = asyncio.ensure_future(stream.__anext__())
    await settle()
    uid = 1
    for i in range(STREAM_WINDOW + 1):  # one more than granted
        server_end.send(server.send_item(uid, i))
    await asyncio.wait_for(client_closed.done.wait(), 5)
    assert client_closed.infos[0].code == CloseCode.PROTOCOL_ERROR
    assert await first == 0
    with pytest.raises(ConnectionClosedError):
        async for _ in stream:
            pass


async def test_plain_calls_and_streams_must_match_the_method() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    with pytest.raises(RemoteError) as caught:
        await client.call("ticks", (3,), {}, None)
    assert caught.value.name == "StreamRequired"
    with pytest.raises(RemoteError) as caught:
        async for _ in client.stream("add", (1, 2), {}, None):
            pass
    assert caught.value.name == "NotAStream"
    assert ticker.produced == 0  # the generator never ran
    assert await client.call("add", (1, 2), {}, None) == 3


async def test_streams_take_slots_like_calls() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols(server_max_calls=1)
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    stream = client.stream("forever", (), {}, None)
    assert await stream.__anext__() == 0
    assert client._slots == 0
    second = asyncio.ensure_future(client.call("add", (1, 2), {}, None))
    await settle()
    assert not second.done()  # waits for the stream's slot
    await stream.aclose()
    assert await asyncio.wait_for(second, 5) == 3


# -- the driver's call object ------------------------------------------------------


def _driver_calling(call: Any, stream: Any = None) -> Any:
    """A root driver whose calls go through these functions."""
    drivers = Drivers("not open")
    drivers.open(call, stream)
    return drivers.get(None)


async def _answer(path: str, args: Any, kwargs: Any, timeout: Any) -> Any:
    return (path, list(args))


async def test_a_call_is_awaitable_and_a_coroutine_for_tasks() -> None:
    driver = _driver_calling(_answer)
    assert await driver.add(1, 2) == ("add", [1, 2])
    task = asyncio.create_task(driver.add(3))  # create_task() wants a coroutine
    assert await task == ("add", [3])
    assert list(await asyncio.gather(driver.a(), driver.b(1))) == [("a", []), ("b", [1])]


async def test_iterating_a_call_streams_and_awaits_nothing() -> None:
    opened: list[Any] = []

    async def items() -> AsyncIterator[int]:
        yield 1
        yield 2

    def stream(path: str, args: Any, kwargs: Any, timeout: Any) -> AsyncIterator[int]:
        opened.append((path, args))
        return items()

    driver = _driver_calling(_answer, stream)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never awaited" for the unused coroutine
        assert [item async for item in driver.ticks(3)] == [1, 2]
        gc.collect()
    assert opened == [("ticks", (3,))]


def test_a_call_neither_awaited_nor_iterated_is_reported() -> None:
    driver = _driver_calling(_answer)
    with pytest.warns(RuntimeWarning, match="was never awaited"):
        driver.add(1, 2)
        gc.collect()
