"""
Servers in several processes forming one application over a real Redis.

Each test cluster is a ``redis-server`` started here (127.0.0.1, a free port,
no persistence) and three server processes with a ``RedisBackplane``; the
clients connect from the test process. See ``tests/cluster_helpers.py``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

import msgpack
import pytest

import wsrpc
from tests.conftest import UNIT
from wsrpc._cluster import wire
from wsrpc._cluster.registry import HEARTBEAT_INTERVAL, NODE_TTL, record

from .cluster_helpers import ClientRemote, Node, NodeError, RedisServer, Stamp, start_nodes

NAME = "wsrpc-test"
DEATH_BOUND = NODE_TTL + 2 * HEARTBEAT_INTERVAL + 2 * UNIT
"""Seconds within which calls in flight to a killed node must fail."""


class ServiceRemote(Protocol):
    async def my_id(self) -> int: ...
    async def join(self, group: str) -> bool: ...
    async def leave(self, group: str) -> None: ...
    async def bounce(self, value: int) -> int: ...


class Client:
    """A test client's provider: what the nodes call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: list[Any] = []
        self.received = asyncio.Event()
        self.hanging = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.block = False
        self.server: Any = None

    async def echo(self, value: Any) -> Any:
        self.values.append(value)
        self.received.set()
        if self.block:
            await self.hang()
        return value

    def whoami(self) -> str:
        return self.name

    async def hang(self) -> None:
        self.hanging.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    def fail(self) -> None:
        raise ValueError("as asked")

    def later(self, when: datetime.datetime, days: int) -> Stamp:
        assert type(when) is datetime.datetime
        return Stamp(when + datetime.timedelta(days=days), self.name)

    async def callback(self, value: int) -> int:
        # Calls its node, which calls this client back: both directions.
        result: int = await self.server.bounce(value)
        return result + 1


Connector = wsrpc.WebSocketConnector[None, Client, ServiceRemote]


async def connect(
    node: Node, name: str, *groups: str, validate: bool = False
) -> tuple[Connector, Client, int]:
    client = Client(name)
    connector: Connector = wsrpc.WebSocketConnector(None, client, validate=validate)
    await connector.connect(node.url, timeout=10 * UNIT)
    client.server = connector.get_driver()
    for group in groups:
        assert await client.server.join(group) is True
    connection_id: int = await client.server.my_id()
    return connector, client, connection_id


async def close_all(connectors: list[Connector]) -> None:
    await asyncio.gather(*(c.close() for c in connectors), return_exceptions=True)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nodes(redis_server: RedisServer) -> Iterator[list[Node]]:
    started = start_nodes(redis_server.url, 3, NAME)
    try:
        yield started
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def own_cluster() -> Iterator[tuple[RedisServer, list[Node]]]:
    """A Redis and three nodes of this test's own, for tests that break them."""
    server = RedisServer()
    server.start()
    started: list[Node] = []
    try:
        started = start_nodes(server.url, 3, NAME)
        yield server, started
    finally:
        for node in started:
            node.stop()
        server.stop()


# -- sans-I/O: ids, the wire, recording ----------------------------------------------


def test_ids_are_snowflakes_monotonic_and_in_range() -> None:
    maker = wire.IdMaker(517)
    now = wire.EPOCH_MS + 10_000
    ids = [maker.next(now) for _ in range(5000)]  # more than 4,096 in one millisecond
    ids += [maker.next(now - 1000) for _ in range(10)]  # the clock went back
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(0 <= i < 2**63 and wire.slot_of(i) == 517 for i in ids)
    assert ids[0] >> 22 == 10_000 and ids[-1] >> 22 == 10_001  # borrowed, never back


