"""
Interoperability with real TGrid peers (npm ``tgrid`` 1.2.1 on Node.js).

Both directions run against the package itself, not a re-implementation:
``tests/interop/client.js`` is a TGrid ``WebSocketConnector`` calling a wsrpc
server, and ``tests/interop/server.js`` is a TGrid server (loopback only)
that a ``WebSocketConnector(codec="tgrid")`` calls. The Node side must be
installed first with ``npm ci --prefix tests/interop`` (``make test`` does);
without ``node`` or that install these tests fail, they do not skip.

A few tests speak TGrid's protocol by hand instead, to send a wsrpc server
the malformed frames no TGrid peer would (and on which TGrid's own server
crashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import wsrpc

from ..conftest import UNIT, AnyAcceptor, accept_with, running_server, url_of

INTEROP = Path(__file__).resolve().parent.parent / "interop"
CLIENT_JS = INTEROP / "client.js"
SERVER_JS = INTEROP / "server.js"
TGRID_VERSION = "1.2.1"
SETUP = "run `npm ci --prefix tests/interop` (make test does it before pytest)"

TOKEN = "secret"
"""The header token both Node scripts and the Python servers here accept."""


@pytest.fixture
def node() -> str:
    """The node executable, once the TGrid side is known to be installed."""
    path = shutil.which("node")
    if path is None:
        pytest.fail(f"`node` (Node.js 18 or later) is not on PATH: install it, then {SETUP}")
    manifest = INTEROP / "node_modules" / "tgrid" / "package.json"
    if not manifest.is_file():
        pytest.fail(f"TGrid is not installed in tests/interop/node_modules: {SETUP}")
    version = json.loads(manifest.read_text())["version"]
    if version != TGRID_VERSION:
        pytest.fail(f"tests/interop has tgrid {version}, not {TGRID_VERSION}: {SETUP}")
    return path


# -- child processes -----------------------------------------------------------


async def spawn(node: str, script: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        node,
        str(script),
        *args,
        cwd=INTEROP,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def reap(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Kill ``process`` if it still runs; drain and close its pipes; wait for it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdin.close()
    async with asyncio.timeout(10 * UNIT):
        out = await process.stdout.read()
        err = await process.stderr.read()
        await process.wait()
    return out, err


async def run_client(node: str, url: str, header: Any, scenario: str) -> Any:
    """Run one scenario of client.js to completion; return the JSON it printed."""
    timeout_ms = str(int(10_000 * UNIT))
    process = await spawn(node, CLIENT_JS, url, json.dumps(header), scenario, timeout_ms)
    try:
        async with asyncio.timeout(30 * UNIT):
            out, err = await process.communicate()
    finally:
        await reap(process)
    assert process.returncode == 0, (
        f"client.js {scenario} exited with {process.returncode}: {err.decode()}"
    )
    lines = out.decode().splitlines()
    assert len(lines) == 1, f"client.js printed {lines!r}; stderr: {err.decode()}"
    return json.loads(lines[0])


@contextlib.asynccontextmanager
async def tgrid_server(node: str) -> AsyncIterator[str]:
    """A TGrid server on 127.0.0.1; yields its base URL; checks it exits cleanly."""
    process = await spawn(node, SERVER_JS)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10 * UNIT):
            line = await process.stdout.readline()
        if not line.startswith(b"PORT "):
            _, err = await reap(process)
            pytest.fail(f"server.js did not start: {line!r} {err.decode()}")
        yield f"ws://127.0.0.1:{int(line.split()[1])}"
        # Closing stdin stops it; a crash during the test shows as a bad status.
        assert process.stdin is not None
        process.stdin.close()
        async with asyncio.timeout(10 * UNIT):
            await process.wait()
        _, err = await reap(process)
        assert process.returncode == 0, f"server.js exited with {process.returncode}: {err!r}"
    finally:
        await reap(process)


# -- a wsrpc server for TGrid clients -------------------------------------------


class Constants:
    def pi(self) -> float:
        return math.pi


class Scientific:
    def __init__(self, state: WsrpcServer) -> None:
        self._state = state
        self.constants = Constants()

    def sqrt(self, x: float) -> float:
        if x < 0:
            raise ValueError("math domain error")
        return math.sqrt(x)

    async def hang(self, tag: str) -> None:
        await self._state.hang(tag)

    def _hidden(self) -> str:
        return "private"


class Session:
    """What the wsrpc server provides to one client (TGrid or wsrpc)."""

    def __init__(self, acceptor: AnyAcceptor, state: WsrpcServer) -> None:
        self._acceptor = acceptor
        self._state = state
        self.scientific = Scientific(state)
        self.secretValue = "the provider's private data"
        self.welcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def add(self, a: int, b: int) -> int:
        return a + b

    def concat(self, *parts: str) -> str:
        return "".join(parts)

    def reset(self) -> None:
        pass

    async def slowDouble(self, x: int) -> int:
        if x == 1:
            # The first of the concurrent calls waits for the third one, so
            # that it finishes last (run_client sends them in one batch).
            await self._state.third_started.wait()
        if x == 4:
            self._state.third_started.set()
        return 2 * x

    def echo(self, value: Any) -> Any:
        return value

    def describe(self, *args: Any) -> list[Any]:
        return [[type(arg).__name__, arg] for arg in args]

    async def greet(self, name: str) -> str:
        reply = await self._acceptor.get_driver().onMessage(f"hello {name}")
        return f"client said: {reply}"

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def peers(self) -> int:
        return len(self._state.server.acceptors)

    async def welcomed(self) -> Any:
        return await asyncio.shield(self.welcome)

    async def hang(self, tag: str) -> None:
        await self._state.hang(tag)

    def _secret(self) -> str:
        return "must not be reachable"

    def secret_(self) -> str:
        return "must not be reachable"


class WsrpcServer:
    """A wsrpc server's handler for these tests, and what it saw."""

    server: wsrpc.WebSocketServer[Any, Any, Any]

    def __init__(self) -> None:
        self.headers: list[Any] = []
        self.paths: list[str] = []
        self.acceptors: list[AnyAcceptor] = []
        self.welcome_replies: list[Any] = []
        self.hanging: list[str] = []
        self.two_hanging = asyncio.Event()
        self.third_started = asyncio.Event()

    async def hang(self, tag: str) -> None:
        self.hanging.append(tag)
        if len(self.hanging) == 2:
            self.two_hanging.set()
        await asyncio.Event().wait()

    async def handler(self, acceptor: AnyAcceptor) -> None:
        header = acceptor.header
        self.headers.append(header)
        self.paths.append(acceptor.path)
        if not isinstance(header, dict) or header.get("token") != TOKEN:
            await acceptor.reject(4003, "bad token")
            return
        session = Session(acceptor, self)
        self.acceptors.append(acceptor)
        await acceptor.accept(session)
        # Call the client at once: for a TGrid client, accept() has made sure
        # that its message handler is installed by now.
        try:
            reply = await acceptor.get_driver(timeout=10 * UNIT).onMessage("welcome")
        except wsrpc.ConnectionClosedError:
            session.welcome.cancel()  # a test closed the connection early
            return
        except wsrpc.WsrpcError as exc:
            session.welcome.set_exception(exc)
            raise
        self.welcome_replies.append(reply)
        session.welcome.set_result(reply)


