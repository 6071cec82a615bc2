"""
Streams end to end, over real sockets (run on both transports): a provider
method written as an async generator streams its items to ``async for``,
from the server to the client and from the client to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pytest

import wsrpc
import wsrpc.sync
from wsrpc import _communicator
from wsrpc._communicator import STREAM_WINDOW

from ..conftest import UNIT, AnyAcceptor, accept_with, running_server, url_of


class Ticker:
    """A provider with streams; records what its generators did."""

    def __init__(self) -> None:
        self.produced = 0
        self.enough = asyncio.Event()
        self.enough_at = -1
        self.finished = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.events: list[str] = []
        self.two_finished = asyncio.Event()

    async def ticks(self, n: int, start: int = 0) -> AsyncIterator[int]:
        try:
            for i in range(start, start + n):
                self.produced += 1
                if self.produced == self.enough_at:
                    self.enough.set()
                yield i
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.events.append("finally")
            self.finished.set()
            if self.events.count("finally") == 2:
                self.two_finished.set()

    async def forever(self) -> AsyncIterator[int]:
        async for i in self.ticks(2**62):
            yield i

    async def slow(self) -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.Event().wait()  # never set
            yield "never"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        finally:
            self.finished.set()

    async def failing(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise KeyError("no more")

    def add(self, a: int, b: int) -> int:
        self.events.append("add")
        return a + b

    async def grower(self, small: int, large: int, size: int) -> AsyncIterator[int | bytes]:
        """Small items (the consumer's window grows), then large ones."""
        for i in range(small):
            yield i
        for i in range(large):
            self.produced += 1
            yield i.to_bytes(4, "big") * (size // 4)


class TickerRemote(Protocol):
    def ticks(self, n: int, start: int = 0) -> AsyncIterator[int]: ...

    def forever(self) -> AsyncIterator[int]: ...

    def slow(self) -> AsyncIterator[str]: ...

    def failing(self, n: int) -> AsyncIterator[int]: ...

    async def add(self, a: int, b: int) -> int: ...

    def grower(self, small: int, large: int, size: int) -> AsyncIterator[int | bytes]: ...


@contextlib.asynccontextmanager
async def ticker_client(
    ticker: Ticker, **options: Any
) -> AsyncIterator[tuple[TickerRemote, wsrpc.WebSocketConnector[None, None, TickerRemote]]]:
    server_options = {key[7:]: value for key, value in options.items() if key.startswith("server_")}
    client_options = {k: v for k, v in options.items() if not k.startswith("server_")}
    async with running_server(accept_with(ticker), **server_options) as server:
        connector = wsrpc.WebSocketConnector[None, None, TickerRemote](None, **client_options)
        await connector.connect(url_of(server), timeout=10 * UNIT)
        try:
            yield connector.get_driver(), connector
        finally:
            await connector.close()


async def test_a_server_stream_delivers_every_item_in_order() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, _):
        items = [item async for item in remote.ticks(1000, start=5)]
        assert items == list(range(5, 1005))
        await asyncio.wait_for(ticker.finished.wait(), 10 * UNIT)
        # The connection carries on, with calls and further streams.
        assert await remote.add(1, 2) == 3
        assert [item async for item in remote.ticks(0)] == []


async def test_leaving_the_loop_early_cancels_the_generator_on_the_server() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, _):
        async for item in remote.forever():
            if item == 3:
                break
        await asyncio.wait_for(ticker.finished.wait(), 10 * UNIT)
        assert ticker.events == ["finally"]
        assert await remote.add(1, 1) == 2


async def test_aclose_cancels_the_generator_on_the_server() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, _):
        call = remote.forever()
        stream = aiter(call)
        assert await anext(stream) == 0
        await call.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(ticker.finished.wait(), 10 * UNIT)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)


async def test_a_consumer_that_stops_reading_pauses_the_generator() -> None:
    ticker = Ticker()
    ticker.enough_at = STREAM_WINDOW
    async with ticker_client(ticker) as (remote, _):
        stream = aiter(remote.forever())
        assert await anext(stream) == 0
        await asyncio.wait_for(ticker.enough.wait(), 10 * UNIT)
        # A round trip on the same connection: everything sent before it is in.
        assert await remote.add(0, 0) == 0
        assert ticker.produced == STREAM_WINDOW  # paused at the window, not running ahead
        assert await anext(stream) == 1