def test_wire_round_trip_and_refusals() -> None:
    message = wire.Call(3, 7, 2**62, "room.say", [1, "x", b"y"], {"k": [None]}, 1500)
    assert wire.decode(wire.encode(message, 1000), 1000) == message
    outcome = wire.Outcomes(1, 9, [[5, "ok"], [6, None, wire.error_of(ValueError("no"))]], True)
    assert wire.decode(wire.encode(outcome, 1000), 1000) == outcome
    error = wire.exception_of(outcome.outcomes[1][2])
    assert isinstance(error, wsrpc.RemoteError) and error.name == "ValueError"
    with pytest.raises(wsrpc.EncodeError):
        wire.encode(wire.Result(1, 1, "x" * 2000), 1000)
    with pytest.raises(wsrpc.EncodeError):
        wire.encode(wire.Result(1, 1, {1: 2}), 1000)  # int keys are refused, as on the wire
    bad = [
        b"",
        b"\xc1",
        msgpack.packb([1, 2000, 1, 1, "p", [], None, None]),  # slot out of range
        msgpack.packb([1, 0, 0, 1, "p", [], None, None]),  # request 0
        msgpack.packb([1, 0, 1, -1, "p", [], None, None]),  # negative id
        msgpack.packb([1, 0, 1, 1, "", [], None, None]),  # empty path
        msgpack.packb([1, 0, 1, 1, "p", {}, None, None]),  # args not an array
        msgpack.packb([4, 0, 1, ["nonsense", 0, "", "", None]]),
        msgpack.packb([5, 0, 1, 1, 999, "r"]),  # bad close code
        msgpack.packb([7, 0, 1, [[1, 2, 3]], True]),
        msgpack.packb([99, 0, 1]),
        b"\xdd\xff\xff\xff\xff" + b"\x91" * 40,  # declares 4 billion elements
        msgpack.packb([3, 0, 1, "x" * 5000]),  # over the size limit
        "text",
    ]
    for data in bad:
        with pytest.raises(wsrpc.ProtocolError):
            wire.decode(data, 1000)


def test_record_takes_exactly_one_call_through_the_driver() -> None:
    assert record(lambda c: c.room.say("hi", loud=True)) == ("room.say", ["hi"], {"loud": True})

    async def two(client: Any) -> Any:
        return await client.a()

    with pytest.raises(TypeError, match="exactly one call"):
        record(lambda c: (c.a(), c.b())[1])
    with pytest.raises(TypeError, match="exactly one call"):
        record(two)
    with pytest.raises(TypeError):
        record(lambda c: c())


# -- ids and calls by id ----------------------------------------------------------------


async def test_ids_are_unique_across_nodes(nodes: list[Node]) -> None:
    assert len({node.slot for node in nodes}) == 3
    connected = await asyncio.gather(*(connect(node, f"c{i}") for node in nodes for i in range(8)))
    try:
        ids = [connection_id for _, _, connection_id in connected]
        assert len(set(ids)) == len(ids) == 24
        assert all(0 <= i < 2**63 for i in ids)
        for index, node in enumerate(nodes):
            mine = set(ids[index * 8 : index * 8 + 8])
            assert {wire.slot_of(i) for i in mine} == {node.slot}
            assert mine <= set(await node.ask("ids"))
    finally:
        await close_all([c for c, _, _ in connected])


async def test_get_driver_reaches_a_client_on_another_node(nodes: list[Node]) -> None:
    a, b, _ = nodes
    conn_a, client_a, id_a = await connect(a, "on-a")
    conn_b, client_b, id_b = await connect(b, "on-b")
    try:
        assert await a.ask("call", id_b, "whoami", (), None) == "on-b"
        assert await b.ask("call", id_a, "whoami", (), None) == "on-a"
        assert await a.ask("call", id_a, "whoami", (), None) == "on-a"  # its own
        # A -> client on B -> B's provider -> the client again: 5 + 1 + 1.
        assert await a.ask("call", id_b, "callback", (5,), None) == 7
        assert await b.ask("call", id_a, "callback", (10,), None) == 12
        assert client_b.values == [5] and client_a.values == [10]
        with pytest.raises(NodeError) as raised:
            await a.ask("call", id_b, "fail", (), None)
        assert raised.value.kind == "RemoteError" and "as asked" in raised.value.message
        with pytest.raises(NodeError) as raised:
            await a.ask("call", id_b, "_private", (), None)
        assert raised.value.kind == "AttributeError"  # refused by the driver, as locally
    finally:
        await close_all([conn_a, conn_b])


