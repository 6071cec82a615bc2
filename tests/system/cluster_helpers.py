"""
Helpers of the cluster tests: a real ``redis-server``, and server nodes in processes.

:class:`RedisServer` runs ``redis-server`` on 127.0.0.1 on a free port,
without persistence; it can be stopped and started again on the same port.
:class:`Node` is one server process (``multiprocessing``, spawn) with a
:class:`~wsrpc.RedisBackplane`; the test drives it over a pipe with
commands (a call through ``server.get_driver(id)``, a group broadcast, a
disconnect...) that run concurrently in the node and answer in any order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import itertools
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Protocol

import wsrpc
from tests.conftest import UNIT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process: 127.0.0.1, a free port, no persistence."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is missing: `make test` installs it"
        self.executable = executable
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (on a new free port the first time, on the same one after)."""
        for _ in range(5):
            if not self.port or self.process is None:
                port = self.port or free_port()
            else:
                port = self.port
            process = subprocess.Popen(
                [self.executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if self._wait_ready(port, process):
                self.port, self.process = port, process
                return
            process.kill()
            process.wait()
        raise RuntimeError("redis-server did not start")

    def _wait_ready(self, port: int, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + 10 * UNIT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False  # the port was taken meanwhile: try another
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=UNIT) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)  # polling a child's readiness, with a deadline
        return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self, *args: str | bytes) -> Any:
        """Run one Redis command (synchronous client), for the tests' own checks."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()


# -- a node ----------------------------------------------------------------------


@dataclasses.dataclass
class Stamp:
    """A rich result: the nodes validate, so it travels as a map and is built again."""

    when: datetime.datetime
    by: str


class ClientRemote(Protocol):
    """What the nodes call on the test's clients."""

    async def later(self, when: datetime.datetime, days: int) -> Stamp: ...
    async def echo(self, value: Any) -> Any: ...
    async def whoami(self) -> str: ...
    async def hang(self) -> None: ...
    async def fail(self) -> None: ...
    async def callback(self, value: int) -> int: ...


class NodeService:
    """What the test's clients call on a node."""

    def __init__(
        self,
        server: wsrpc.WebSocketServer[Any, NodeService, ClientRemote],
        acceptor: wsrpc.WebSocketAcceptor[Any, NodeService, ClientRemote],
    ) -> None:
        self._server = server
        self._acceptor = acceptor

    def my_id(self) -> int:
        return self._acceptor.id

    def join(self, group: str) -> bool:
        return self._server.group(group).add(self._acceptor)

    def leave(self, group: str) -> None:
        self._server.group(group).discard(self._acceptor)

    async def bounce(self, value: int) -> int:
        # A call back into the client while the client's call runs here.
        result: int = await self._acceptor.get_driver().echo(value)
        return result + 1


async def _node(pipe: multiprocessing.connection.Connection, redis_url: str, name: str) -> None:
    # Subscripted and validating: calls to clients convert from ClientRemote.
    server = wsrpc.WebSocketServer[Any, NodeService, ClientRemote](
        backplane=wsrpc.RedisBackplane(redis_url, name=name, socket_timeout=UNIT), validate=True
    )

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, NodeService, ClientRemote]) -> None:
        await acceptor.accept(NodeService(server, acceptor))

    await server.open(0, handler)
    cluster = server._cluster
    assert cluster is not None
    pipe.send(("ready", server.port, cluster.slot, os.getpid()))
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()

    async def run(number: int, command: str, args: tuple[Any, ...]) -> None:
        try:
            value = await _command(server, command, args)
            pipe.send((number, "ok", value))
        except Exception as exc:
            pipe.send((number, "error", (type(exc).__name__, str(exc), getattr(exc, "code", 0))))

    def readable() -> None:
        try:
            number, command, args = pipe.recv()
        except EOFError:
            command = "exit"
        if command == "exit":
            if not done.done():
                done.set_result(None)
            return
        task = loop.create_task(run(number, command, args))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_reader(pipe.fileno(), readable)
    try:
        await done
    finally:
        loop.remove_reader(pipe.fileno())
        for task in tasks:
            task.cancel()
        await server.close()


