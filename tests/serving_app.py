"""
A small server application for the tests that run servers in processes of
their own (``tests/io/test_serving.py``, ``tests/system/test_cli.py``).

* ``handler``: accepts every client with a :class:`Service`; what
  ``wsrpc serve tests.serving_app:handler`` serves.
* ``app``: a factory returning a configured server and that handler; what
  ``wsrpc serve tests.serving_app:app`` serves.
* ``python -m tests.serving_app PORT``: serves ``PORT`` with
  ``reuse_port=True``, prints ``READY <port>`` and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import wsrpc


class Service:
    def __init__(self, connection_id: int = 0) -> None:
        self.released = asyncio.Event()
        self._connection_id = connection_id

    def pid(self) -> int:
        return os.getpid()

    def loop(self) -> str:
        """The module of the event loop serving this call (``uvloop`` or ``asyncio...``)."""
        return type(asyncio.get_running_loop()).__module__

    def connection_id(self) -> int:
        """The client's ``acceptor.id`` (application-wide with a backplane)."""
        return self._connection_id

    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, value: object) -> object:
        return value

    def fail(self, message: str) -> None:
        raise ValueError(message)

    async def hold(self, seconds: float) -> str:
        """Answer after ``seconds``, or at once when ``release()`` is called."""
        try:
            await asyncio.wait_for(self.released.wait(), seconds)
        except TimeoutError:
            return "held"
        return "released"

    def release(self) -> None:
        self.released.set()


async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Service, None]) -> None:
    if acceptor.header == "reject me":
        await acceptor.reject(4003, "rejected as asked")
        return
    await acceptor.accept(Service(acceptor.id))


def app() -> tuple[wsrpc.WebSocketServer[Any, Service, None], wsrpc.Handler[Any, Service, None]]:
    """A server with settings of its own, and its handler."""
    return wsrpc.WebSocketServer[Any, Service, None](max_message_size=4096), handler


async def main(port: int) -> None:
    async with wsrpc.WebSocketServer[Any, Service, None]() as server:
        await server.open(port, handler, reuse_port=True)
        print(f"READY {server.port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