@contextlib.asynccontextmanager
async def wsrpc_server() -> AsyncIterator[WsrpcServer]:
    state = WsrpcServer()
    async with running_server(state.handler) as server:
        state.server = server
        yield state


def ok(value: Any, typeof: str) -> dict[str, Any]:
    """A call that client.js saw succeed."""
    return {"ok": True, "typeof": typeof, "value": value}


def remote_error(name: str, message: str) -> dict[str, Any]:
    """A call that client.js saw rejected with wsrpc's error object."""
    return {
        "ok": False,
        "error": {
            "typeof": "object",
            "isError": False,
            "constructor": "Object",
            "keys": ["message", "name"],
            "name": name,
            "message": message,
            "hasStack": False,
        },
    }


PRIVATE = (
    "is not callable: every segment must be an identifier that neither starts nor ends with '_'"
)


# -- TGrid client -> wsrpc server ------------------------------------------------


async def test_tgrid_client_calls_a_wsrpc_server(node: str) -> None:
    async with wsrpc_server() as state:
        header = {"token": TOKEN, "user": "ann", "tags": [1, None]}
        result = await run_client(node, url_of(state.server, "/room/7?x=1"), header, "calls")
    assert state.headers == [header]
    assert state.paths == ["/room/7?x=1"]

    assert result["add"] == ok(3, "number")
    assert result["concat"] == ok("wsrpc ♥ tgrid", "string")
    assert result["nested"] == ok(4, "number")  # 4.0 is the JSON number 4
    assert result["nestedDeeper"] == ok(math.pi, "number")
    assert result["void"] == ok(None, "undefined")  # no "value": TGrid's void
    assert result["async"] == ok(42, "number")
    assert result["concurrent"] == ok([2, 5, 8], "object")
    assert result["stateAfterClose"] == 3  # TGrid's CLOSED