async def test_rich_types_cross_nodes_and_are_built_where_the_call_was_made(
    nodes: list[Node],
) -> None:
    # The nodes validate (cluster_helpers): a Stamp result travels from the
    # client to its node, over Redis to the calling node, as a map, and is
    # built there from ClientRemote's annotation; the datetime argument
    # travels as a msgpack timestamp the whole way.
    a, b, _ = nodes
    conn_a, _, id_a = await connect(a, "rich-a", "rich", validate=True)
    conn_b, _, id_b = await connect(b, "rich-b", "rich", validate=True)
    when = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
    later = when + datetime.timedelta(days=1)
    try:
        assert await a.ask("call", id_b, "later", (when, 1), None) == Stamp(later, "rich-b")
        assert await a.ask("call", id_a, "later", (when, 1), None) == Stamp(later, "rich-a")
        outcomes = await b.ask("broadcast_later", "rich", when, 5 * UNIT)
        assert sorted(outcomes, key=lambda o: o[0]) == sorted(
            [(id_a, Stamp(later, "rich-a"), None), (id_b, Stamp(later, "rich-b"), None)],
            key=lambda o: o[0],
        )
    finally:
        await close_all([conn_a, conn_b])


async def test_calls_to_ids_nobody_holds_fail_fast(nodes: list[Node]) -> None:
    a, b, _ = nodes
    conn, _, id_b = await connect(b, "leaving")
    await conn.close()
    free_slot = next(s for s in range(wire.SLOTS) if s not in {n.slot for n in nodes})
    unheld = wire.IdMaker(free_slot).next(int(time.time() * 1000))
    for connection_id in (id_b, unheld, id_b + 1):
        started = time.monotonic()
        with pytest.raises(NodeError) as raised:
            await a.ask("call", connection_id, "whoami", (), 30 * UNIT)
        assert raised.value.kind == "ConnectionClosedError" and raised.value.code == 1006
        assert time.monotonic() - started < 2 * UNIT  # not after the timeout


async def test_cancelling_a_cross_node_call_cancels_it_where_it_runs(nodes: list[Node]) -> None:
    a, b, _ = nodes
    conn, client, id_b = await connect(b, "slow")
    try:
        with pytest.raises(NodeError) as raised:
            await a.ask("call", id_b, "hang", (), 0.5 * UNIT)
        assert raised.value.kind == "RpcTimeoutError"
        await asyncio.wait_for(client.cancelled.wait(), 5 * UNIT)
    finally:
        await conn.close()


async def test_disconnect_closes_a_connection_on_another_node(nodes: list[Node]) -> None:
    a, _, c = nodes
    conn, _, id_c = await connect(c, "to-close")
    assert await a.ask("disconnect", id_c, 4001, "bye") is True
    info = await asyncio.wait_for(conn.join(), 5 * UNIT)
    assert (info.code, info.reason) == (4001, "bye")
    assert await a.ask("disconnect", id_c, 1000, "") is False
    assert id_c not in await c.ask("ids")


# -- groups across nodes ----------------------------------------------------------------


async def test_broadcast_calls_every_member_on_every_node_once(nodes: list[Node]) -> None:
    connected = await asyncio.gather(
        *(connect(node, f"m{n}{i}", "room") for n, node in enumerate(nodes) for i in range(4)),
        *(connect(node, f"x{n}") for n, node in enumerate(nodes)),  # not members
    )
    try:
        members = {connection_id: client for _, client, connection_id in connected[:12]}
        for n, node in enumerate(nodes):
            outcomes = await node.ask("broadcast", "room", f"hi{n}", 5 * UNIT)
            assert sorted(o[0] for o in outcomes) == sorted(members)  # each exactly once
            assert all(o[1] == f"hi{n}" and o[2] is None for o in outcomes)
        for client in members.values():
            assert client.values == ["hi0", "hi1", "hi2"]
        for _, client, _ in connected[12:]:
            assert client.values == []
        # notify: fire and forget, everywhere; counts this node's members.
        for client in members.values():
            client.received.clear()
        assert await nodes[1].ask("notify", "room", "n") == 4
        await asyncio.wait_for(
            asyncio.gather(*(client.received.wait() for client in members.values())), 5 * UNIT
        )
        assert all(client.values[-1] == "n" for client in members.values())
    finally:
        await close_all([c for c, _, _ in connected])


