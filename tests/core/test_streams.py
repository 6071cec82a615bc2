"""
Streams without sockets: the wire form, the credit rules of the protocol
core, and the communicator's flow control on an in-memory channel pair.

The rules under test (``docs/protocol.md#streams``): a stream starts with a
STREAM message carrying the consumer's credit; the producer sends at most as
many items as it was granted (ITEM, or ITEMS to a peer announcing streams 2)
and pauses its generator otherwise; the consumer grants more as its user
takes items, up to a window sized by the items' bytes; an item beyond the
credit is a protocol violation (1002); a producer holds at most
``MAX_CREDIT`` whatever it is granted; CANCEL closes the generator; RETURN
ends the stream and an ERROR ends it with an error after the items sent.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from wsrpc import _communicator
from wsrpc import driver as driver_module
from wsrpc._communicator import (
    MAX_CREDIT,
    STREAM_MAX_WINDOW,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
)
from wsrpc._transports.base import ChannelClosed
from wsrpc.codecs import MsgpackCodec
from wsrpc.driver import Drivers
from wsrpc.exceptions import (
    ConnectionClosedError,
    EncodeError,
    ProtocolError,
    RemoteError,
    StateError,
)
from wsrpc.messages import Accept, Call, Cancel, CloseCode, Credit, Header, Item, Items, Return
from wsrpc.protocol import RpcProtocol, Side
from wsrpc.tgrid import TgridCodec

from .memory import channel_pair, communicator, open_protocols, settle


class Ticker:
    """A provider whose generator counts what it produced and sees its end."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()
        self.calls: list[str] = []
        self.go = asyncio.Event()

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

    async def blobs(self, size: int) -> AsyncIterator[bytes]:
        blob = b"x" * size
        try:
            while True:
                self.produced += 1
                yield blob
        finally:
            self.closed.set()

    async def waiting(self) -> AsyncIterator[int]:
        yield 1
        yield 2
        await self.go.wait()  # the items before this wait must not wait with it
        yield 3

    def add(self, a: int, b: int) -> int:
        return a + b


def recorded_sends(end: Any) -> list[bytes]:
    """The frames ``end`` (a memory channel) sends from now on, as it sends them."""
    sent: list[bytes] = []
    send = end.send

    def recording(data: bytes | str) -> None:
        assert isinstance(data, bytes)
        sent.append(data)
        send(data)

    end.send = recording
    return sent


def frames(raw: list[Any]) -> list[list[Any]]:
    return [msgpack.unpackb(frame) for frame in raw]


def items_sent(raw: list[Any]) -> list[Any]:
    """The stream items in these frames, ITEM (7) and ITEMS (9) alike, in order."""
    items: list[Any] = []
    for message in frames(raw):
        if message[0] == 7:
            items.append(message[2])
        elif message[0] == 9:
            items.extend(message[2])
    return items


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
        (Items(1, [42, "a"]), "93 09 01 92 2a a1 61"),
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
    assert codec.decode(msgpack.packb([0, 1, None, {"calls": 1}])) == Header(None, 1, None, 0)
    # wsrpc announces streams 2 (ITEMS); what a peer announces is read as is.
    header = RpcProtocol(Side.CLIENT, codec, max_calls=8, max_size=None).send_header(None)
    assert isinstance(header, bytes) and msgpack.unpackb(header)[3]["streams"] == 2
    assert [peer.peer_streams for peer in open_protocols()] == [2, 2]
    assert codec.decode(msgpack.packb([1, {"streams": 1}])) == Accept(None, None, 1)


def test_items_frames_are_assembled_from_values_packed_once() -> None:
    codec = MsgpackCodec()
    values = [1, "two", b"3", [4.5, None], {"six": True}]
    packed = [codec.encode_value(value) for value in values]
    assert codec.encode_items(7, packed) == codec.encode(Items(7, values))
    assert codec.encode_items(7, packed[:1]) == codec.encode(Item(7, 1))
    many = list(range(1000))  # an array16 header
    assert codec.decode(codec.encode_items(2**40, [codec.encode_value(v) for v in many])) == Items(
        2**40, many
    )


@pytest.mark.parametrize("depth", [998, 1000, 1020, 1021, 1022, 1023, 1024])
def test_an_item_too_deep_for_an_items_frame_is_refused_when_packed(depth: int) -> None:
    # One array deeper in [9, uid, [value]] than in [7, uid, value]: a value
    # that the consumer would refuse (closing the connection) never leaves.
    codec = MsgpackCodec()
    value: Any = 1
    for _ in range(depth):
        value = [value]
    try:
        packed = codec.encode_value(value)
    except EncodeError:
        return
    # (decoded, not compared: comparing such lists overflows Python's stack)
    assert type(codec.decode(codec.encode_items(1, [packed, packed]))) is Items


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
        [9, 1, []],  # a batch of nothing
        [9, 1, 5],
        [9, 0, [1]],
        [9, 1, [1], 2],
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