async def test_every_json_type_round_trips_from_tgrid(node: str) -> None:
    async with wsrpc_server() as state:
        result = await run_client(node, url_of(state.server), {"token": TOKEN}, "calls")
    echoes = result["echo"]
    assert len(echoes) == 16
    for echo in echoes:
        assert echo["ok"] is True and echo["same"] is True, echo
    assert [echo["typeof"] for echo in echoes] == (
        ["number"] * 8 + ["string"] * 2 + ["boolean"] * 2 + ["object"] * 4
    )
    assert echoes[9]["value"] == 'unicode: é ☃ 𝄞 and "quotes" \\ \n\t\0'
    # A None result goes as TGrid's void: JavaScript sees undefined, not null.
    assert result["echoNull"] == ok(None, "undefined")
    # undefined and null both arrive as None; the other types keep theirs.
    assert result["undefinedArgument"] == ok(
        [
            ["NoneType", None],
            ["NoneType", None],
            ["int", 1],
            ["str", "s"],
            ["list", []],
            ["dict", {}],
        ],
        "object",
    )


async def test_wsrpc_server_calls_back_a_tgrid_client(node: str) -> None:
    async with wsrpc_server() as state:
        result = await run_client(node, url_of(state.server), {"token": TOKEN}, "calls")
    # During a call: greet() calls the client's onMessage before returning.
    assert result["callback"] == ok("client said: ack hello ann", "string")
    # Right after accept(): the call reached TGrid's handler (no race).
    assert state.welcome_replies == ["ack welcome"]
    assert result["welcome"] == ok("ack welcome", "string")
    assert result["received"] == ["welcome", "hello ann"]


async def test_tgrid_client_gets_remote_errors(node: str) -> None:
    async with wsrpc_server() as state:
        result = await run_client(node, url_of(state.server), {"token": TOKEN}, "calls")
    # TGrid rejects with the plain object it received, as it does for its own.
    assert result["error"] == remote_error("ValueError", "boom")
    assert result["nestedError"] == remote_error("ValueError", "math domain error")


async def test_wsrpc_server_refuses_private_members_and_valueof(node: str) -> None:
    async with wsrpc_server() as state:
        result = await run_client(node, url_of(state.server), {"token": TOKEN}, "calls")
    refused = result["refused"]
    assert refused == {
        "private": remote_error("MemberAccessError", f"'_secret' {PRIVATE}"),
        "privateTrailing": remote_error("MemberAccessError", f"'secret_' {PRIVATE}"),
        "nestedPrivate": remote_error("MemberAccessError", f"'scientific._hidden' {PRIVATE}"),
        "dunder": remote_error("MemberAccessError", f"'__class__.__init__' {PRIVATE}"),
        # TGrid itself answers valueOf with the whole provider; wsrpc does not.
        "valueOf": remote_error("MemberAccessError", "no remote method 'valueOf'"),
        "toString": remote_error("MemberAccessError", "no remote method 'toString'"),
        "constructor": remote_error("MemberAccessError", "no remote method 'constructor'"),
        "data": remote_error("MemberAccessError", "'secretValue' is data, not a method"),
        "missing": remote_error("MemberAccessError", "no remote method 'noSuchMethod'"),
    }
    assert "private data" not in json.dumps(result)
    # The refusals did not disturb the connection: later calls worked.
    assert result["peers"] == ok(1, "number")