async def test_a_member_leaving_mid_broadcast_gets_an_error_outcome(nodes: list[Node]) -> None:
    a, _, c = nodes
    connected = [await connect(node, f"l{n}", "lobby") for n, node in enumerate(nodes)]
    leaver_conn, leaver, leaver_id = await connect(c, "leaver", "lobby")
    leaver.block = True
    try:
        broadcast = asyncio.ensure_future(a.ask("broadcast", "lobby", "x", 10 * UNIT))
        await asyncio.wait_for(leaver.hanging.wait(), 5 * UNIT)
        await leaver_conn.close()
        outcomes = await asyncio.wait_for(broadcast, 10 * UNIT)
        by_id = {o[0]: o for o in outcomes}
        assert len(by_id) == len(outcomes) == 4
        assert by_id[leaver_id][2] == "ConnectionClosedError"
        assert all(by_id[i][1:] == ("x", None) for _, _, i in connected)
        # It left the group on its node, and the other nodes' broadcasts know.
        assert leaver_id not in await c.ask("members", "lobby")
        assert len(await a.ask("broadcast", "lobby", "y", 5 * UNIT)) == 3
    finally:
        await close_all([conn for conn, _, _ in connected])


async def test_hostile_messages_on_the_channels_are_dropped(
    redis_server: RedisServer, nodes: list[Node]
) -> None:
    a, b, _ = nodes
    junk = [
        b"",
        b"\x00" * 100,
        b"\xdd\xff\xff\xff\xff" * 1000,  # declared billions of elements
        b"\x91" * 5000,  # nested too deep
        msgpack.packb([1, b.slot, 1, "not an id", "echo", [], None, None]),
        msgpack.packb([1, a.slot, 1, 2**64 - 1, "echo", [], None, None]),
        msgpack.packb([6, 999, 1, "room", "echo", [1], None, 1000, True]),
        msgpack.packb([6, a.slot, 1, "room", "echo", [1], {"k": 1}, -5, True]),
        msgpack.packb([3, a.slot, 424242, "an answer nobody asked for"]),
        msgpack.packb([7, a.slot, 1, [[1, 2, 3, 4]], True]),
        msgpack.packb([2, a.slot, 1, "extra"]),
        msgpack.packb({"kind": "call"}),
        msgpack.packb([1, 0, 1, 1, "echo", [msgpack.ExtType(5, b"x")], None, None]),
        b"\x93\x01\x00" + b"\xdb\xff\xff\xff\xff",  # a string longer than the message
        b"x" * (2**20 + 1),  # over max_message_size
        b"\x80\x04\x95pickle",
    ]
    for data in junk:
        for channel in ("all", f"node:{a.slot}", f"node:{b.slot}"):
            redis_server.command("PUBLISH", f"{NAME}:{channel}", data)
    conn, _, id_b = await connect(b, "after")
    try:
        assert await a.ask("call", id_b, "whoami", (), 5 * UNIT) == "after"
        assert all(node.process.is_alive() for node in nodes)
    finally:
        await conn.close()


# -- failures: node death, Redis outage -------------------------------------------------------