def test_items_count_one_each_against_the_credit() -> None:
    client, server = open_protocols()
    assert server.batches_items
    uid, frame = client.send_call("ticks", [], None, credit=3)
    server.receive(frame)
    pack = server.pack_item
    assert client.receive(server.send_items(uid, [pack("a"), pack("b")])) == Items(uid, ["a", "b"])
    assert client.credit[uid] == 1
    with pytest.raises(ProtocolError) as caught:
        client.receive(server.send_items(uid, [pack("c"), pack("d")]))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR
    assert "beyond its credit" in caught.value.reason


def test_items_to_a_peer_that_announced_streams_1_are_a_protocol_violation() -> None:
    client, server = older_protocols()
    assert not server.batches_items  # it produces for the older client
    uid, frame = client.send_call("ticks", [], None, credit=4)
    server.receive(frame)
    with pytest.raises(ProtocolError) as caught:
        client.receive(MsgpackCodec().encode(Items(uid, [1, 2])))
    assert caught.value.code == CloseCode.PROTOCOL_ERROR


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
    assert client.receive(server.send_items(uid, [b"\x01", b"\x02"])) is None


def older_protocols() -> tuple[RpcProtocol, RpcProtocol]:
    """A client announcing streams 1 (a wsrpc before ITEMS) and a server, both OPEN."""
    codec = MsgpackCodec()
    client = RpcProtocol(Side.CLIENT, codec, max_calls=128, max_size=2**20)
    client.streams = 1
    server = RpcProtocol(Side.SERVER, codec, max_calls=128, max_size=2**20)
    server.receive_header(client.send_header(None))
    client.receive_accept(server.send_accept())
    return client, server


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
    # Taking half a window grants more: small items widen the window to
    # its largest, and no more is made than that.
    for expected in range(1, STREAM_WINDOW // 2 + 1):
        assert await stream.__anext__() == expected
    await settle()
    taken = STREAM_WINDOW // 2 + 1
    assert ticker.produced == taken + STREAM_MAX_WINDOW - 1
    await settle()
    assert ticker.produced == taken + STREAM_MAX_WINDOW - 1
    await stream.aclose()
    await asyncio.wait_for(ticker.closed.wait(), 5)  # the generator's finally ran


@pytest.mark.parametrize(
    ("size", "window"),
    [
        (16, STREAM_MAX_WINDOW),
        (16_384, STREAM_WINDOW_BYTES // (16_384 + 24)),  # a frame's bytes: the item's and ~10
        (131_072, STREAM_WINDOW),
    ],
)
async def test_the_window_holds_a_mebibyte_of_items_within_16_and_256(
    size: int, window: int
) -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    stream = client.stream("blobs", (size,), {}, None)
    for _ in range(STREAM_WINDOW):  # past the first grant
        await stream.__anext__()
    await settle()
    inbox = client._inboxes[1]
    assert abs(inbox.window - window) <= 1
    # The producer made what the window allows, and no more.
    assert ticker.produced == STREAM_WINDOW + len(inbox.items)
    assert ticker.produced - STREAM_WINDOW <= inbox.window
    await stream.aclose()
    await asyncio.wait_for(ticker.closed.wait(), 5)


async def test_a_fast_generator_batches_and_a_waiting_one_sends_what_it_made() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    server_end_frames = recorded_sends(server_end)
    ticker = Ticker()
    communicator(server_end, server_protocol, ticker)
    client, _ = communicator(client_end, client_protocol, None)
    assert [item async for item in client.stream("ticks", (100,), {}, None)] == list(range(100))
    kinds = [message[0] for message in frames(server_end_frames)]
    assert items_sent(server_end_frames) == list(range(100))
    assert kinds.count(9) < 10 and 7 not in kinds  # a few ITEMS frames, no ITEM
    # A generator about to wait sends the items it made first.
    stream = client.stream("waiting", (), {}, None)
    assert [await stream.__anext__(), await stream.__anext__()] == [1, 2]
    ticker.go.set()
    assert [item async for item in stream] == [3]


async def test_a_generator_slow_without_waiting_sends_its_items_within_a_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock that moves 1 ms each time it is read: every item has waited
    # the batch's delay by the time the next one is made.
    ticks = iter(range(10**6))
    monkeypatch.setattr(_communicator, "_clock", lambda: next(ticks) / 1000)
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    received = recorded_sends(server_end)
    communicator(server_end, server_protocol, Ticker())
    client, _ = communicator(client_end, client_protocol, None)
    assert [item async for item in client.stream("ticks", (10,), {}, None)] == list(range(10))
    batches = [len(message[2]) for message in frames(received) if message[0] == 9]
    assert batches == [2] * 5  # each batch sent at its second item


async def test_a_connection_closing_as_a_waiting_generator_sends_its_items_ends_it() -> None:
    class Waiting:
        def __init__(self) -> None:
            self.started = False
            self.ended: list[str] = []

        async def items(self) -> AsyncIterator[int]:
            try:
                yield 1
                self.started = True
                await asyncio.Event().wait()  # sends 1 first: the socket is gone
                yield 2
            except asyncio.CancelledError:
                self.ended.append("cancelled")
                raise
            finally:
                self.ended.append("finally")

    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    provider = Waiting()
    server, _ = communicator(server_end, server_protocol, provider)
    client_end.start(lambda frame: None, lambda: None)

    def closed(data: bytes | str) -> None:
        raise ChannelClosed(1006, "")

    server_end.send = closed  # type: ignore[method-assign]
    _, frame = client_protocol.send_call("items", [], None, credit=16)
    client_end.send(frame)
    await settle()
    # The step is cancelled where it waits, so the generator's finally runs
    # and the stream ends quietly (the channel reports the close).
    assert provider.started and provider.ended == ["cancelled", "finally"]
    assert server.running_calls() == [] and server._producers == {}


async def test_a_producer_sends_one_item_per_frame_to_a_peer_announcing_streams_1() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = older_protocols()
    received = recorded_sends(server_end)
    communicator(server_end, server_protocol, Ticker())
    client, _ = communicator(client_end, client_protocol, None)
    assert [item async for item in client.stream("ticks", (40,), {}, None)] == list(range(40))
    kinds = [message[0] for message in frames(received)]
    assert kinds.count(7) == 40 and 9 not in kinds


async def test_items_before_an_item_too_large_arrive_then_encode_error() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    server_protocol.peer_max_size = 4096  # as a consumer with max_message_size=4096

    class Growing:
        async def items(self) -> AsyncIterator[bytes]:
            for size in (10, 100, 1000, 5000, 10):
                yield b"x" * size

    communicator(server_end, server_protocol, Growing())
    client, _ = communicator(client_end, client_protocol, None)
    sizes = []
    with pytest.raises(RemoteError) as caught:
        async for item in client.stream("items", (), {}, None):
            sizes.append(len(item))
    assert sizes == [10, 100, 1000]
    assert caught.value.name == "EncodeError"


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
    assert len(items_sent(received)) == MAX_CREDIT
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


def test_a_call_neither_awaited_nor_iterated_is_reported_in_debug_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_module, "_call_type", driver_module._ReportedCall)
    driver = _driver_calling(_answer)
    with pytest.warns(RuntimeWarning, match="wsrpc call 'add' was never awaited"):
        driver.add(1, 2)
        gc.collect()


async def test_a_call_awaited_iterated_or_closed_is_not_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(driver_module, "_call_type", driver_module._ReportedCall)

    async def items() -> AsyncIterator[int]:
        yield 1

    driver = _driver_calling(_answer, lambda *_: items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await driver.add(1) == ("add", [1])
        assert [item async for item in driver.ticks()] == [1]
        driver.sub(2).close()
        gc.collect()


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ([], {}, "RemoteCall"),
        (["-X", "dev"], {}, "_ReportedCall"),
        ([], {"PYTHONASYNCIODEBUG": "1"}, "_ReportedCall"),
    ],
)
def test_debug_mode_is_what_asyncio_calls_it(
    flags: list[str], env: dict[str, str], expected: str
) -> None:
    unset = ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, *flags, "-c", "import wsrpc.driver as d; print(d._call_type.__name__)"],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == expected