async def _command(
    server: wsrpc.WebSocketServer[Any, NodeService, ClientRemote],
    command: str,
    args: tuple[Any, ...],
) -> Any:
    if command == "call":
        connection_id, path, call_args, timeout = args
        target: Any = server.get_driver(connection_id, timeout=timeout)
        for name in path.split("."):
            target = getattr(target, name)
        return await target(*call_args)
    if command == "broadcast":
        group, value, timeout = args
        outcomes = await server.group(group).broadcast(
            lambda client: client.echo(value), timeout=timeout
        )
        return [
            (o.acceptor_id, o.value, None if o.error is None else type(o.error).__name__)
            for o in outcomes
        ]
    if command == "broadcast_partial":
        group, value, timeout = args
        try:
            outcomes = await server.group(group).broadcast(
                lambda client: client.echo(value), timeout=timeout
            )
            kind, message = "complete", ""
        except wsrpc.BackplaneError as exc:
            kind, message, outcomes = "incomplete", str(exc), exc.outcomes or []
        return (
            kind,
            message,
            [
                (o.acceptor_id, o.value, None if o.error is None else type(o.error).__name__)
                for o in outcomes
            ],
        )
    if command == "broadcast_later":
        group, when, timeout = args
        outcomes = await server.group(group).broadcast(
            lambda client: client.later(when, 1), timeout=timeout
        )
        return [
            (o.acceptor_id, o.value, None if o.error is None else type(o.error).__name__)
            for o in outcomes
        ]
    if command == "broadcast_hang":
        group, timeout = args
        outcomes = await server.group(group).broadcast(lambda c: c.hang(), timeout=timeout)
        return [(o.acceptor_id, None if o.error is None else type(o.error).__name__)
                for o in outcomes]  # fmt: skip
    if command == "notify":
        group, value = args
        return server.group(group).notify(lambda client: client.echo(value))
    if command == "disconnect":
        connection_id, code, reason = args
        return await server.disconnect(connection_id, code, reason)
    if command == "ids":
        return sorted(server.acceptors)
    if command == "members":
        (group,) = args
        return sorted(acceptor.id for acceptor in server.group(group))
    raise ValueError(f"unknown command {command!r}")


def node_main(pipe: multiprocessing.connection.Connection, redis_url: str, name: str) -> None:
    """A node process: serve until told to exit."""
    asyncio.run(_node(pipe, redis_url, name))


class NodeError(Exception):
    """A command failed in the node: ``kind`` is the exception's type name."""

    def __init__(self, kind: str, message: str, code: int) -> None:
        super().__init__(kind, message, code)
        self.kind = kind
        self.message = message
        self.code = code


class Node:
    """One server process, driven by the test over a pipe."""

    def __init__(self, redis_url: str, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=node_main, args=(child, redis_url, name), daemon=True)
        self.process.start()
        child.close()
        self.port = 0
        self.slot = -1
        self._numbers = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def wait_ready(self) -> None:
        if not self._pipe.poll(30 * UNIT):
            raise RuntimeError("node did not start")
        ready, self.port, self.slot, _ = self._pipe.recv()
        assert ready == "ready"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _read(self) -> None:
        while True:
            try:
                number, status, value = self._pipe.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._waiting.pop(number, None)
            if future is not None:
                if status == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(NodeError(*value))
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(NodeError("NodeGone", "the node process ended", 0))

    async def ask(self, command: str, *args: Any) -> Any:
        number = next(self._numbers)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiting[number] = future
        self._pipe.send((number, command, args))
        return await asyncio.wrap_future(future)

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(10 * UNIT)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): to the others, a node cut off the network."""
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send((0, "exit", ()))
            self.process.join(15 * UNIT)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self._pipe.close()


def start_nodes(redis_url: str, count: int, name: str = "wsrpc-test") -> list[Node]:
    nodes = [Node(redis_url, name) for _ in range(count)]
    for node in nodes:
        node.wait_ready()
    return nodes