async def test_items_held_for_the_user_are_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The window counts items: grown to 256 by small items, it would let a
    # producer then send 256 large ones. The consumer holds at most
    # STREAM_BUFFER_BYTES of them (plus one frame), then stops reading.
    cap, size = 1_048_576, 65_536
    monkeypatch.setattr(_communicator, "STREAM_BUFFER_BYTES", cap)
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, connector):
        comm = connector._communicator
        assert comm is not None
        full = asyncio.Event()  # set when the connection stops reading for it
        update_reading = _communicator.Communicator._update_reading

        def watched(self: _communicator.Communicator) -> None:
            update_reading(self)
            if self is comm and comm._streams_full:
                full.set()

        # On the class: a communicator has slots, no instance attributes.
        monkeypatch.setattr(_communicator.Communicator, "_update_reading", watched)
        stream = aiter(remote.grower(600, 200, size))
        for expected in range(600):  # the window grows on these
            assert await anext(stream) == expected
        # The large items arrive; nobody takes them.
        await asyncio.wait_for(full.wait(), 10 * UNIT)
        assert cap < comm._stream_bytes <= cap + 2 * size
        # Nothing was lost: every item comes, in order, once the user reads.
        rest = [item async for item in stream]
        assert all(isinstance(item, bytes) and len(item) == size for item in rest)
        assert [int.from_bytes(item[:4], "big") for item in rest if isinstance(item, bytes)] == (
            list(range(200))
        )
        assert comm._stream_bytes == 0 and not comm._streams_full


async def test_an_error_in_the_generator_reaches_the_consumer_after_the_items() -> None:
    async with ticker_client(Ticker()) as (remote, _):
        items = []
        with pytest.raises(wsrpc.RemoteError) as caught:
            async for item in remote.failing(3):
                items.append(item)
        assert items == [0, 1, 2]
        assert caught.value.name == "KeyError"


async def test_a_closed_connection_ends_the_iteration_with_connection_closed() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, connector):
        with pytest.raises(wsrpc.ConnectionClosedError):
            async for item in remote.slow():
                assert item == "first"
                await connector.close(4000, "enough")
        await asyncio.wait_for(ticker.finished.wait(), 10 * UNIT)


async def test_a_timeout_bounds_each_wait_for_an_item() -> None:
    ticker = Ticker()
    async with ticker_client(ticker, call_timeout=0.2 * UNIT) as (remote, _):
        # Many items, each in time: the timeout is per item, not for the stream.
        assert len([item async for item in remote.ticks(500)]) == 500
        items = []
        with pytest.raises(wsrpc.RpcTimeoutError):
            async for item in remote.slow():
                items.append(item)
        assert items == ["first"]
        await asyncio.wait_for(ticker.cancelled.wait(), 10 * UNIT)  # cancelled on the peer


async def test_cancelling_the_iterating_task_cancels_the_stream() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, _):
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in remote.slow():
                got_first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_first.wait(), 10 * UNIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(ticker.cancelled.wait(), 10 * UNIT)


async def test_awaiting_a_stream_and_iterating_a_call_are_clear_errors() -> None:
    ticker = Ticker()
    async with ticker_client(ticker) as (remote, _):
        with pytest.raises(wsrpc.RemoteError) as caught:
            await remote.ticks(3)  # type: ignore[misc]
        assert caught.value.name == "StreamRequired"
        assert "async for" in caught.value.message
        with pytest.raises(wsrpc.RemoteError) as caught:
            async for _ in remote.add(1, 2):  # type: ignore[attr-defined]
                pass
        assert caught.value.name == "NotAStream"
        assert ticker.produced == 0 and ticker.events == []  # neither method ran


async def test_streams_count_against_the_concurrency_limit() -> None:
    ticker = Ticker()
    async with ticker_client(ticker, server_max_concurrent_calls=1) as (remote, _):
        stream = aiter(remote.ticks(3))
        assert await anext(stream) == 0
        added = asyncio.create_task(remote.add(1, 2))  # waits for the stream's slot
        assert [item async for item in stream] == [1, 2]
        assert await asyncio.wait_for(added, 10 * UNIT) == 3
        assert ticker.events == ["finally", "add"]


async def test_a_stream_over_the_tgrid_codec_is_a_clear_error() -> None:
    async with running_server(accept_with(Ticker())) as server:
        connector = wsrpc.WebSocketConnector[None, None, TickerRemote](None, codec="tgrid")
        async with connector:
            await connector.connect(url_of(server), timeout=10 * UNIT)
            remote = connector.get_driver()
            with pytest.raises(wsrpc.StateError, match="tgrid protocol has no streams"):
                async for _ in remote.ticks(3):
                    pass
            assert await remote.add(2, 3) == 5