async def test_a_killed_node_fails_calls_in_flight_and_later_ones_fast(
    own_cluster: tuple[RedisServer, list[Node]],
) -> None:
    _, (a, b, c) = own_cluster
    conn_b, client_b, id_b = await connect(b, "doomed", "hall")
    conn_c, client_c, id_c = await connect(c, "alive", "hall")
    conn_b2, _, _ = await connect(b, "doomed2")
    try:
        client_b.block = True
        calls = [asyncio.ensure_future(a.ask("call", id_b, "hang", (), None)) for _ in range(3)]
        broadcast = asyncio.ensure_future(a.ask("broadcast", "hall", "v", 60 * UNIT))
        await asyncio.wait_for(client_b.hanging.wait(), 5 * UNIT)
        await asyncio.wait_for(client_b.received.wait(), 5 * UNIT)  # the broadcast too
        killed = time.monotonic()
        b.kill()
        results = await asyncio.wait_for(
            asyncio.gather(*calls, return_exceptions=True), 3 * DEATH_BOUND
        )
        assert time.monotonic() - killed < DEATH_BOUND
        for result in results:
            assert isinstance(result, NodeError) and result.kind == "ConnectionClosedError"
        outcomes = await asyncio.wait_for(broadcast, 3 * DEATH_BOUND)
        by_id = {o[0]: o for o in outcomes}
        assert by_id[id_c] == [id_c, "v", None] or tuple(by_id[id_c]) == (id_c, "v", None)
        assert by_id[id_b][2] == "ConnectionClosedError"
        assert time.monotonic() - killed < DEATH_BOUND
        started = time.monotonic()
        with pytest.raises(NodeError) as raised:
            await a.ask("call", id_b, "whoami", (), 30 * UNIT)
        assert raised.value.kind == "ConnectionClosedError"
        assert time.monotonic() - started < 2 * UNIT
        assert await a.ask("call", id_c, "whoami", (), 5 * UNIT) == "alive"
        # A node closing (not dying) fails the calls in flight to it with the
        # close code of its connections (1001, going away), at once.
        client_c.hanging.clear()
        call = asyncio.ensure_future(a.ask("call", id_c, "hang", (), None))
        await asyncio.wait_for(client_c.hanging.wait(), 5 * UNIT)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, c.stop)
        with pytest.raises(NodeError) as raised:
            await asyncio.wait_for(call, 10 * UNIT)
        assert (raised.value.kind, raised.value.code) == ("ConnectionClosedError", 1001)
        assert time.monotonic() - started < 5 * UNIT
    finally:
        await close_all([conn_b, conn_c, conn_b2])


async def test_a_frozen_node_gets_error_outcomes_and_comes_back(
    own_cluster: tuple[RedisServer, list[Node]],
) -> None:
    _, (a, b, c) = own_cluster
    connected = [await connect(node, f"f{n}", "den") for n, node in enumerate([a, b, b, c])]
    ids = [connection_id for _, _, connection_id in connected]
    try:
        b.pause()  # cut off: it neither answers nor heartbeats
        try:
            started = time.monotonic()
            outcomes = await a.ask("broadcast", "den", "hey", 1 * UNIT)
            elapsed = time.monotonic() - started
        finally:
            b.resume()
        by_id = {o[0]: o for o in outcomes}
        assert sorted(by_id) == sorted(ids) and len(outcomes) == 4  # b's two are reported
        assert tuple(by_id[ids[0]]) == (ids[0], "hey", None)
        assert tuple(by_id[ids[3]]) == (ids[3], "hey", None)
        for frozen in ids[1:3]:
            assert by_id[frozen][2] in ("RpcTimeoutError", "ConnectionClosedError")
        assert elapsed < 1 * UNIT + 1 + DEATH_BOUND  # the timeout, the grace, never more
        # Thawed, it renews its slot and serves again.
        deadline = time.monotonic() + 20 * UNIT
        while True:
            outcomes = await a.ask("broadcast", "den", "again", 5 * UNIT)
            if all(o[2] is None for o in outcomes) and len(outcomes) == 4:
                break
            assert time.monotonic() < deadline, outcomes
            await asyncio.sleep(0.1 * UNIT)  # polling recovery, with a deadline
        assert await a.ask("call", ids[1], "whoami", (), 5 * UNIT) == "f1"
    finally:
        await close_all([conn for conn, _, _ in connected])


