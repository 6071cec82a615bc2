"""
The examples run, finish and print what they promise.

Each example runs as its own process, as a reader would run it, in
development mode (``-X dev``) so that never-awaited coroutines, unclosed
resources and logged errors show up on stderr, which must stay empty.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import wsrpc
from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
INTEROP = ROOT / "tests" / "interop"
NODE_SETUP = "run `npm ci --prefix tests/interop` (make test does it before pytest)"


def run_example(name: str) -> list[str]:
    """Run ``examples/<name>.py``; return its stdout lines once it exited cleanly."""
    return run_python(str(EXAMPLES / f"{name}.py"))


def python_env() -> dict[str, str]:
    """The environment an example runs in."""
    env = dict(os.environ)
    # Importable even without an installed wsrpc (the script's own directory,
    # not the root, is first on its sys.path).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


SLOW_CALLBACK = re.compile(r"Executing <.*> took \d+\.\d+ seconds$")


def stderr_problems(stderr: str) -> list[str]:
    """
    The lines of a Python example's stderr that mean something is wrong.

    asyncio's debug mode (-X dev) reports callbacks slower than 100 ms: on a
    loaded machine that is the machine, not the example. Anything else (a
    warning, a traceback, a resource leak) is a problem.
    """
    return [line for line in stderr.splitlines() if not SLOW_CALLBACK.match(line)]


def run_python(*args: str) -> list[str]:
    """Run Python with ``args``; return its stdout lines once it exited cleanly."""
    completed = subprocess.run(
        [sys.executable, "-X", "dev", *args],
        cwd=ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert stderr_problems(completed.stderr) == []
    return completed.stdout.splitlines()


def assert_in_order(lines: list[str], expected: list[str]) -> None:
    """Every expected line appears in ``lines``, in this order."""
    position = 0
    for line in expected:
        assert line in lines[position:], f"{line!r} missing after line {position}:\n" + "\n".join(
            lines
        )
        position = lines.index(line, position) + 1


def test_fast() -> None:
    # The same calls over both transports, to a picows server on uvloop.
    lines = run_example("fast")
    assert_in_order(
        lines,
        [
            "client on picows: 2000 calls answered",
            "client on websockets: 2000 calls answered",
            "total on the server: 4000",
        ],
    )
    assert len(lines) == 5


def test_cluster_chat() -> None:
    # Three server processes and a private redis-server (make test installs it).
    assert run_example("cluster_chat") == [
        "alice, bob and carol on three nodes; ids unique: True",
        "alice said 'hello everyone' to 3 members",
        "bob whispered to carol, by her id",
        "carol said 'hey all' to 3 members",
        "alice disconnected bob: True; bob saw 4000 'kicked by alice'",
        "alice said 'bye bob' to 2 members",
        "--- what alice saw ---",
        "<alice> hello everyone",
        "<carol> hey all",
        "<alice> bye bob",
        "--- what bob saw ---",
        "<alice> hello everyone",
        "<carol> hey all",
        "--- what carol saw ---",
        "<alice> hello everyone",
        "<bob> (whisper) psst, carol",
        "<carol> hey all",
        "<alice> bye bob",
    ]


def test_calculator() -> None:
    assert run_example("calculator") == [
        "1 + 2 = 3",
        "7 - 10 = -3",
        "6 * 7 = 42",
        "1 / 4 = 0.25",
        "sqrt(16) = 4.0",
        "pow(2, 10) = 1024.0",
        "squares: [1, 4, 9, 16, 25]",
        "sqrt(-1) failed remotely: ValueError: sqrt of a negative number",
    ]


def test_auth() -> None:
    assert run_example("auth") == [
        "accepted as alice, balance 42",
        "rejected: code 4001, reason 'invalid credentials'",
    ]


def test_chat() -> None:
    # The whole output: the script promises it is deterministic.
    assert run_example("chat") == [
        "alice joined; the room has ['alice']",
        "bob joined; the room has ['alice', 'bob']",
        "carol joined; the room has ['alice', 'bob', 'carol']",
        "another bob was rejected: 'bob' is already in the room (code 4009)",
        "alice said 'hello everyone' to 3 members",
        "bob said 'hi alice' to 3 members",
        "carol said 'hey both' to 3 members",
        "carol left",
        "bob left",
        "alice left",
        "--- what alice saw ---",
        "* alice joined",
        "* bob joined",
        "* carol joined",
        "<alice> hello everyone",
        "<bob> hi alice",
        "<carol> hey both",
        "* carol left (clean close)",
        "* bob left (clean close)",
        "--- what bob saw ---",
        "* bob joined",
        "* carol joined",
        "<alice> hello everyone",
        "<bob> hi alice",
        "<carol> hey both",
        "* carol left (clean close)",
        "--- what carol saw ---",
        "* carol joined",
        "<alice> hello everyone",
        "<bob> hi alice",
        "<carol> hey both",
    ]


def test_push() -> None:
    # The whole output: the ticker runs on a timer, but the script waits for
    # the ticks on events and prints in a fixed order.
    assert run_example("push") == [
        "[http] /ws upgraded (101), Set-Cookie: node=push-1; Path=/; HttpOnly; SameSite=Strict",
        "[ann] connected",
        "[bob] connected",
        '[http] GET /health -> 200 application/json {"status": "ok", "clients": 2}',
        "[server] tick 1 pushed to 2 clients",
        "[server] tick 2 pushed to 2 clients",
        "[server] tick 3 pushed to 2 clients",
        "[ann] ticks received: [1, 2, 3]",
        "[bob] ticks received: [1, 2, 3]",
        "[server] connection #3 answered 'got it'",
        "[bob] messages: ['your export is ready']",
        "[server] bob (connection #3) disconnected: code 1000, clean close",
        "[server] server.acceptors.get(3) -> None",
        "[server] directory: {'ann': 2}",
        '[http] GET /health -> 200 application/json {"status": "ok", "clients": 1}',
        "[server] ann (connection #2) disconnected: code 1001, clean close",
        "[server] closed",
    ]


def test_ticker() -> None:
    # The whole output: the client leaves the live stream after five quotes,
    # and the server's generator sees it (its finally runs).
    assert run_example("ticker") == [
        "[client] ACME #1: 100.25",
        "[client] ACME #2: 100.50",
        "[client] ACME #3: 100.00",
        "[client] ACME #4: 100.25",
        "[client] ACME #5: 100.50",
        "[server] ACME stream closed: the reader left",
        "[client] INITECH history: ['41.50', '40.50', '39.50']",
        "[client] NOPE: KeyError: 'NOPE'",
    ]


def test_threads() -> None:
    lines = run_example("threads")
    # The keys are pbkdf2 outputs: fixed for fixed passwords.
    assert lines == [
        "keys derived by 4 threads: 98c35e42f8cbd74c, b5735649d9e161c2, "
        "ea5ed4a5f520e449, 580514b839d062bf",
        "while derive() runs, ping() -> pong",
        "derive('slow') -> 94ebb64791e53351",
        "the client got: ['hello from a worker thread'] and answered ['thanks']",
        "the client saw the close: 4000 'job done'",
        "server hooks:",
        "  inbox gone: 4000 'job done', clean, by the server",
        "  threads asked to close: 1000 ''",
        "  threads gone: 1000 '', clean, by the client",
    ]


def test_reconnect() -> None:
    # The whole output: the script waits on events and hooks, and the server
    # restarts only once the client has seen the loss and timed a call out.
    assert run_example("reconnect") == [
        "[server 1] accepted a client",
        "[client] server 1: hit #1",
        "[client] server 1: hit #2",
        "[server 1] restarting",
        "[client] the call pending at the restart failed: 1001 (not replayed)",
        "[client] lost the connection (1001 'server closing'): reconnecting",
        "[client] state: connecting",
        "[client] a call with a 0.2 s timeout timed out while the server was down",
        "[server 2] accepted a client",
        "[client] the waiting call: server 2: hit #1",
        "[client] back; state: open, same driver: True",
        "[client] server 2: hit #2",
        "[client] closed: CloseInfo(code=1000, reason='', clean=True, by_peer=False)",
    ]


def test_demo() -> None:
    lines = [line.strip() for line in run_example("demo")]
    assert lines[0].startswith("wsrpc demo: a server listens on ws://127.0.0.1:")
    assert_in_order(
        lines,
        [
            "[server] client #1 sent the right token: accepting it",
            "[client] connected",
            "[client] calc.add(1, 2) -> 3",
            "[client] calc.scientific.sqrt(16) -> 4.0",
            "[client] calling calc.total([1, 2, 3])",
            # The callbacks run while the client's call is pending: before its result.
            "[client] server called on_progress: 1/3, subtotal 1",
            "[client] server called on_progress: 2/3, subtotal 3",
            "[client] server called on_progress: 3/3, subtotal 6",
            "[client] calc.total([1, 2, 3]) -> 6",
            "[client] calc.div(1, 0) raised RemoteError: ZeroDivisionError: division by zero",
            "[server] client #2 sent a bad token: rejecting it with 4001",
            "[client] rejected: code 4001, reason 'bad token'",
            "Done: the server is closed.",
        ],
    )


def node_with_tgrid() -> str:
    """The node executable, once tgrid is known to be installed; else the test fails."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"`node` (Node.js 18 or later) is not on PATH: install it, then {NODE_SETUP}")
    if not (INTEROP / "node_modules" / "tgrid" / "package.json").is_file():
        pytest.fail(f"tgrid is not installed in tests/interop/node_modules: {NODE_SETUP}")
    return node


