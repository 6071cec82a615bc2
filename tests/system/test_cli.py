"""
The ``wsrpc`` command, run as a process (``python -m wsrpc``) against real
servers on 127.0.0.1: ``call``'s output and exit codes, ``serve`` with one
worker and with two sharing a port, TLS, and the graceful stop on SIGTERM.

Both run on websockets, the default of the command and of the
applications served (the transports' TLS and port sharing are tested on
each in tests/io/test_tls.py and tests/io/test_serving.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import trustme

import wsrpc
from tests.serving_app import Service, handler
from tests.system.test_examples import stderr_problems

from ..conftest import UNIT, url_of
from .cluster_helpers import RedisServer

ROOT = Path(__file__).resolve().parent.parent.parent
PIPE = asyncio.subprocess.PIPE


def env() -> dict[str, str]:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("PYTHONWARNINGS", None)
    return environment


async def wsrpc_command(*args: str) -> tuple[int, str, str]:
    """Run ``python -m wsrpc ARGS``; return its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",
        "-m",
        "wsrpc",
        *args,
        cwd=ROOT,
        env=env(),
        stdout=PIPE,
        stderr=PIPE,
    )
    try:
        async with asyncio.timeout(30 * UNIT):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    # Less the slow callbacks -X dev reports (a loaded machine's, not ours).
    problems = stderr_problems(err.decode())
    return process.returncode, out.decode(), "".join(line + "\n" for line in problems)


@pytest.fixture
async def server() -> AsyncIterator[wsrpc.WebSocketServer[Any, Service, None]]:
    async with wsrpc.WebSocketServer[Any, Service, None]() as server:
        await server.open(0, handler)
        yield server


# -- call -----------------------------------------------------------------------------


async def test_call_prints_the_result_as_json(
    server: wsrpc.WebSocketServer[Any, Service, None],
) -> None:
    assert await wsrpc_command("call", url_of(server), "add", "1", "2.5") == (0, "3.5\n", "")
    value = {"text": "é", "list": [1, None, True], "nested": {"a": [1.5]}}
    code, out, err = await wsrpc_command("call", url_of(server), "echo", json.dumps(value))
    assert (code, json.loads(out), err) == (0, value, "")


async def test_call_prints_bytes_as_documented(
    server: wsrpc.WebSocketServer[Any, Service, None],
) -> None:
    # The server answers msgpack that JSON cannot hold: bytes.
    class Odd:
        def odd(self) -> object:
            return {"raw": b"\x00\xff", "list": [b"", "text"]}

    async def accept(acceptor: wsrpc.WebSocketAcceptor[Any, Any, None]) -> None:
        await acceptor.accept(Odd())

    async with wsrpc.WebSocketServer[Any, Any, None]() as odd:
        await odd.open(0, accept)
        code, out, err = await wsrpc_command("call", url_of(odd), "odd")
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert printed == {
        "raw": {"$bytes": base64.b64encode(b"\x00\xff").decode()},
        "list": [{"$bytes": ""}, "text"],
    }


async def test_call_of_a_method_that_raises_exits_1(
    server: wsrpc.WebSocketServer[Any, Service, None],
) -> None:
    code, out, err = await wsrpc_command("call", url_of(server), "fail", '"boom"')
    assert (code, out, err) == (1, "", "ValueError: boom\n")


async def test_call_with_tgrid_codec(server: wsrpc.WebSocketServer[Any, Service, None]) -> None:
    # The wsrpc server serves TGrid clients too: the same call over JSON frames.
    assert await wsrpc_command("call", "--tgrid", url_of(server), "add", "2", "3") == (
        0,
        "5\n",
        "",
    )


async def test_call_with_a_rejected_header_exits_3(
    server: wsrpc.WebSocketServer[Any, Service, None],
) -> None:
    code, out, err = await wsrpc_command(
        "call", "--header", '"reject me"', url_of(server), "add", "1", "2"
    )
    assert (code, out, err) == (3, "", "rejected: 4003 rejected as asked\n")


async def test_call_of_no_server_exits_3() -> None:
    async with wsrpc.WebSocketServer[Any, Service, None]() as gone:
        await gone.open(0, handler)
        url = url_of(gone)
    code, out, err = await wsrpc_command("call", url, "add", "1", "2")
    assert (code, out) == (3, "")
    assert err.startswith("cannot connect: ")


