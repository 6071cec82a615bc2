"""
The fast transport: the same API on picows and uvloop.

``pip install 'wsrpc[fast]'`` brings picows and uvloop. Pass
``transport="picows"`` to the server and to the connector, and run the
program with ``uvloop.run()`` instead of ``asyncio.run()``: nothing else
changes. The two transports speak the same wire, so either side could keep
the default (``"websockets"``); this script shows both at once.

Server and client run in this one script, on 127.0.0.1 and a free port::

    python examples/fast.py
"""

from __future__ import annotations

import time
from typing import Protocol

import uvloop

import wsrpc


class Counter:
    """The server's provider."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, amount: int) -> int:
        self.total += amount
        return self.total


class CounterRemote(Protocol):
    async def add(self, amount: int) -> int: ...


Server = wsrpc.WebSocketServer[None, Counter, None]
Acceptor = wsrpc.WebSocketAcceptor[None, Counter, None]


async def count(url: str, transport: wsrpc.TransportName, calls: int) -> float:
    """Make ``calls`` sequential calls over ``transport``; return the calls per second."""
    connector: wsrpc.WebSocketConnector[None, None, CounterRemote] = wsrpc.WebSocketConnector(
        None, transport=transport
    )
    async with connector:
        await connector.connect(url)
        counter = connector.get_driver()
        started = time.perf_counter()
        for _ in range(calls):
            await counter.add(1)
        return calls / (time.perf_counter() - started)


async def main() -> None:
    counter = Counter()

    async def handler(acceptor: Acceptor) -> None:
        await acceptor.accept(counter)

    server: Server = wsrpc.WebSocketServer(transport="picows")
    async with server:
        await server.open(0, handler)
        url = f"ws://127.0.0.1:{server.port}/"
        for transport in ("picows", "websockets"):
            rate = await count(url, transport, 2_000)
            # The rate depends on the machine; tests/test_examples.py reads
            # only the line before it.
            print(f"client on {transport}: 2000 calls answered")
            print(f"  ({rate:,.0f} calls/s on this machine)")
    print(f"total on the server: {counter.total}")


if __name__ == "__main__":
    uvloop.run(main())