async def test_wsrpc_server_rejects_a_tgrid_client(node: str) -> None:
    async with wsrpc_server() as state:
        result = await run_client(node, url_of(state.server), {"token": "wrong"}, "reject")
        undefined_header = await run_client(node, url_of(state.server), None, "reject")
    rejected = {
        "rejected": True,
        "state": -1,  # TGrid's NONE: connect() failed
        "error": {
            "typeof": "object",
            "isError": True,
            "constructor": "WebSocketError",
            "keys": ["status"],
            "name": "Error",
            "message": "bad token",
            "status": 4003,
            "hasStack": True,
        },
    }
    assert result == rejected
    assert undefined_header == rejected
    assert state.headers == [{"token": "wrong"}, None]
    assert state.acceptors == []


@pytest.mark.parametrize(
    ("how", "code", "reason"),
    [
        ("acceptor", 4001, "maintenance"),
        ("server", 1001, "server closing"),
        ("acceptor", 1000, ""),
    ],
)
async def test_pending_tgrid_calls_fail_when_the_wsrpc_server_closes(
    node: str, how: str, code: int, reason: str
) -> None:
    async with wsrpc_server() as state:
        client = asyncio.create_task(
            run_client(node, url_of(state.server), {"token": TOKEN}, "close")
        )
        try:
            hanging = asyncio.ensure_future(state.two_hanging.wait())
            done, _ = await asyncio.wait(
                {client, hanging}, timeout=20 * UNIT, return_when=asyncio.FIRST_COMPLETED
            )
            hanging.cancel()
            assert hanging in done, client.result() if client.done() else "timed out"
            assert sorted(state.hanging) == ["first", "second"]
            [acceptor] = state.acceptors
            if how == "acceptor":
                await acceptor.close(code, reason)
            else:
                await state.server.close()
            assert acceptor.state is wsrpc.AcceptorState.CLOSED
            result = await client
        finally:
            client.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client
    [first, second] = result["pending"]
    assert first == second
    if code == 1000:
        # TGrid's own rule: a normal closure rejects with a plain Error.
        assert first == {
            "ok": False,
            "error": {
                "typeof": "object",
                "isError": True,
                "constructor": "Error",
                "keys": [],
                "name": "Error",
                "message": "Connection has been closed.",
                "hasStack": True,
            },
        }
    else:
        assert first == {
            "ok": False,
            "error": {
                "typeof": "object",
                "isError": True,
                "constructor": "WebSocketError",
                "keys": ["status"],
                "name": "Error",
                "message": reason,
                "status": code,
                "hasStack": True,
            },
        }
    assert result["after"]["ok"] is False
    assert "closed" in result["after"]["error"]["message"]
    assert result["state"] == 3  # TGrid's CLOSED


# -- a wsrpc server facing a broken TGrid-speaking peer ---------------------------


class Adder:
    def add(self, a: int, b: int) -> int:
        return a + b


ADD_CALL = (
    '{"uid":1,"listener":"add","parameters":[{"type":"number","value":1},'
    '{"type":"number","value":2}]}'
)