async def test_redis_outage_fails_remote_operations_fast_and_recovers(
    own_cluster: tuple[RedisServer, list[Node]],
) -> None:
    redis_server, (a, b, c) = own_cluster
    connected = [await connect(node, f"r{n}", "room") for n, node in enumerate([a, b, c])]
    (_, _, id_a), (_, _, id_b), (_, client_c, id_c) = connected
    try:
        client_c.block = True
        # Load: calls in flight when Redis goes, and more during the outage.
        in_flight = [asyncio.ensure_future(a.ask("call", id_c, "echo", (i,), None))
                     for i in range(10)]  # fmt: skip
        await asyncio.wait_for(client_c.hanging.wait(), 5 * UNIT)
        redis_server.stop()
        results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True),
                                         10 * UNIT)  # fmt: skip
        assert {getattr(r, "kind", None) for r in results} == {"BackplaneError"}
        client_c.block = False
        started = time.monotonic()
        with pytest.raises(NodeError) as raised:
            await a.ask("call", id_b, "whoami", (), 30 * UNIT)
        assert raised.value.kind == "BackplaneError"
        with pytest.raises(NodeError) as raised:
            await a.ask("broadcast", "room", "z", 5 * UNIT)
        assert raised.value.kind == "BackplaneError"
        assert time.monotonic() - started < 3 * UNIT
        # Local connections, calls and groups keep working.
        assert await a.ask("call", id_a, "whoami", (), 5 * UNIT) == "r0"
        conn_new, _, id_new = await connect(a, "during", "room")
        assert wire.slot_of(id_new) == a.slot and id_new not in (id_a, id_b, id_c)
        assert await a.ask("members", "room") == sorted([id_a, id_new])
        connected.append((conn_new, Client("during"), id_new))

        redis_server.start()  # same port, empty
        deadline = time.monotonic() + 20 * UNIT
        while True:  # the backplane reconnects by itself
            try:
                assert await a.ask("call", id_b, "whoami", (), 5 * UNIT) == "r1"
                break
            except NodeError as exc:
                if time.monotonic() > deadline:
                    raise
                assert exc.kind in ("BackplaneError", "ConnectionClosedError")
                await asyncio.sleep(0.1 * UNIT)  # polling recovery, with a deadline
        deadline = time.monotonic() + 20 * UNIT
        while True:  # every node re-registers its members
            outcomes = await b.ask("broadcast", "room", "back", 5 * UNIT)
            ids = sorted(o[0] for o in outcomes)
            indexed = redis_server.command("SMEMBERS", f"{NAME}:g:{c.slot}:room")
            if ids == sorted([id_a, id_b, id_c, id_new]) and indexed == {str(id_c).encode()}:
                break
            assert time.monotonic() < deadline, (ids, indexed)
            await asyncio.sleep(0.1 * UNIT)
        assert redis_server.command("EXISTS", f"{NAME}:slot:{a.slot}") == 1
    finally:
        await close_all([conn for conn, _, _ in connected])


async def test_a_broadcast_that_loses_the_backplane_raises_with_what_it_has(
    own_cluster: tuple[RedisServer, list[Node]],
) -> None:
    # C's member hangs, so the broadcast waits for C; Redis then goes. The
    # broadcast cannot account for C's member: it raises BackplaneError
    # rather than return a list that lacks it, with the outcomes it has.
    redis_server, (a, b, c) = own_cluster
    connected = [await connect(node, f"p{n}", "hall") for n, node in enumerate([a, b, c])]
    (_, client_a, id_a), (_, client_b, id_b), (_, client_c, id_c) = connected
    try:
        client_c.block = True
        pending = asyncio.ensure_future(a.ask("broadcast_partial", "hall", "x", 30 * UNIT))
        await asyncio.wait_for(client_c.hanging.wait(), 5 * UNIT)
        await asyncio.wait_for(
            asyncio.gather(client_a.received.wait(), client_b.received.wait()), 5 * UNIT
        )
        redis_server.stop()
        kind, message, outcomes = await asyncio.wait_for(pending, 10 * UNIT)
        assert kind == "incomplete", (kind, outcomes)
        assert "the broadcast's outcomes are incomplete" in message
        by_id = {o[0]: o for o in outcomes}
        assert by_id[id_a] == (id_a, "x", None)  # this node's own member, answered
        assert id_c not in by_id  # the one it cannot account for
        assert set(by_id) <= {id_a, id_b}  # B's answer, if it arrived in time
    finally:
        client_c.block = False
        await close_all([conn for conn, _, _ in connected])


