"""
The communicator's admission policy, on an in-memory channel pair: no
sockets, no clock, every step visible.

The rules under test (see ``wsrpc/_communicator.py``): a side runs at most
``max_calls`` of the peer's async calls at once; more wait in a backlog of
the same size; once the backlog is full the channel stops delivering, even
what one read already holds; callbacks of this side's own pending calls run
past the limit; a caller never has more calls out than the peer runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from .memory import MemoryChannel, channel_pair, communicator, open_protocols, settle


class Gate:
    """An async provider whose calls wait until released; counts what runs."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.started = 0
        self.release = asyncio.Event()
        self.cancelled = 0

    async def wait(self, tag: int) -> int:
        self.started += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return tag


def paused(channel: MemoryChannel) -> bool:
    """Whether ``channel`` stopped reading (a call: mypy must not narrow it across awaits)."""
    return channel.reading_paused


def replies(frames: list[Any]) -> list[tuple[int, Any]]:
    """(kind, uid) of raw msgpack frames."""
    return [tuple(msgpack.unpackb(frame)[:2]) for frame in frames]


async def test_a_peer_ignoring_the_limit_fills_the_backlog_then_is_not_read() -> None:
    client_end, server_end = channel_pair()
    client, server_protocol = open_protocols(server_max_calls=2)
    gate = Gate()
    _, _ = communicator(server_end, server_protocol, gate)
    answers: list[Any] = []
    client_end.start(answers.append, lambda: None)
    # A dishonest client: six calls at once, past the advertised limit of 2.
    for tag in range(6):
        _, frame = client.send_call("wait", [tag], None)
        client_end.send(frame)
    await settle()
    assert gate.running == 2  # the limit
    assert gate.started == 2
    # Two more wait in the backlog (its size is the limit), and then the
    # channel stops delivering: the last two stay unread in its inbox.
    assert server_end.reading_paused
    assert len(server_end.inbox) == 2
    assert server_end.delivered == 4
    gate.release.set()
    await settle()
    assert gate.most == 2  # never more than the limit, all the way through
    assert sorted(uid for _, uid in replies(answers)) == [1, 2, 3, 4, 5, 6]
    assert not paused(server_end) and not server_end.inbox


async def test_cancelling_a_backlogged_call_drops_it_unrun() -> None:
    client_end, server_end = channel_pair()
    client, server_protocol = open_protocols(server_max_calls=2)
    gate = Gate()
    communicator(server_end, server_protocol, gate)
    answers: list[Any] = []
    client_end.start(answers.append, lambda: None)
    uids = []
    for tag in range(3):
        uid, frame = client.send_call("wait", [tag], None)
        uids.append(uid)
        client_end.send(frame)
    await settle()
    assert (gate.running, gate.started) == (2, 2)  # the third waits in the backlog
    assert not server_end.reading_paused  # one of two backlog places taken
    cancel = client.send_cancel(uids[2])
    assert cancel is not None
    client_end.send(cancel)
    await settle()
    gate.release.set()
    await settle()
    assert gate.started == 2  # the cancelled call never ran
    assert sorted(replies(answers)) == [(3, uids[0]), (3, uids[1])]  # and got no reply


async def test_an_honest_caller_never_has_more_calls_out_than_the_peer_runs() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols(server_max_calls=3)
    gate = Gate()
    communicator(server_end, server_protocol, gate)
    caller, _ = communicator(client_end, client_protocol, None)
    calls = [asyncio.ensure_future(caller.call("wait", (tag,), {}, None)) for tag in range(10)]
    await settle()
    assert gate.running == 3
    # The others wait on the client for a slot: nothing queues on the server.
    assert server_end.delivered == 3 and not server_end.inbox
    assert not server_end.reading_paused
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(*calls), 5) == list(range(10))
    assert gate.most == 3


class Relay:
    """The server's provider: each call calls the client back before answering."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def relay(self, tag: int) -> int:
        result: int = await self.driver("echo", (tag,), {}, None)
        return result


class Echo:
    def __init__(self) -> None:
        self.gate = Gate()

    async def echo(self, tag: int) -> int:
        return await self.gate.wait(tag)


async def test_callbacks_of_pending_calls_run_past_a_full_limit() -> None:
    # Both sides run one call at a time. The client's echo() is busy (the
    # server called it first); a call of the client's own waits on the
    # server, which calls the client back while the client's slot is taken:
    # the callback carries its parent and runs anyway, so nothing deadlocks.
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols(client_max_calls=1, server_max_calls=1)
    echo = Echo()
    client, _ = communicator(client_end, client_protocol, echo)
    server: Any = None
    relay = Relay(lambda *args: server.call(*args))
    server, _ = communicator(server_end, server_protocol, relay)
    busy = asyncio.ensure_future(server.call("echo", (0,), {}, None))  # takes the client's slot
    await settle()
    assert echo.gate.running == 1
    relayed = asyncio.ensure_future(client.call("relay", (7,), {}, None))
    await settle()
    assert echo.gate.running == 2  # the callback ran past the limit of 1
    echo.gate.release.set()
    assert await asyncio.wait_for(relayed, 5) == 7
    assert await asyncio.wait_for(busy, 5) == 0


async def test_closing_fails_pending_calls_and_cancels_running_ones() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols()
    gate = Gate()
    _, server_closed = communicator(server_end, server_protocol, gate)
    client, client_closed = communicator(client_end, client_protocol, None)
    call = asyncio.ensure_future(client.call("wait", (1,), {}, None))
    await settle()
    assert gate.running == 1
    await asyncio.wait_for(client.close(4000, "bye"), 5)
    try:
        await call
    except Exception as exc:
        assert (type(exc).__name__, getattr(exc, "code", None)) == ("ConnectionClosedError", 4000)
    else:
        raise AssertionError("the pending call should have failed")
    await asyncio.wait_for(server_closed.done.wait(), 5)
    assert gate.cancelled == 1 and gate.running == 0
    assert [info.code for info in client_closed.infos + server_closed.infos] == [4000, 4000]


async def test_closing_fails_the_calls_waiting_for_a_slot_too() -> None:
    client_end, server_end = channel_pair()
    client_protocol, server_protocol = open_protocols(server_max_calls=1)
    gate = Gate()
    communicator(server_end, server_protocol, gate)
    client, _ = communicator(client_end, client_protocol, None)
    calls = [asyncio.ensure_future(client.call("wait", (tag,), {}, None)) for tag in range(3)]
    await settle()
    assert gate.running == 1 and server_end.delivered == 1  # two wait for the one slot
    await asyncio.wait_for(client.close(4000, "bye"), 5)
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert [(type(exc).__name__, getattr(exc, "code", None)) for exc in outcomes] == [
        ("ConnectionClosedError", 4000)
    ] * 3
    assert server_end.delivered == 1  # the waiting calls were never sent