async def finish(process: asyncio.subprocess.Process) -> None:
    """Kill ``process`` if it still runs, and reap it."""
    if process.returncode is None:
        process.kill()
        await process.communicate()


async def test_tgrid_server() -> None:
    # examples/tgrid_server.py serving examples/tgrid_client.js, a real TGrid
    # client, as the two would run in two terminals.
    node = node_with_tgrid()
    pipe = asyncio.subprocess.PIPE
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "dev",
        str(EXAMPLES / "tgrid_server.py"),
        cwd=ROOT,
        env=python_env(),
        stdin=pipe,
        stdout=pipe,
        stderr=pipe,
    )
    client: asyncio.subprocess.Process | None = None
    try:
        assert server.stdin is not None and server.stdout is not None
        async with asyncio.timeout(30 * UNIT):
            first = await server.stdout.readline()
            if not first.startswith(b"PORT "):
                _, err = await server.communicate()
                pytest.fail(f"tgrid_server.py did not start: {first!r} {err.decode()}")
            url = f"ws://127.0.0.1:{int(first.split()[1])}/"
            client = await asyncio.create_subprocess_exec(
                node, str(EXAMPLES / "tgrid_client.js"), url, cwd=ROOT, stdout=pipe, stderr=pipe
            )
            client_out, client_err = await client.communicate()
            server.stdin.close()  # the server exits when its stdin closes
            server_out, server_err = await server.communicate()
    finally:
        if client is not None:
            await finish(client)
        await finish(server)

    assert client.returncode == 0, client_err.decode()
    assert client_err == b""
    assert client_out.decode().splitlines() == [
        "connected",
        "server says: welcome, ann",
        "1 + 2 = 3",
        "sqrt(16) = 4",  # the float 4.0 is the JavaScript number 4
        "pow(2, 10) = 1024",
        "3 / 3 = 1",
        "div(1, 0) failed: ZeroDivisionError: division by zero",
        "progress 1/3",
        "progress 2/3",
        "progress 3/3",
        "countdown(3) = liftoff",
        "rejected: 4000 a name is required",
        "closed",
    ]
    assert server.returncode == 0, server_err.decode()
    assert stderr_problems(server_err.decode()) == []
    assert server_out.decode().splitlines() == [
        "accepted ann",
        "rejected a client without a name",
        "ann left (code 1005, closed by the client: True)",
    ]