# -- one process: the backplane's own errors ---------------------------------------------------


async def test_open_fails_with_backplane_error_when_redis_is_unreachable() -> None:
    from .cluster_helpers import free_port

    server: wsrpc.WebSocketServer[Any, Any, ClientRemote] = wsrpc.WebSocketServer(
        backplane=wsrpc.RedisBackplane(f"redis://127.0.0.1:{free_port()}", socket_timeout=UNIT)
    )
    with pytest.raises(wsrpc.BackplaneError):
        await server.open(0, lambda acceptor: acceptor.accept(object()))
    assert server.state is wsrpc.ServerState.NONE
    assert issubclass(wsrpc.BackplaneError, wsrpc.WsrpcError)


async def test_get_driver_without_a_backplane_reaches_local_connections() -> None:
    class Service:
        pass

    server: wsrpc.WebSocketServer[Any, Service, ClientRemote] = wsrpc.WebSocketServer()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Service, ClientRemote]) -> None:
        await acceptor.accept(Service())

    await server.open(0, handler)
    try:
        client = Client("solo")
        connector: wsrpc.WebSocketConnector[None, Client, Any] = wsrpc.WebSocketConnector(
            None, client
        )
        await connector.connect(f"ws://127.0.0.1:{server.port}/")
        (connection_id,) = server.acceptors
        assert await server.get_driver(connection_id).whoami() == "solo"
        with pytest.raises(wsrpc.ConnectionClosedError):
            await server.get_driver(connection_id + 1).whoami()
        assert await server.disconnect(connection_id + 1) is False
        assert await server.disconnect(connection_id, 4002, "done") is True
        assert (await connector.join()).code == 4002
    finally:
        await server.close()


async def test_a_malformed_message_is_logged_at_info_and_dropped(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # One node in this process, so that its log can be read.
    server: wsrpc.WebSocketServer[Any, Any, ClientRemote] = wsrpc.WebSocketServer(
        backplane=wsrpc.RedisBackplane(redis_server.url, name="wsrpc-log-test")
    )
    await server.open(0, lambda acceptor: acceptor.accept(object()))
    try:
        cluster = server._cluster
        assert cluster is not None
        dropped = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "malformed" in record.getMessage():
                    dropped.set()

        watch = Watch(logging.INFO)
        logger = logging.getLogger("wsrpc.cluster")
        logger.addHandler(watch)
        caplog.set_level(logging.INFO, "wsrpc.cluster")
        try:
            bomb = b"\x93\x01\x00\xdd\xff\xff\xff\xff"
            assert await cluster.backplane.publish(f"node:{cluster.slot}", bomb) == 1
            await asyncio.wait_for(dropped.wait(), 5 * UNIT)
        finally:
            logger.removeHandler(watch)
        (record,) = [r for r in caplog.records if "malformed" in r.getMessage()]
        assert record.levelno == logging.INFO and f"node:{cluster.slot}" in record.getMessage()
        assert cluster.backplane.is_up and server.state is wsrpc.ServerState.OPEN
    finally:
        await server.close()


def test_asgi_refuses_a_backplane() -> None:
    # Joining the application needs an await: open() does it, asgi() cannot.
    server: wsrpc.WebSocketServer[Any, Any, ClientRemote] = wsrpc.WebSocketServer(
        backplane=wsrpc.RedisBackplane("redis://127.0.0.1:1/0")
    )
    with pytest.raises(ValueError, match="open"):
        server.asgi(lambda acceptor: acceptor.accept(object()))
    assert server.state is wsrpc.ServerState.NONE
