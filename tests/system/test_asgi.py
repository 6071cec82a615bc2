"""
wsrpc inside an ASGI app (``WebSocketServer.asgi()``), under real uvicorn
and hypercorn processes.

Each test starts the ASGI server on ``tests/asgi_app.py`` (a Starlette app:
``/health`` beside wsrpc mounted at ``/rpc``) on a free port, and calls it
with wsrpc clients, TGrid clients (``tests/interop/client.js``) or a raw
WebSocket client for what no wsrpc client sends. Ending the server process
must leave its stderr free of tracebacks and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import wsrpc
from tests.asgi_app import MAX_MESSAGE_SIZE, TOKEN
from tests.conftest import UNIT
from tests.io.tcp_proxy import TcpProxy

from .test_tgrid_interop import node, run_client

__all__ = ["node"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parent.parent.parent
SERVERS = ["uvicorn", "hypercorn"]
READY = {"uvicorn": b"Uvicorn running on", "hypercorn": b"Running on"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(server: str, port: int, module: str) -> list[str]:
    if server == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # X-Forwarded-For from the loopback sets the scope's client.
            "--proxy-headers",
            "--forwarded-allow-ips=127.0.0.1",
        ]
    return [sys.executable, "-m", "hypercorn", module, "--bind", f"127.0.0.1:{port}"]


@dataclass
class Running:
    """An ASGI server process serving the app; ``base`` is ``ws://127.0.0.1:<port>``."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    stderr: list[bytes] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


async def _collect(
    process: asyncio.subprocess.Process, into: list[bytes], ready: asyncio.Event, marker: bytes
) -> None:
    assert process.stderr is not None
    async for line in process.stderr:
        into.append(line)
        if marker in line:
            ready.set()
    ready.set()  # exited: the caller sees it


@contextlib.asynccontextmanager
async def asgi_server(server: str, module: str = "tests.asgi_app:app") -> AsyncIterator[Running]:
    """Run ``module`` under ``server`` on a free port until the block ends."""
    for _attempt in range(5):
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            *command(server, port, module),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        running = Running(server, port, process)
        ready = asyncio.Event()
        reader = asyncio.ensure_future(_collect(process, running.stderr, ready, READY[server]))
        try:
            async with asyncio.timeout(30 * UNIT):
                await ready.wait()
        except TimeoutError:
            process.kill()
            raise
        if process.returncode is None and not reader.done():
            break
        await process.wait()
        await reader
        log = b"".join(running.stderr).decode()
        if "address already in use" not in log.lower():
            pytest.fail(f"{server} did not start:\n{log}")
    else:
        pytest.fail(f"{server} found no free port")
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(30 * UNIT):
            await process.wait()
            await reader
    log = b"".join(running.stderr).decode()
    assert "Traceback" not in log and "ERROR" not in log, log


