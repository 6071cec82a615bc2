"""Connections as first-class objects: registry, hooks, groups, broadcast, HTTP, threads."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import pytest
from websockets.asyncio.client import connect as ws_connect

import wsrpc
from wsrpc import AcceptorState, CloseInfo

from ..conftest import UNIT, running_server, url_of


class Client:
    """A client provider that records what the server pushes."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.arrived = asyncio.Event()
        self.hanging = False

    async def on_message(self, text: str) -> str:
        if self.hanging:
            await asyncio.Event().wait()  # never answers; cancelled by the timeout
        self.messages.append(text)
        self.arrived.set()
        return f"got {text}"

    def fail(self) -> None:
        raise ValueError("client says no")


class ClientRemote(Protocol):
    async def on_message(self, text: str) -> str: ...
    async def fail(self) -> None: ...


class Service:
    def ping(self) -> str:
        return "pong"


Server = wsrpc.WebSocketServer[Any, Service, ClientRemote]
Acceptor = wsrpc.WebSocketAcceptor[Any, Service, ClientRemote]
Connector = wsrpc.WebSocketConnector[Any, Client, Any]


@asynccontextmanager
async def clients(
    server: wsrpc.WebSocketServer[Any, Any, Any], count: int, **options: Any
) -> AsyncIterator[list[tuple[Connector, Client]]]:
    """``count`` connected clients, closed on exit."""
    async with AsyncExitStack() as stack:
        pairs: list[tuple[Connector, Client]] = []

        async def one(index: int) -> tuple[Connector, Client]:
            provider = Client()
            connector: Connector = wsrpc.WebSocketConnector({"n": index}, provider, **options)
            await connector.connect(url_of(server), timeout=10 * UNIT)
            return connector, provider

        for start in range(0, count, 100):  # in batches, to spare the listen backlog
            pairs += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
        for connector, _ in pairs:
            stack.push_async_callback(connector.close)
        yield pairs


async def accept_service(acceptor: Acceptor) -> None:
    await acceptor.accept(Service())


async def test_registry_lists_live_connections_with_their_details() -> None:
    async with running_server(accept_service) as server:
        connector: Connector = wsrpc.WebSocketConnector(
            {"n": 1}, Client(), additional_headers={"X-Trace": "abc", "Cookie": "s=1"}
        )
        await connector.connect(url_of(server, "/app?room=7"), timeout=5 * UNIT)
        (acceptor,) = server.acceptors.values()
        assert server.acceptors[acceptor.id] is acceptor
        assert acceptor.ip == "127.0.0.1"
        assert acceptor.path == "/app?room=7"
        assert acceptor.request_headers["x-trace"] == "abc"  # case-insensitive
        assert ("Cookie", "s=1") in acceptor.request_header_list
        assert acceptor.header == {"n": 1}
        closed_flags = [acceptor.is_closed]
        first_id = acceptor.id
        await connector.close()
        info = await acceptor.join()
        closed_flags.append(acceptor.is_closed)
        assert closed_flags == [False, True]
        assert first_id not in server.acceptors
        # A new connection never gets an old id back.
        again: Connector = wsrpc.WebSocketConnector({"n": 2}, Client())
        await again.connect(url_of(server), timeout=5 * UNIT)
        (second,) = server.acceptors.values()
        assert second.id > first_id
        await again.close()
    assert info == CloseInfo(1000, "", clean=True, by_peer=True)


async def test_hooks_tell_close_request_from_connection_gone() -> None:
    events: list[Any] = []
    closed = asyncio.Event()

    async def handler(acceptor: Acceptor) -> None:
        acceptor.on_close_request(lambda code, reason: events.append(("request", code, reason)))

        @acceptor.on_closed
        async def gone(which: Acceptor, info: CloseInfo) -> None:
            # Still registered and in its groups while the hooks run.
            events.append(("closed", info, which.id in server.acceptors, which.groups))

        await acceptor.accept(Service())
        server.group("lobby").add(acceptor)

    async with running_server(handler) as server:

        @server.on_connect
        def connected(acceptor: Acceptor) -> None:
            events.append(("connect", acceptor.state))

        @server.on_disconnect
        def disconnected(acceptor: Acceptor, info: CloseInfo) -> None:
            events.append(("disconnect", info.code, len(server.group("lobby"))))
            closed.set()

        async with clients(server, 1) as [(connector, _)]:
            await connector.close(4000, "bye")
            async with asyncio.timeout(5 * UNIT):
                await closed.wait()
        assert not server.groups
    info = CloseInfo(4000, "bye", clean=True, by_peer=True)
    assert events == [
        ("connect", AcceptorState.OPEN),
        ("request", 4000, "bye"),
        ("closed", info, True, frozenset({"lobby"})),
        ("disconnect", 4000, 1),
    ]