async def assert_serves_tgrid(url: str) -> None:
    """Speak TGrid's protocol by hand: header, "1", one call, its return."""
    async with ws_connect(url) as ws:
        await ws.send('{"header":{"token":"secret"}}')
        assert await ws.recv() == "1"
        await ws.send(ADD_CALL)
        assert json.loads(await ws.recv()) == {"uid": 1, "success": True, "value": 3}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 1007),
        ("{", 1007),
        ("[" * 100_000, 1007),
        ('{"uid":2,"success":true,"value":NaN}', 1007),
        ('{"uid":2,"listener":"add","parameters":[' + "9" * 5000 + "]}", 1007),
        ("null", 1002),
        ("[]", 1002),
        ('{"uid":"2","listener":"add","parameters":[]}', 1002),
        ('{"uid":2,"listener":"add","parameters":[1,2]}', 1002),
        ('{"header":{"token":"secret"}}', 1002),
        ("1", 1002),
        (b"\x93\x02\x01\x90", 1003),
    ],
    ids=lambda value: repr(value[:30]) if isinstance(value, (str, bytes)) else str(value),
)
async def test_wsrpc_server_closes_a_tgrid_connection_that_breaks_the_protocol(
    frame: str | bytes, code: int
) -> None:
    # TGrid's own server process crashes on some of these; wsrpc closes only
    # the offending connection, with the close code that says why.
    async with running_server(accept_with(Adder())) as server:
        async with ws_connect(url_of(server)) as ws:
            await ws.send("{}")
            assert await ws.recv() == "1"
            await ws.send(ADD_CALL)
            assert json.loads(await ws.recv()) == {"uid": 1, "success": True, "value": 3}
            await ws.send(frame)
            async with asyncio.timeout(10 * UNIT):
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == code
        await assert_serves_tgrid(url_of(server))


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", 1007),
        ("[" * 100_000, 1007),
        ("null", 1002),
        ('"header"', 1002),
        ('{"token":"secret"}', 1002),
        ("1", 1002),
        (ADD_CALL, 1002),
    ],
    ids=lambda value: repr(value[:30]) if isinstance(value, str) else str(value),
)
async def test_wsrpc_server_refuses_a_bad_tgrid_header(frame: str, code: int) -> None:
    handled: list[Any] = []

    async def handler(acceptor: AnyAcceptor) -> None:
        handled.append(acceptor.header)
        await acceptor.accept(Adder())

    async with running_server(handler) as server:
        async with ws_connect(url_of(server)) as ws:
            await ws.send(frame)
            async with asyncio.timeout(10 * UNIT):
                with pytest.raises(ConnectionClosed) as info:
                    await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == code
            assert info.value.rcvd.reason.startswith("bad header")
        assert handled == []  # the handler never saw it
        await assert_serves_tgrid(url_of(server))
        assert handled == [{"token": "secret"}]


# -- wsrpc connector -> TGrid server ---------------------------------------------


class Client:
    """The wsrpc connector's provider: what the TGrid server may call."""

    def __init__(self) -> None:
        self.received: list[str] = []

    def onMessage(self, text: str) -> str:
        self.received.append(text)
        return f"hi {text}"


def tgrid_connector(
    header: Any, provider: Client | None = None
) -> wsrpc.WebSocketConnector[Any, Client, Any]:
    return wsrpc.WebSocketConnector(header, provider, codec="tgrid")


async def test_wsrpc_connector_calls_a_tgrid_server(node: str) -> None:
    async with tgrid_server(node) as base:
        async with tgrid_connector({"token": TOKEN, "n": [1.5, None]}, Client()) as connector:
            await connector.connect(f"{base}/room/7?x=1", timeout=10 * UNIT)
            driver = connector.get_driver()
            assert await driver.add(1, 2) == 3
            assert await driver.scientific.sqrt(16) == 4
            assert await driver.scientific.constants.pi() == math.pi
            assert await driver.reset() is None  # void: no value on the wire
            # Concurrent calls complete out of order, each to its caller.
            doubled = await asyncio.gather(
                driver.slowDouble(1), driver.add(2, 3), driver.slowDouble(4)
            )
            assert list(doubled) == [2, 5, 8]
            assert await driver.header() == {"token": TOKEN, "n": [1.5, None]}
            assert await driver.path() == "/room/7?x=1"
            # TGrid has no keyword arguments: refused locally, connection intact.
            with pytest.raises(wsrpc.EncodeError, match="positional arguments only"):
                await driver.add(a=1, b=2)
            # Private names are refused by the driver itself.
            with pytest.raises(AttributeError):
                await driver._secret()
            assert await driver.add(-1, 1) == 0
        assert connector.state is wsrpc.ConnectorState.CLOSED


TGRID_JSON_VALUES: list[Any] = [
    0,
    -1,
    2**53 - 1,
    -(2**53) + 1,
    0.1,
    -1e-300,
    1e300,
    "",
    'unicode: é ☃ 𝄞 "quotes" \\ \n\t\0',
    True,
    False,
    None,
    [],
    {},
    [1, "two", None, [3.5, {"k": [True, False]}], {}],
    {"nested": {"deeper": {"list": [{}, [], ""]}}, "": "empty key", "a.b": None},
]