async def test_call_timeout_exits_4(server: wsrpc.WebSocketServer[Any, Service, None]) -> None:
    code, out, err = await wsrpc_command(
        "call", "--timeout", str(0.5 * UNIT), url_of(server), "hold", "60"
    )
    assert (code, out) == (4, "")
    assert err.startswith("timeout: ")


@pytest.mark.parametrize(
    "args",
    [
        ["call", "ws://127.0.0.1:1/", "add", "not json"],
        ["call", "--header", "{", "ws://127.0.0.1:1/", "add"],
        ["call", "ws://127.0.0.1:1/"],
        ["call", "--keyfile", "key.pem", "wss://127.0.0.1:1/", "add"],
        ["serve", "tests.serving_app:handler"],
        ["serve", "tests.serving_app:handler", "--port", "0", "--workers", "0"],
    ],
)
async def test_usage_errors_exit_2(args: list[str]) -> None:
    code, out, err = await wsrpc_command(*args)
    assert (code, out) == (2, "")
    assert "usage: wsrpc" in err


async def test_call_help_documents_exit_codes() -> None:
    code, out, _ = await wsrpc_command("call", "--help")
    assert code == 0
    assert "exit codes:" in out and '{"$bytes": "<base64>"}' in out


async def test_call_over_tls_with_a_private_ca_and_a_client_certificate(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_context)
    cafile, client = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ca.issue_cert("cli@example.com").private_key_and_cert_chain_pem.write_to_path(str(client))
    async with wsrpc.WebSocketServer[Any, Service, None]() as server:
        await server.open(0, handler, ssl=server_context)
        url = f"wss://127.0.0.1:{server.port}/"
        ok = await wsrpc_command(
            "call", "--cafile", str(cafile), "--certfile", str(client), url, "add", "1", "1"
        )
        assert ok == (0, "2\n", "")
        code, _, err = await wsrpc_command("call", "--cafile", str(cafile), url, "add", "1", "1")
        assert code == 3 and "TLS failed" in err
        code, _, err = await wsrpc_command("call", url, "add", "1", "1")
        assert code == 3 and "certificate verify failed" in err


# -- serve --------------------------------------------------------------------------


class ServiceRemote(Protocol):
    async def pid(self) -> int: ...
    async def loop(self) -> str: ...
    async def connection_id(self) -> int: ...
    async def echo(self, value: object) -> object: ...
    async def hold(self, seconds: float) -> str: ...