async def test_close_info_tells_failure_from_graceful_close() -> None:
    infos: list[CloseInfo] = []
    done = asyncio.Event()

    async with running_server(accept_service) as server:

        @server.on_disconnect
        def disconnected(acceptor: Acceptor, info: CloseInfo) -> None:
            infos.append(info)
            done.set()

        async with clients(server, 1) as [(connector, _)]:
            communicator = connector._communicator
            assert communicator is not None
            communicator._channel.abort()  # no closing handshake at all
            async with asyncio.timeout(5 * UNIT):
                await done.wait()
                client_info = await connector.join()
    assert infos == [CloseInfo(1006, "connection lost", clean=False, by_peer=True)]
    assert not client_info.clean


async def test_server_side_close_is_not_by_peer() -> None:
    requests: list[tuple[int, str]] = []
    async with running_server(accept_service) as server:
        async with clients(server, 1) as [(connector, _)]:
            (acceptor,) = server.acceptors.values()
            # The client's answer to our close frame is no request to close.
            acceptor.on_close_request(lambda code, reason: requests.append((code, reason)))
            await acceptor.close(4001, "kicked")
            assert requests == []
            assert acceptor.close_info == CloseInfo(4001, "kicked", clean=True, by_peer=False)
            async with asyncio.timeout(5 * UNIT):
                assert await connector.join() == CloseInfo(4001, "kicked", True, by_peer=True)


async def test_hook_errors_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async with running_server(accept_service) as server:

        @server.on_connect
        def broken(acceptor: Acceptor) -> None:
            raise RuntimeError("hook bug")

        async with clients(server, 1) as [(connector, _)]:
            assert await connector.get_driver().ping() == "pong"
    assert any("hook bug" in str(record.exc_info) for record in caplog.records)


async def test_groups_membership_and_automatic_leave() -> None:
    async with running_server(accept_service) as server:
        async with clients(server, 3) as pairs:
            members = list(server.acceptors.values())
            red, blue = server.group("red"), server.group("blue")
            for acceptor in members:
                red.add(acceptor)
            blue.add(members[0])
            red.add(members[0])  # twice is once
            assert len(red) == 3 and len(blue) == 1
            assert members[0] in blue and members[1] not in blue
            assert members[0].groups == {"red", "blue"}
            assert set(server.groups) == {"red", "blue"}
            red.discard(members[1])
            assert len(red) == 2 and members[1].groups == frozenset()
            await pairs[0][0].close()
            await members[0].join()
            assert set(server.groups) == {"red"}  # blue emptied, and is gone
            assert len(red) == 1
            assert blue.add(members[0]) is False  # a closed connection never joins
            assert not server.group("blue")


async def test_thousand_clients_join_and_leave_without_leaks() -> None:
    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(Service())
        server.group(f"room-{acceptor.id % 10}").add(acceptor)
        server.group("all").add(acceptor)

    async with running_server(handler, max_concurrent_calls=4) as server:
        async with clients(server, 1000) as pairs:
            assert len(server.acceptors) == 1000
            assert len(server.group("all")) == 1000
            assert sum(len(group) for group in server.groups.values()) == 2000
            assert await pairs[-1][0].get_driver().ping() == "pong"
        async with asyncio.timeout(20 * UNIT):
            while server.acceptors:  # each closes and releases itself
                await next(iter(server.acceptors.values())).join()
        assert not server.groups


async def test_broadcast_returns_each_outcome_without_one_failing_the_others() -> None:
    async with running_server(accept_service) as server:
        async with clients(server, 5) as pairs:
            outcomes = await server.broadcast(lambda client: client.on_message("hello"))
            assert sorted(outcome.acceptor_id for outcome in outcomes) == sorted(server.acceptors)
            assert all(outcome.ok and outcome.result() == "got hello" for outcome in outcomes)
            assert all(provider.messages == ["hello"] for _, provider in pairs)

            failures = await server.broadcast(lambda client: client.fail())
            assert all(not outcome.ok for outcome in failures)
            assert all(isinstance(outcome.error, wsrpc.RemoteError) for outcome in failures)
            with pytest.raises(wsrpc.RemoteError):
                failures[0].result()


async def test_slow_member_times_out_alone() -> None:
    async with running_server(accept_service) as server:
        async with clients(server, 3) as pairs:
            group = server.group("g")
            for acceptor in server.acceptors.values():
                group.add(acceptor)
            slow_id = max(server.acceptors)
            # The newest client's provider hangs; the others answer at once.
            slow_provider = pairs[-1][1]
            slow_provider.hanging = True
            outcomes = await group.broadcast(
                lambda client: client.on_message("x"), timeout=0.3 * UNIT
            )
            by_id = {outcome.acceptor_id: outcome for outcome in outcomes}
            assert isinstance(by_id[slow_id].error, wsrpc.RpcTimeoutError)
            assert sorted(o.acceptor_id for o in outcomes if o.ok) == sorted(
                set(server.acceptors) - {slow_id}
            )
            slow_provider.hanging = False
            outcomes = await group.broadcast(lambda client: client.on_message("y"))
            assert all(outcome.ok for outcome in outcomes)