async def test_every_json_type_round_trips_through_tgrid(node: str) -> None:
    async with tgrid_server(node) as base:
        async with tgrid_connector({"token": TOKEN}) as connector:
            await connector.connect(base, timeout=10 * UNIT)
            driver = connector.get_driver()
            for value in TGRID_JSON_VALUES:
                echoed = await driver.echo(value)
                assert echoed == value and type(echoed) is type(value)
            # Several arguments, as TGrid's typeof sees them.
            assert await driver.describe(None, 1, 2.5, "s", True, [1], {"a": 1}) == [
                {"typeof": "object", "value": None},
                {"typeof": "number", "value": 1},
                {"typeof": "number", "value": 2.5},
                {"typeof": "string", "value": "s"},
                {"typeof": "boolean", "value": True},
                {"typeof": "object", "value": [1]},
                {"typeof": "object", "value": {"a": 1}},
            ]
            # JavaScript has one number type: 1.0 comes back as the integer 1.
            assert await driver.echo(1.0) == 1
            # Values JSON cannot carry fail locally.
            with pytest.raises(wsrpc.EncodeError):
                await driver.echo(b"bytes")
            with pytest.raises(wsrpc.EncodeError):
                await driver.echo(float("nan"))
            assert await driver.echo("still open") == "still open"


async def test_tgrid_server_calls_back_the_wsrpc_client(node: str) -> None:
    client = Client()
    async with tgrid_server(node) as base:
        async with tgrid_connector({"token": TOKEN}, client) as connector:
            await connector.connect(base, timeout=10 * UNIT)
            driver = connector.get_driver()
            # The TGrid server calls onMessage while our call is running.
            assert await driver.greet("bob") == "client said: hi hello bob"
            # It also called onMessage("welcome") as soon as it accepted us.
            assert await driver.welcomed() == {"ok": True, "value": "hi welcome"}
    assert sorted(client.received) == ["hello bob", "welcome"]


async def test_tgrid_server_errors_reach_wsrpc_as_remote_errors(node: str) -> None:
    async with tgrid_server(node) as base:
        async with tgrid_connector({"token": TOKEN}) as connector:
            await connector.connect(base, timeout=10 * UNIT)
            driver = connector.get_driver()

            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.fail("boom")
            assert (info.value.name, info.value.message) == ("TypeError", "boom")
            assert info.value.traceback is not None
            assert info.value.traceback.startswith("TypeError: boom\n")

            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.scientific.sqrt(-1)
            assert (info.value.name, info.value.message) == (
                "RangeError",
                "sqrt of negative number -1",
            )

            # Thrown values that are not Errors.
            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.failWithString("oops")
            assert (info.value.name, info.value.message, info.value.traceback) == (
                "Error",
                "oops",
                None,
            )
            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.failWithObject(5)
            assert (info.value.name, info.value.message) == ("Error", "")

            # TGrid's own member rules.
            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.constructor()
            assert info.value.name == "Error"
            assert "RFC does not allow access to constructor" in info.value.message
            with pytest.raises(wsrpc.RemoteError) as info:
                await driver.noSuchMethod()
            assert info.value.name == "TypeError"

            assert await driver.add(2, 2) == 4  # errors do not break the connection


async def test_tgrid_server_leaks_its_provider_through_valueof(node: str) -> None:
    # Documents the TGrid behaviour that wsrpc's own member rules refuse (see
    # test_wsrpc_server_refuses_private_members_and_valueof): valueOf is not
    # on TGrid's deny list and returns the provider's data.
    async with tgrid_server(node) as base:
        async with tgrid_connector({"token": TOKEN}) as connector:
            await connector.connect(base, timeout=10 * UNIT)
            leaked = await connector.get_driver().valueOf()
    assert leaked["secretValue"] == "the provider's private data"


@pytest.mark.parametrize("header", [{"token": "wrong"}, None, "secret", [TOKEN]])
async def test_tgrid_server_rejects_the_wsrpc_connector(node: str, header: Any) -> None:
    async with tgrid_server(node) as base:
        connector = tgrid_connector(header)
        with pytest.raises(wsrpc.RejectedError) as info:
            await connector.connect(base, timeout=10 * UNIT)
        assert (info.value.code, info.value.reason) == (4003, "bad token")
        assert connector.state is wsrpc.ConnectorState.CLOSED
        # The server is still fine: a good header is accepted.
        async with tgrid_connector({"token": TOKEN}) as good:
            await good.connect(base, timeout=10 * UNIT)
            assert await good.get_driver().add(1, 1) == 2


