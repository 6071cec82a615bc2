"""
TGrid's idioms, unchanged: a driver exists as soon as its acceptor or connector.

The pattern of TGrid's own examples is to give the provider its peer's driver
before accepting (``acceptor.getDriver()`` then ``accept(provider)``), or to
give a client's provider the server's driver before connecting. These tests
hold wsrpc to the rule: such a driver refuses calls at once with
``StateError`` until the connection is open, is the same working object
afterwards, and fails with ``ConnectionClosedError`` once it is closed. Also
here: provider errors are logged where operators can see them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import pytest

import wsrpc

from ..conftest import UNIT, running_server, url_of

Header = dict[str, str]


class ClientRemote(Protocol):
    async def notify(self, text: str) -> str: ...
    async def stall(self) -> None: ...


class ChatRemote(Protocol):
    async def say(self, text: str) -> str: ...
    async def shout(self, text: str) -> str: ...
    async def fail(self) -> None: ...


class ChatService:
    """The server's provider, holding its own client's driver."""

    def __init__(self, client: ClientRemote) -> None:
        self.client = client

    async def say(self, text: str) -> str:
        return "client answered " + await self.client.notify(text)

    def shout(self, text: str) -> str:
        return text + "!"

    async def fail(self) -> None:
        raise ValueError("out of coffee")

    def fail_plain(self) -> None:
        raise KeyError("no such room")


class Client:
    """The connector's provider."""

    async def notify(self, text: str) -> str:
        return text.upper()

    async def stall(self) -> None:
        await asyncio.Event().wait()  # until cancelled


Server = wsrpc.WebSocketServer[Header, ChatService, ClientRemote]
Acceptor = wsrpc.WebSocketAcceptor[Header, ChatService, ClientRemote]
Connector = wsrpc.WebSocketConnector[Header, Client, ChatRemote]


async def test_the_provider_gets_its_clients_driver_before_accept() -> None:
    async def handler(acceptor: Acceptor) -> None:
        client = acceptor.get_driver()  # TGrid: acceptor.getDriver() before accept()
        await acceptor.accept(ChatService(client))

    async with running_server(handler) as server, Connector({}, Client()) as connector:
        await connector.connect(url_of(server), timeout=5 * UNIT)
        assert await connector.get_driver().say("hi") == "client answered HI"


async def test_calls_before_accept_fail_at_once_and_close_nothing() -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(acceptor: Acceptor) -> None:
        try:
            client = acceptor.get_driver()
            timed = acceptor.get_driver(timeout=0.2 * UNIT)
            with pytest.raises(wsrpc.StateError, match="not accepted") as refused:
                await client.notify("too early")
            seen.append(str(refused.value))
            assert acceptor.state is wsrpc.AcceptorState.ACCEPTING  # nothing closed
            await acceptor.accept(ChatService(client))
            assert acceptor.get_driver() is client  # the same object, now working
            seen.append(await client.notify("now"))
            # The timeout given before accept() keeps its meaning after it.
            with pytest.raises(wsrpc.RpcTimeoutError):
                await timed.stall()
            seen.append("timed out")
        finally:
            done.set()

    async with running_server(handler) as server, Connector({}, Client()) as connector:
        await connector.connect(url_of(server), timeout=5 * UNIT)
        await asyncio.wait_for(done.wait(), 5 * UNIT)
    assert seen == [
        "cannot call 'notify': the client is not accepted yet; calls through this "
        "driver work once accept() has been called",
        "NOW",
        "timed out",
    ]


async def test_the_driver_fails_with_connection_closed_after_the_close() -> None:
    drivers: asyncio.Queue[tuple[Acceptor, ClientRemote]] = asyncio.Queue()

    async def handler(acceptor: Acceptor) -> None:
        client = acceptor.get_driver()
        await acceptor.accept(ChatService(client))
        drivers.put_nowait((acceptor, client))

    async with running_server(handler) as server:
        async with Connector({}, Client()) as connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            acceptor, client = await asyncio.wait_for(drivers.get(), 5 * UNIT)
            await connector.close(4000, "bye")
        await asyncio.wait_for(acceptor.join(), 5 * UNIT)
        with pytest.raises(wsrpc.ConnectionClosedError) as closed:
            await client.notify("too late")
        assert (closed.value.code, closed.value.reason) == (4000, "bye")


async def test_a_rejected_clients_driver_fails_with_the_rejection() -> None:
    drivers: list[ClientRemote] = []

    async def handler(acceptor: Acceptor) -> None:
        drivers.append(acceptor.get_driver())
        await acceptor.reject(4001, "bad token")

    async with running_server(handler) as server:
        connector = Connector({}, Client())
        with pytest.raises(wsrpc.RejectedError):
            await connector.connect(url_of(server), timeout=5 * UNIT)
        # The connector's own driver tells the same story.
        with pytest.raises(wsrpc.ConnectionClosedError) as closed:
            await connector.get_driver().say("hi")
        assert closed.value.code == 4001
    with pytest.raises(wsrpc.ConnectionClosedError) as closed:
        await drivers[0].notify("hi")
    assert (closed.value.code, closed.value.reason) == (4001, "bad token")