@pytest.fixture(params=SERVERS)
async def running(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    async with asgi_server(request.param) as running:
        yield running


class Client:
    """A wsrpc client's provider: the server calls it back."""

    def __init__(self) -> None:
        self.received: list[str] = []

    def onMessage(self, text: str) -> str:
        self.received.append(text)
        return f"ack {text}"

    async def wait(self) -> None:
        await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[tuple[Any, Client]]:
    provider = Client()
    connector: wsrpc.WebSocketConnector[Any, Client, Any] = wsrpc.WebSocketConnector(
        {"token": TOKEN}, provider, **options
    )
    await connector.connect(url, timeout=10 * UNIT)
    try:
        yield connector.get_driver(timeout=10 * UNIT), provider
    finally:
        await connector.close()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(10 * UNIT):
            response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


# -- wsrpc clients ---------------------------------------------------------------


async def test_calls_callbacks_and_the_request_from_the_scope(running: Running) -> None:
    headers = [("X-Test", "yes"), ("X-Forwarded-For", "203.0.113.7")]
    async with client(f"{running.base}/rpc/room/7?x=1", additional_headers=headers) as (
        driver,
        provider,
    ):
        assert await driver.add(1, 2) == 3
        assert await driver.echo({"a": [1, "b", None]}) == {"a": [1, "b", None]}
        assert await driver.greet("ann") == "client said: ack hello ann"
        assert provider.received == ["hello ann"]
        seen = await driver.whoami()
    # uvicorn runs with --proxy-headers: the forwarded address is the client's.
    ip = "203.0.113.7" if running.name == "uvicorn" else "127.0.0.1"
    assert seen == {
        "ip": ip,
        "path": "/rpc/room/7?x=1",  # as the client sent it, the mount's prefix included
        "test_header": "yes",
        "codec": "msgpack",
        "peers": 1,
    }


async def test_http_routes_beside_wsrpc(running: Running) -> None:
    assert await http_get(running.port, "/health") == (200, b"ok")
    status, body = await http_get(running.port, "/rpc/")
    assert status == 404 and b"wsrpc" in body


async def test_a_reject_reaches_the_client_with_its_code_and_reason(running: Running) -> None:
    connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector(
        {"token": "wrong"}
    )
    with pytest.raises(wsrpc.RejectedError) as caught:
        await connector.connect(f"{running.base}/rpc/", timeout=10 * UNIT)
    assert (caught.value.code, caught.value.reason) == (4003, "bad token")


async def test_a_dead_peer_is_detected_and_its_calls_fail(running: Running) -> None:
    # The client sits behind a proxy that freezes: the server's keepalive
    # (a probe call, ASGI having no ping) goes unanswered, and the server's
    # call to that client fails instead of waiting for ever.
    async with TcpProxy(running.port) as proxy:
        frozen_url = f"ws://127.0.0.1:{proxy.port}/rpc/"
        async with (
            # Its close handshake cannot complete: close_timeout bounds the wait.
            client(frozen_url, ping_interval=None, close_timeout=UNIT) as (frozen, _),
            client(f"{running.base}/rpc/") as (watcher, _),
        ):
            await frozen.call_me_and_wait("frozen")
            proxy.stall()
            assert await watcher.outcome("frozen") == ["ConnectionClosedError", 1011]


async def test_a_message_over_max_message_size_closes_with_1009(running: Running) -> None:
    async with ws_connect(f"{running.base}/rpc/") as ws:
        await ws.send(b"\x00" * (MAX_MESSAGE_SIZE + 1))
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(10 * UNIT):
                await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1009


async def test_an_origin_outside_origins_gets_403(running: Running) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with ws_connect(f"{running.base}/rpc/", origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert caught.value.response.status_code == 403
    # An allowed origin is served.
    async with ws_connect(f"{running.base}/rpc/", origin="https://good.example") as ws:  # type: ignore[arg-type]
        assert ws.response is not None and ws.response.status_code == 101


async def test_the_close_request_hook_runs_with_the_peers_code() -> None:
    # uvicorn passes the client's close code on; hypercorn reports every
    # close a client starts as 1006, so the hook cannot run there.
    async with asgi_server("uvicorn") as running, client(f"{running.base}/rpc/") as (watcher, _):
        connector: wsrpc.WebSocketConnector[Any, None, Any] = wsrpc.WebSocketConnector(
            {"token": TOKEN}
        )
        await connector.connect(f"{running.base}/rpc/", timeout=10 * UNIT)
        await connector.get_driver().watch_close_request("leaving")
        await connector.close(4001, "bye")
        assert await watcher.close_request("leaving") == [4001, "bye"]


# -- TGrid clients -----------------------------------------------------------------


async def test_a_tgrid_client_calls_and_is_called(running: Running, node: str) -> None:
    url = f"{running.base}/rpc/tgrid"
    result = await run_client(node, url, {"token": TOKEN}, "calls")
    assert result["add"] == {"ok": True, "typeof": "number", "value": 3}
    assert result["callback"] == {
        "ok": True,
        "typeof": "string",
        "value": "client said: ack hello ann",
    }
    # The server called the client right after accepting it: not lost.
    assert result["welcome"] == {"ok": True, "typeof": "string", "value": "ack welcome"}
    assert result["received"] == ["welcome", "hello ann"]
    assert result["stateAfterClose"] == 3


async def test_a_tgrid_client_is_rejected_with_the_code_and_reason(
    running: Running, node: str
) -> None:
    result = await run_client(node, f"{running.base}/rpc/", {"token": "wrong"}, "reject")
    assert result["rejected"] is True
    assert (result["error"]["status"], result["error"]["message"]) == (4003, "bad token")