def test_tutorial() -> None:
    # examples/tutorial.py is the tutorial's whole program, character for
    # character (so mypy checks the tutorial's code), and prints what the
    # tutorial says it prints.
    tutorial = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    whole = tutorial.split("## The whole program", 1)[1]
    code = whole.split("```python\n", 1)[1].split("```", 1)[0]
    printed = whole.split("It prints:\n\n```\n", 1)[1].split("```", 1)[0]
    source = (EXAMPLES / "tutorial.py").read_text(encoding="utf-8")
    assert source.split('"""\n\n', 1)[1] == code
    assert run_example("tutorial") == printed.splitlines()


def test_readme_example() -> None:
    # The README's example is the first Python block; it must run as shown.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert run_python("-c", code) == ["3", "4.0"]


def example_scripts() -> list[Path]:
    """Every Python file under examples/, outside installed node packages."""
    return sorted(path for path in EXAMPLES.rglob("*.py") if "node_modules" not in path.parts)


@pytest.mark.parametrize(
    "path", example_scripts(), ids=lambda path: str(path.relative_to(EXAMPLES))
)
def test_every_example_is_tested(path: Path) -> None:
    # A new example must get a test here, not just a file.
    if path.name == "__init__.py":
        return
    if path.parent != EXAMPLES:
        # An example with a folder of its own, examples/<name>/ (a web page and
        # its server, say), has a test module of its own: tests/system/test_<name>.py.
        folder = path.relative_to(EXAMPLES).parts[0]
        module = ROOT / "tests" / "system" / f"test_{folder}.py"
        assert module.is_file(), f"no tests/system/{module.name} for examples/{folder}/"
        return
    assert f"test_{path.stem}" in globals(), f"no test for {path.name}"


def test_asgi_app() -> None:
    # Run as a script: uvicorn in the same process, one client.
    assert run_example("asgi_app") == [
        "1 + 2 = 3",
        "the server sees /rpc/?name=ann from 127.0.0.1",
        "shout reached 1 client(s)",
        "news: hello room",
        "closed by the server: 1012 ",  # uvicorn's own close at shutdown
    ]


async def test_asgi_app_under_uvicorn() -> None:
    # As its docstring runs it: `uvicorn examples.asgi_app:app`.
    from tests.system.test_asgi import asgi_server, http_get

    async with asgi_server("uvicorn", "examples.asgi_app:app") as running:
        assert await http_get(running.port, "/") == (200, b"a web app, with wsrpc at /rpc/\n")
        connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(None)
        await connector.connect(f"{running.base}/rpc/x", timeout=10 * UNIT)
        try:
            remote = connector.get_driver(timeout=10 * UNIT)
            assert await remote.add(2, 3) == 5
            assert await remote.where_am_i() == "/rpc/x from 127.0.0.1"
        finally:
            await connector.close()


def test_workers() -> None:
    # Two worker processes on one port (SO_REUSEPORT): both answer.
    lines = run_example("workers")
    assert re.fullmatch(r"2 workers serve ws://127\.0\.0\.1:\d+/", lines[0]), lines
    assert lines[1:] == [
        "connections answered by 2 different worker processes",
        "workers stopped on SIGTERM, exit codes [0, 0]",
    ]