class Relay:
    """A client provider that calls the server back through the connector's driver."""

    server: ChatRemote

    async def notify(self, text: str) -> str:
        return await self.server.shout(text)  # a callback inside the server's call

    async def stall(self) -> None:
        await asyncio.Event().wait()


async def test_a_connectors_driver_before_connect() -> None:
    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(ChatService(acceptor.get_driver()))

    async with running_server(handler) as server:
        relay = Relay()
        connector = wsrpc.WebSocketConnector[Header, Relay, ChatRemote]({}, relay)
        relay.server = chat = connector.get_driver()  # TGrid: connector.getDriver()
        with pytest.raises(wsrpc.StateError, match="not connected"):
            await chat.say("early")
        assert connector.state is wsrpc.ConnectorState.NONE  # nothing started
        assert connector.url == ""
        async with connector:
            await connector.connect(url_of(server), timeout=5 * UNIT)
            assert connector.url == url_of(server)
            assert connector.get_driver() is chat
            assert await chat.say("x") == "client answered x!"
        with pytest.raises(wsrpc.ConnectionClosedError) as closed:
            await chat.say("late")
        assert closed.value.code == 1000


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_get_driver_refuses_a_bad_timeout(timeout: float) -> None:
    connector = Connector({}, Client())
    with pytest.raises(ValueError, match="timeout"):
        connector.get_driver(timeout=timeout)


# -- provider errors in the log ---------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"), [(None, logging.INFO), (logging.DEBUG, logging.DEBUG)]
)
async def test_a_provider_error_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture, level: int | None, expected: int
) -> None:
    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(ChatService(acceptor.get_driver()))

    options: dict[str, Any] = {} if level is None else {"call_error_log_level": level}
    caplog.set_level(logging.DEBUG, logger="wsrpc")
    async with running_server(handler, **options) as server, Connector({}, Client()) as connector:
        await connector.connect(url_of(server), timeout=5 * UNIT)
        with pytest.raises(wsrpc.RemoteError, match="out of coffee"):
            await connector.get_driver().fail()
        remote: Any = connector.get_driver()
        with pytest.raises(wsrpc.RemoteError, match="no such room"):
            await remote.fail_plain()  # a plain method: no task, same log
    records = [r for r in caplog.records if r.name == "wsrpc" and r.exc_info]
    assert [(r.levelno, type(r.exc_info[1]).__name__) for r in records if r.exc_info] == [
        (expected, "ValueError"),
        (expected, "KeyError"),
    ]
    message = records[0].getMessage()
    assert "'fail' raised ValueError" in message and "127.0.0.1" in message


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_provider_errors_are_never_logged_above_info(level: int) -> None:
    with pytest.raises(ValueError, match="call_error_log_level"):
        wsrpc.WebSocketServer(call_error_log_level=level)
    with pytest.raises(ValueError, match="call_error_log_level"):
        wsrpc.WebSocketConnector(None, call_error_log_level=level)


# -- close codes are plain ints ----------------------------------------------------


async def test_close_codes_are_plain_ints_everywhere() -> None:
    # 4001 or 1012 cannot be CloseCode members, so no code is one: the same
    # type whatever path produced it (a default argument, a received frame).
    accepted: asyncio.Queue[Acceptor] = asyncio.Queue()

    async def handler(acceptor: Acceptor) -> None:
        if acceptor.header.get("token") != "ok":
            await acceptor.reject()  # the default code, CloseCode.POLICY_VIOLATION
            return
        await acceptor.accept(ChatService(acceptor.get_driver()))
        accepted.put_nowait(acceptor)

    async with running_server(handler) as server:
        with pytest.raises(wsrpc.RejectedError) as rejected:
            await Connector({}, Client()).connect(url_of(server), timeout=5 * UNIT)
        connector = Connector({"token": "ok"}, Client())
        await connector.connect(url_of(server), timeout=5 * UNIT)
        acceptor = await asyncio.wait_for(accepted.get(), 5 * UNIT)
        await connector.close()  # the default code, CloseCode.NORMAL
        client_info = await connector.join()
        server_info = await acceptor.join()
        with pytest.raises(wsrpc.ConnectionClosedError) as closed:
            await connector.get_driver().say("late")
    codes = [rejected.value.code, client_info.code, server_info.code, closed.value.code]
    assert codes == [1008, 1000, 1000, 1000]
    assert [type(code) for code in codes] == [int] * 4
    assert type(wsrpc.CloseInfo(wsrpc.CloseCode.NORMAL, "", True, False).code) is int