async def test_a_call_is_sent_once() -> None:
    made: list[str] = []

    async def answer(path: str, args: Any, kwargs: Any, timeout: Any) -> Any:
        made.append(path)
        return len(made)

    async def items() -> AsyncIterator[int]:
        yield 1

    def stream(path: str, args: Any, kwargs: Any, timeout: Any) -> AsyncIterator[int]:
        made.append(path)
        return items()

    driver = _driver_calling(answer, stream)
    call = driver.add(1)
    assert await call == 1
    with pytest.raises(RuntimeError, match="already awaited"):
        await call
    with pytest.raises(RuntimeError, match="was awaited"):
        call.__aiter__()
    ticks = driver.ticks()
    assert [item async for item in ticks] == [1]
    with pytest.raises(RuntimeError, match="already awaited"):
        await ticks
    assert made == ["add", "ticks"]


async def test_a_call_thrown_into_or_closed_before_its_first_step_sends_nothing() -> None:
    made: list[str] = []

    async def answer(path: str, args: Any, kwargs: Any, timeout: Any) -> Any:
        made.append(path)
        return 0

    driver = _driver_calling(answer)
    thrown = driver.add(1)
    with pytest.raises(ValueError, match="thrown"):
        thrown.throw(ValueError("thrown"))
    with pytest.raises(StopIteration):
        thrown.send(None)  # finished: nothing left to run
    closed = driver.add(2)
    closed.close()
    with pytest.raises(RuntimeError, match="already awaited"):
        await closed
    stepped = driver.add(3)
    with pytest.raises(StopIteration) as returned:
        stepped.send(None)  # the coroutine protocol: one step runs the whole call here
    assert returned.value.value == 0
    assert made == ["add"]