@pytest.mark.parametrize(
    ("code", "reason", "seen_code"),
    [
        (4002, "going down", 4002),
        (1001, "", 1001),
        # TGrid's close(1000) sends a close frame without a status code.
        (1000, "", 1005),
    ],
)
async def test_pending_wsrpc_calls_fail_when_the_tgrid_server_closes(
    node: str, code: int, reason: str, seen_code: int
) -> None:
    async with tgrid_server(node) as base:
        connector = tgrid_connector({"token": TOKEN})
        await connector.connect(base, timeout=10 * UNIT)
        driver = connector.get_driver()
        async with asyncio.timeout(10 * UNIT):
            outcomes = await asyncio.gather(
                driver.hang(),
                driver.scientific.hang(),
                driver.closeWhilePending(code, reason),
                return_exceptions=True,
            )
        for outcome in outcomes:
            assert isinstance(outcome, wsrpc.ConnectionClosedError), outcome
            assert (outcome.code, outcome.reason) == (seen_code, reason)
        with pytest.raises(wsrpc.ConnectionClosedError) as info:
            await driver.add(1, 2)
        assert info.value.code == seen_code
        async with asyncio.timeout(10 * UNIT):
            await connector.join()
        assert connector.state is wsrpc.ConnectorState.CLOSED


async def test_pending_wsrpc_calls_fail_when_the_tgrid_process_dies(node: str) -> None:
    process = await spawn(node, SERVER_JS)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10 * UNIT):
            line = await process.stdout.readline()
        connector = tgrid_connector({"token": TOKEN})
        await connector.connect(f"ws://127.0.0.1:{int(line.split()[1])}", timeout=10 * UNIT)
        driver = connector.get_driver()
        # Tasks start in order: hang() goes out before add(), answered after it.
        pending = asyncio.ensure_future(driver.hang())
        assert await asyncio.ensure_future(driver.add(1, 2)) == 3
        process.kill()
        async with asyncio.timeout(10 * UNIT):
            with pytest.raises(wsrpc.ConnectionClosedError) as info:
                await pending
            await connector.join()
        assert info.value.code == 1006  # no close frame
    finally:
        await reap(process)


# -- both kinds of clients on one wsrpc server -----------------------------------


class MsgpackClient:
    def __init__(self) -> None:
        self.received: list[str] = []

    def onMessage(self, text: str) -> str:
        self.received.append(text)
        return f"msgpack got {text}"


async def test_one_wsrpc_server_serves_tgrid_and_msgpack_clients_at_once(node: str) -> None:
    async with wsrpc_server() as state:
        msgpack_client = MsgpackClient()
        connector: wsrpc.WebSocketConnector[Any, MsgpackClient, Any] = wsrpc.WebSocketConnector(
            {"token": TOKEN, "kind": "msgpack"}, msgpack_client
        )
        async with connector:
            await connector.connect(url_of(state.server), timeout=10 * UNIT)
            driver = connector.get_driver()
            assert await driver.welcomed() == "msgpack got welcome"

            async def msgpack_calls() -> list[Any]:
                return [
                    await driver.add(2, 3),
                    await driver.scientific.sqrt(9),
                    await driver.greet("max"),
                    # msgpack carries bytes, which TGrid's JSON cannot.
                    await driver.echo(b"\x00\xff"),
                    await driver.echo({"k": [1, None]}),
                ]

            tgrid_result, msgpack_result = await asyncio.gather(
                run_client(node, url_of(state.server), {"token": TOKEN}, "calls"),
                msgpack_calls(),
            )
        assert msgpack_result == [
            5,
            3.0,
            "client said: msgpack got hello max",
            b"\x00\xff",
            {"k": [1, None]},
        ]
        assert msgpack_client.received == ["welcome", "hello max"]
    # Each connection was served with its own codec.
    assert tgrid_result["add"] == ok(3, "number")
    assert tgrid_result["callback"] == ok("client said: ack hello ann", "string")
    assert tgrid_result["received"] == ["welcome", "hello ann"]
    assert tgrid_result["peers"] == ok(2, "number")  # both were connected at once
    assert all(echo["same"] for echo in tgrid_result["echo"])
    assert state.welcome_replies == ["msgpack got welcome", "ack welcome"]