async def test_a_stream_before_connect_and_after_close_fails_as_calls_do() -> None:
    async with running_server(accept_with(Ticker())) as server:
        connector = wsrpc.WebSocketConnector[None, None, TickerRemote](None)
        remote = connector.get_driver()
        with pytest.raises(wsrpc.StateError):
            async for _ in remote.ticks(3):
                pass
        await connector.connect(url_of(server), timeout=10 * UNIT)
        await connector.close()
        with pytest.raises(wsrpc.ConnectionClosedError):
            async for _ in remote.ticks(3):
                pass


async def test_a_reconnecting_connector_streams() -> None:
    async with running_server(accept_with(Ticker())) as server:
        connector = wsrpc.WebSocketConnector[None, None, TickerRemote](None, reconnect=True)
        async with connector:
            await connector.connect(url_of(server), timeout=10 * UNIT)
            remote = connector.get_driver()
            assert [item async for item in remote.ticks(40)] == list(range(40))


# -- client to server --------------------------------------------------------------


class Uploader:
    """The client's provider: a stream the server reads."""

    def __init__(self) -> None:
        self.finished = asyncio.Event()

    async def readings(self, n: int) -> AsyncIterator[float]:
        try:
            for i in range(n):
                yield i / 2
        finally:
            self.finished.set()


class UploaderRemote(Protocol):
    def readings(self, n: int) -> AsyncIterator[float]: ...


class Collector:
    """The server's provider: reads the client's stream while serving a call."""

    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[None, Collector, UploaderRemote]):
        self.client = acceptor.get_driver()

    async def collect(self, n: int, stop_at: int | None = None) -> list[float]:
        got = []
        async for reading in self.client.readings(n):
            got.append(reading)
            if len(got) == stop_at:
                break
        return got


class CollectorRemote(Protocol):
    async def collect(self, n: int, stop_at: int | None = None) -> list[float]: ...


@pytest.mark.parametrize("max_calls", [1, 128])
async def test_a_client_stream_read_by_the_server_while_serving_a_call(max_calls: int) -> None:
    # With one call at a time on both sides too: the server's stream is a
    # nested call of the client's collect(), and takes no slot.
    async def handler(acceptor: AnyAcceptor) -> None:
        await acceptor.accept(Collector(acceptor))

    uploader = Uploader()
    async with running_server(handler, max_concurrent_calls=max_calls) as server:
        connector = wsrpc.WebSocketConnector[None, Uploader, CollectorRemote](
            None, uploader, max_concurrent_calls=max_calls
        )
        async with connector:
            await connector.connect(url_of(server), timeout=10 * UNIT)
            remote = connector.get_driver()
            assert await remote.collect(100) == [i / 2 for i in range(100)]
            uploader.finished.clear()
            assert await remote.collect(10**6, stop_at=3) == [0.0, 0.5, 1.0]
            await asyncio.wait_for(uploader.finished.wait(), 10 * UNIT)


async def test_a_server_streams_from_its_client_through_the_acceptors_driver() -> None:
    uploader = Uploader()
    readings: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[None, None, UploaderRemote]) -> None:
        await acceptor.accept(None)
        readings.set_result([x async for x in acceptor.get_driver().readings(20)])

    async with running_server(handler) as server:
        connector = wsrpc.WebSocketConnector[None, Uploader, None](None, uploader)
        async with connector:
            await connector.connect(url_of(server), timeout=10 * UNIT)
            assert await asyncio.wait_for(readings, 10 * UNIT) == [i / 2 for i in range(20)]


# -- wsrpc.sync ----------------------------------------------------------------------


class SyncTickerRemote(Protocol):
    def ticks(self, n: int, start: int = 0) -> Iterator[int]: ...

    def add(self, a: int, b: int) -> int: ...


async def test_streams_through_wsrpc_sync_are_blocking_iterators() -> None:
    ticker = Ticker()
    async with running_server(accept_with(ticker)) as server:

        def in_a_thread() -> tuple[list[int], list[int], int]:
            with wsrpc.sync.WebSocketConnector[None, None, SyncTickerRemote](None) as connector:
                connector.connect(url_of(server), timeout=10 * UNIT)
                remote = connector.get_driver()
                everything = list(remote.ticks(50))
                some = []
                with contextlib.closing(remote.ticks(2**62)) as stream:  # type: ignore[type-var]
                    for item in stream:
                        some.append(item)
                        if len(some) == 3:
                            break
                return everything, some, remote.add(2, 2)

        everything, some, total = await asyncio.to_thread(in_a_thread)
        assert everything == list(range(50))
        assert some == [0, 1, 2]
        assert total == 4
        # The early stop closed the second generator, paused for want of credit.
        await asyncio.wait_for(ticker.two_finished.wait(), 10 * UNIT)