async def test_broadcast_while_members_disconnect() -> None:
    async with running_server(accept_service) as server:
        async with clients(server, 1000, max_concurrent_calls=4) as pairs:
            leaving = [connector for connector, _ in pairs[::10]]
            results = await asyncio.gather(
                server.broadcast(lambda client: client.on_message("news")),
                *(connector.close() for connector in leaving),
            )
            outcomes = results[0]
            assert len(outcomes) == 1000
            failed = [outcome for outcome in outcomes if not outcome.ok]
            assert all(isinstance(o.error, wsrpc.ConnectionClosedError) for o in failed)
            assert len(failed) <= len(leaving)
            stayed = {id(connector) for connector, _ in pairs} - {id(c) for c in leaving}
            for connector, provider in pairs:
                if id(connector) in stayed:
                    assert provider.messages == ["news"]


async def test_notify_is_fire_and_forget() -> None:
    async with running_server(accept_service) as server:
        async with clients(server, 3) as pairs:
            for word in ("ding", "dong"):
                # The call is made at once: each notification sends its own word.
                assert server.notify(lambda client: client.on_message(word)) == 3  # noqa: B023
            async with asyncio.timeout(5 * UNIT):
                for _, provider in pairs:
                    while len(provider.messages) < 2:
                        provider.arrived.clear()
                        await provider.arrived.wait()
            assert [provider.messages for _, provider in pairs] == [["ding", "dong"]] * 3
            assert server.group("empty").notify(lambda client: client.on_message("x")) == 0


async def test_http_requests_beside_the_endpoint() -> None:
    def http_handler(request: wsrpc.HttpRequest) -> wsrpc.HttpResponse | wsrpc.Upgrade | None:
        if request.path == "/health":
            return wsrpc.HttpResponse(200, "ok\n")
        if request.path.startswith("/rpc"):
            return wsrpc.Upgrade(headers=[("Set-Cookie", "session=s1; HttpOnly")])
        return wsrpc.HttpResponse(404, "not found\n", headers=[("X-Why", "no route")])

    # http_handler is a websockets feature: pinned, whatever the tests' transport.
    server: Server = wsrpc.WebSocketServer(transport="websockets")
    await server.open(0, accept_service, http_handler=http_handler)
    try:
        base = f"http://127.0.0.1:{server.port}"

        def get(path: str) -> tuple[int, bytes, str | None]:
            try:
                with urllib.request.urlopen(base + path, timeout=5 * UNIT) as response:
                    return response.status, response.read(), response.headers.get("X-Why")
            except urllib.error.HTTPError as error:
                return error.code, error.read(), error.headers.get("X-Why")

        assert await asyncio.to_thread(get, "/health") == (200, b"ok\n", None)
        assert await asyncio.to_thread(get, "/nope") == (404, b"not found\n", "no route")
        async with ws_connect(url_of(server, "/rpc")) as ws:
            assert ws.response is not None
            assert ws.response.headers["Set-Cookie"] == "session=s1; HttpOnly"
        connector: Connector = wsrpc.WebSocketConnector(None, Client())
        assert dict(connector.response_headers) == {}
        await connector.connect(url_of(server, "/rpc"), timeout=5 * UNIT)
        assert connector.response_headers["set-cookie"] == "session=s1; HttpOnly"
        assert await connector.get_driver().ping() == "pong"
        await connector.close()
    finally:
        await server.close()


async def test_blocking_method_runs_off_the_event_loop() -> None:
    started = threading.Event()
    release = threading.Event()

    class Reports:
        @wsrpc.blocking
        def render(self, month: str) -> str:
            started.set()
            assert release.wait(10 * UNIT)  # blocks its worker thread only
            return f"report {month}"

        def ping(self) -> str:
            return "pong"

    async with running_server(lambda a: a.accept(Reports())) as server:
        connector: Connector = wsrpc.WebSocketConnector(None, Client())
        await connector.connect(url_of(server), timeout=5 * UNIT)
        driver = connector.get_driver()
        report = asyncio.ensure_future(driver.render("may"))
        assert await asyncio.to_thread(started.wait, 5 * UNIT)
        # The event loop is free: other calls are answered meanwhile.
        assert await driver.ping() == "pong"
        release.set()
        assert await report == "report may"
        await connector.close()


async def test_disconnect_hooks_wait_for_connect_hooks() -> None:
    order: list[str] = []
    release = asyncio.Event()
    done = asyncio.Event()

    async with running_server(accept_service) as server:

        @server.on_connect
        async def slow_connect(acceptor: Acceptor) -> None:
            order.append("connect start")
            await release.wait()  # the client leaves while this runs
            order.append("connect end")

        @server.on_disconnect
        def disconnected(acceptor: Acceptor, info: CloseInfo) -> None:
            order.append("disconnect")
            done.set()

        connector: Connector = wsrpc.WebSocketConnector(None, Client())
        await connector.connect(url_of(server), timeout=5 * UNIT)
        await connector.close()
        release.set()
        async with asyncio.timeout(5 * UNIT):
            await done.wait()
    assert order == ["connect start", "connect end", "disconnect"]