class Serving:
    """A ``wsrpc serve`` process, its stderr read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, *args: str) -> Serving:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "dev", "-m", "wsrpc", "serve", *args,
            cwd=ROOT, env=env(), stderr=PIPE,
        )  # fmt: skip
        return cls(process)

    async def line(self, containing: str) -> str:
        """The next stderr line that contains ``containing``."""
        assert self.process.stderr is not None
        while True:
            raw = await self.process.stderr.readline()
            assert raw, f"stderr ended before {containing!r}: {self.lines}"
            line = raw.decode().rstrip("\n")
            if not stderr_problems(line):
                continue
            self.lines.append(line)
            if containing in line:
                return line

    async def rest(self) -> list[str]:
        assert self.process.stderr is not None
        self.lines += stderr_problems((await self.process.stderr.read()).decode())
        return self.lines

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def connected(url: str) -> wsrpc.WebSocketConnector[Any, None, ServiceRemote]:
    client = wsrpc.WebSocketConnector[Any, None, ServiceRemote](None)
    await client.connect(url)
    return client


async def test_serve_two_workers_on_one_port_stop_on_sigterm() -> None:
    serving = await Serving.start(
        "tests.serving_app:handler", "--port", "0", "--workers", "2", "--loop", "uvloop"
    )
    try:
        async with asyncio.timeout(60 * UNIT):
            first = await serving.line("starting 2 workers on port ")
            port = int(first.rsplit(" ", 1)[1])
            workers = {int((await serving.line("wsrpc serving on")).split("pid ")[1][:-1])}
            workers.add(int((await serving.line("wsrpc serving on")).split("pid ")[1][:-1]))
            assert first.startswith("INFO:     wsrpc supervisor")
            assert len(workers) == 2
            url = f"ws://127.0.0.1:{port}/"
            seen: set[int] = set()
            clients = []
            for _ in range(200):  # until both workers answered
                client = await connected(url)
                clients.append(client)
                seen.add(await client.get_driver().pid())
                assert await client.get_driver().loop() == "uvloop"  # --loop reached the worker
                if seen == workers:
                    break
            assert seen == workers
            serving.process.send_signal(signal.SIGTERM)
            infos = [await client.join() for client in clients]
            assert await serving.process.wait() == 0
        assert {info.code for info in infos} == {1001}
        lines = await serving.rest()
        assert sum("stopped (pid" in line for line in lines) == 2
        assert lines[-1] == "INFO:     wsrpc supervisor stopped: workers exited with [0, 0]"
    finally:
        await serving.kill()


async def test_serve_workers_join_one_application_over_redis() -> None:
    # --redis: each worker's server joins one application, so connection ids
    # come from application-wide slots, one per worker (bits 12 to 21).
    redis = RedisServer()
    redis.start()
    serving = await Serving.start(
        "tests.serving_app:handler", "--port", "0", "--workers", "2", "--redis", redis.url
    )
    try:
        async with asyncio.timeout(60 * UNIT):
            first = await serving.line("starting 2 workers on port ")
            port = int(first.rsplit(" ", 1)[1])
            for _ in range(2):
                await serving.line("wsrpc serving on")
            url = f"ws://127.0.0.1:{port}/"
            ids: dict[int, set[int]] = {}
            clients = []
            for _ in range(200):  # until both workers answered
                client = await connected(url)
                clients.append(client)
                remote = client.get_driver()
                ids.setdefault(await remote.pid(), set()).add(await remote.connection_id())
                if len(ids) == 2:
                    break
            assert len(ids) == 2
            every = [i for per_worker in ids.values() for i in per_worker]
            assert len(set(every)) == len(every) == len(clients)
            slots = {pid: {(i >> 12) & 1023 for i in per_worker} for pid, per_worker in ids.items()}
            first_slots, second_slots = slots.values()
            assert len(first_slots) == len(second_slots) == 1 and first_slots != second_slots
            serving.process.send_signal(signal.SIGTERM)
            for client in clients:
                await client.join()
            assert await serving.process.wait() == 0
    finally:
        await serving.kill()
        redis.stop()


def test_serve_redis_needs_a_handler_target() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "wsrpc", "serve", "tests.serving_app:app", "--port", "0",
         "--redis", "redis://127.0.0.1:1/0"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60 * UNIT,
    )  # fmt: skip
    assert completed.returncode == 1  # as every target that cannot be served
    assert "a factory configures its own server" in completed.stderr


async def test_serve_factory_and_grace_on_sigint() -> None:
    # tests.serving_app:app returns a server with max_message_size=4096.
    serving = await Serving.start("tests.serving_app:app", "--port", "0", "--grace", "0.5")
    try:
        async with asyncio.timeout(60 * UNIT):
            line = await serving.line("wsrpc serving on ws://127.0.0.1:")
            assert line.startswith("INFO:     ")
            url = line.split(" on ", 1)[1].split(" ", 1)[0] + "/"
            client = await connected(url)
            remote = client.get_driver()
            assert await remote.echo("small") == "small"
            # The factory's server, which announces its max_message_size.
            with pytest.raises(wsrpc.EncodeError, match="the peer accepts 4096"):
                await remote.echo("x" * 10_000)
            client = await connected(url)
            remote = client.get_driver()
            call = asyncio.ensure_future(remote.hold(60))
            # Calls on one connection start in order: once echo() answered,
            # hold() is running on the server.
            assert await remote.echo(1) == 1
            serving.process.send_signal(signal.SIGINT)
            with pytest.raises(wsrpc.ConnectionClosedError) as closed:
                await call
            assert closed.value.code == 1001
            assert await serving.process.wait() == 0
        lines = await serving.rest()
        assert any("waiting up to 0.5 s for 1 running calls" in line for line in lines), lines
        assert any("grace period over: cancelling 1 running calls" in line for line in lines)
        assert lines[-1].startswith("INFO:     stopped (pid ")
    finally:
        await serving.kill()


async def test_serve_of_a_missing_target_fails() -> None:
    code, _, err = await wsrpc_command("serve", "tests.no_such_module:app", "--port", "0")
    assert code == 1
    assert "cannot serve tests.no_such_module:app" in err
