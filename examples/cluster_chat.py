"""
A chat room served by three processes, joined into one application by Redis.

Each process runs a :class:`wsrpc.WebSocketServer` with a
:class:`wsrpc.RedisBackplane`; alice, bob and carol each connect to a
different one. Nothing in the chat's code says where a member is:

* ``room.add(acceptor)`` adds a member on its own node, and
  ``room.broadcast(lambda client: client.on_message(name, text))`` calls
  every member on every node, returning one outcome per member;
* ``server.get_driver(connection_id)`` calls a client by its id, whichever
  node holds it (ids are unique across the application: store them
  anywhere);
* ``server.disconnect(connection_id, code, reason)`` closes it, wherever.

The lambda given to a broadcast must make exactly one call through the
driver and return it: for members on other nodes it is recorded here and
sent as data (path and arguments), never as code.

Run it with a Redis URL, or with none to start a private ``redis-server``
(it must be on the PATH; ``make test`` installs it)::

    python examples/cluster_chat.py [redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import shutil
import socket
import subprocess
import sys
import time
from typing import Protocol

import wsrpc

APPLICATION = "chat-example"


class ChatClientRemote(Protocol):
    async def on_message(self, sender: str, text: str) -> None: ...


class RoomRemote(Protocol):
    async def join(self, name: str) -> int: ...
    async def send(self, text: str) -> int: ...
    async def whisper(self, connection_id: int, text: str) -> None: ...
    async def kick(self, connection_id: int) -> bool: ...


Server = wsrpc.WebSocketServer[None, "Session", ChatClientRemote]
Acceptor = wsrpc.WebSocketAcceptor[None, "Session", ChatClientRemote]


class Session:
    """One member's view of the room, on whichever node it connected to."""

    def __init__(self, server: Server, acceptor: Acceptor) -> None:
        self._server = server
        self._acceptor = acceptor
        self._name = "?"

    def join(self, name: str) -> int:
        """Enter the room as ``name``; return this connection's id."""
        self._name = name[:20]
        self._server.group("room").add(self._acceptor)
        return self._acceptor.id

    async def send(self, text: str) -> int:
        """Say ``text`` to the whole room, on every node; how many got it."""
        name = self._name
        outcomes = await self._server.group("room").broadcast(
            lambda client: client.on_message(name, text), timeout=5.0
        )
        return sum(outcome.ok for outcome in outcomes)

    async def whisper(self, connection_id: int, text: str) -> None:
        """Say ``text`` to one member, by its id, on whatever node it is."""
        await self._server.get_driver(connection_id).on_message(self._name, f"(whisper) {text}")

    async def kick(self, connection_id: int) -> bool:
        return await self._server.disconnect(connection_id, 4000, f"kicked by {self._name}")


async def serve(pipe: multiprocessing.connection.Connection, redis_url: str) -> None:
    """One node: serve until the pipe says stop."""
    server: Server = wsrpc.WebSocketServer(
        backplane=wsrpc.RedisBackplane(redis_url, name=APPLICATION)
    )

    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(Session(server, acceptor))

    async with server:
        await server.open(0, handler)
        pipe.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)


def node(pipe: multiprocessing.connection.Connection, redis_url: str) -> None:
    asyncio.run(serve(pipe, redis_url))


class ChatClient:
    """A member's provider: what the nodes call on it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def on_message(self, sender: str, text: str) -> None:
        self.lines.append(f"<{sender}> {text}")


async def chat(ports: list[int]) -> None:
    names = ["alice", "bob", "carol"]
    clients = {name: ChatClient() for name in names}
    connectors: dict[str, wsrpc.WebSocketConnector[None, ChatClient, RoomRemote]] = {}
    rooms: dict[str, RoomRemote] = {}
    ids: dict[str, int] = {}
    for name, port in zip(names, ports, strict=True):
        connector: wsrpc.WebSocketConnector[None, ChatClient, RoomRemote]
        connector = wsrpc.WebSocketConnector(None, clients[name])
        await connector.connect(f"ws://127.0.0.1:{port}/")
        connectors[name], rooms[name] = connector, connector.get_driver()
        ids[name] = await rooms[name].join(name)
    print(f"alice, bob and carol on three nodes; ids unique: {len(set(ids.values())) == 3}")
    print(f"alice said 'hello everyone' to {await rooms['alice'].send('hello everyone')} members")
    await rooms["bob"].whisper(ids["carol"], "psst, carol")
    print("bob whispered to carol, by her id")
    print(f"carol said 'hey all' to {await rooms['carol'].send('hey all')} members")
    kicked = await rooms["alice"].kick(ids["bob"])
    info = await connectors["bob"].join()
    print(f"alice disconnected bob: {kicked}; bob saw {info.code} {info.reason!r}")
    print(f"alice said 'bye bob' to {await rooms['alice'].send('bye bob')} members")
    for name in ("alice", "carol"):
        await connectors[name].close()
    for name in names:
        print(f"--- what {name} saw ---")
        for line in clients[name].lines:
            print(line)


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free port, without persistence."""
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not on the PATH: give a Redis URL instead")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:  # wait until it answers
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def main() -> None:
    redis: subprocess.Popen[bytes] | None = None
    if len(sys.argv) > 1:
        redis_url = sys.argv[1]
    else:
        redis, redis_url = start_redis()
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    try:
        for _ in range(3):
            parent, child = context.Pipe()
            process = context.Process(target=node, args=(child, redis_url))
            process.start()
            pipes.append(parent)
            processes.append(process)
        ports = [pipe.recv() for pipe in pipes]
        asyncio.run(chat(ports))
    finally:
        for pipe in pipes:
            pipe.send("stop")
        for process in processes:
            process.join(15)
        if redis is not None:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    main()
