"""
A wsrpc server for TGrid clients: a calculator that calls its clients back.

TGrid (the ``tgrid`` npm package) is the TypeScript framework wsrpc is
modelled on. A wsrpc server speaks TGrid's JSON protocol to any client whose
first frame is text, and its own msgpack protocol to clients whose first
frame is binary, on the same port: nothing here is TGrid-specific but the
values, which must fit in JSON.

The server provides a :class:`Calculator` (with a nested ``scientific``
object) and calls each client's provider back: ``notify(text)`` right after
accepting it, and ``progress(done, total)`` during ``countdown(n)``. Clients
send ``{"name": ...}`` as their header; any other header is rejected with
close code 4000.

It listens on 127.0.0.1, on the port given as its only argument or, by
default, one the system picks; its first line of output is ``PORT <n>``. It
runs until its standard input closes (Ctrl-D) or Ctrl-C::

    python examples/tgrid_server.py          # prints PORT 43125, say
    node examples/tgrid_client.js ws://127.0.0.1:43125/

See ``examples/tgrid_client.js`` for the client and ``docs/tgrid.md`` for the
whole story.
"""

from __future__ import annotations

import asyncio
import math
import sys
from typing import Protocol

import wsrpc

# -- the contract ---------------------------------------------------------------
#
# The TypeScript client mirrors these with interfaces (see tgrid_client.js):
#
#   interface IScientific { sqrt(x: number): number; pow(b: number, e: number): number }
#   interface ICalculator {
#     scientific: IScientific;
#     add(a: number, b: number): number;  ...  countdown(n: number): string;
#   }
#   interface IListener { notify(text: string): void; progress(done: number, total: number): void }


class ListenerRemote(Protocol):
    """The client's provider, as this server sees it: every call is awaited."""

    async def notify(self, text: str) -> None: ...
    async def progress(self, done: int, total: int) -> None: ...


# -- the server's provider --------------------------------------------------------


class Scientific:
    def sqrt(self, x: float) -> float:
        if x < 0:
            # Reaches a TGrid caller as the object {name: "ValueError", message: ...}.
            raise ValueError("sqrt of a negative number")
        return math.sqrt(x)

    def pow(self, base: float, exponent: float) -> float:
        return math.pow(base, exponent)


class Calculator:
    """Public methods, and those of ``scientific``, are what clients may call."""

    def __init__(self, listener: ListenerRemote) -> None:
        self.scientific = Scientific()  # a nested provider: "scientific.sqrt"
        self._listener = listener  # the client's driver; "_": out of the client's reach

    def add(self, a: float, b: float) -> float:
        return a + b

    def sub(self, a: float, b: float) -> float:
        return a - b

    def mul(self, a: float, b: float) -> float:
        return a * b

    def div(self, a: float, b: float) -> float:
        return a / b  # 1 / 0 raises ZeroDivisionError, which the caller receives

    async def countdown(self, n: int) -> str:
        """Call the client's ``progress`` n times, then answer."""
        for done in range(1, n + 1):
            await self._listener.progress(done, n)
        return "liftoff"


# The header is untrusted: typed ``object`` and checked in the handler.
Acceptor = wsrpc.WebSocketAcceptor[object, Calculator, ListenerRemote]


async def handler(acceptor: Acceptor) -> None:
    header = acceptor.header
    name = header.get("name") if isinstance(header, dict) else None
    if not isinstance(name, str) or not name:
        print("rejected a client without a name", flush=True)
        await acceptor.reject(4000, "a name is required")
        return
    listener = acceptor.get_driver()  # TGrid's acceptor.getDriver(), before accept()
    await acceptor.accept(Calculator(listener))
    print(f"accepted {name}", flush=True)
    try:
        # Safe at once, even for a TGrid client: accept() has waited until the
        # client can receive calls (a ping/pong round trip after the accept).
        await listener.notify(f"welcome, {name}")
    except wsrpc.WsrpcError as error:
        print(f"could not greet {name}: {error}", flush=True)
    info = await acceptor.join()  # how the connection ended
    # TGrid's close() sends no status code: that arrives as 1005.
    print(f"{name} left (code {info.code}, closed by the client: {info.by_peer})", flush=True)


async def stdin_closed() -> None:
    """Return once standard input reaches its end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


async def main(port: int) -> None:
    async with wsrpc.WebSocketServer[object, Calculator, ListenerRemote]() as server:
        await server.open(port, handler)  # 127.0.0.1 only
        print(f"PORT {server.port}", flush=True)
        await stdin_closed()
    # Leaving the block closed the server and every connection (code 1001).


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    except KeyboardInterrupt:
        pass
