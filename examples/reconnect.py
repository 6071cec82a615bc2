"""
A client that comes back: the server restarts while the client keeps calling.

The client is a reconnecting connector (``reconnect=``): when the server goes
away, the call pending at that moment fails (it is never replayed: the
server may or may not have run it), the connector reconnects with backoff,
sending a fresh header each time (a callable header: tokens that expire),
and a call made while the server is down waits until it is back. The
driver fetched once stays valid throughout. See docs/reconnect.md.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

import wsrpc

Header = dict[str, str]


class Counter:
    """The server's provider; each server process would start from zero."""

    def __init__(self, name: str, reporting: asyncio.Event) -> None:
        self.name = name
        self.hits = 0
        self._reporting = reporting

    def hit(self) -> str:
        self.hits += 1
        return f"{self.name}: hit #{self.hits}"

    async def report(self) -> str:
        self._reporting.set()
        await asyncio.get_running_loop().create_future()  # a long job: never ends here
        return "never"


class CounterRemote(Protocol):
    async def hit(self) -> str: ...

    async def report(self) -> str: ...


def make_handler(name: str, reporting: asyncio.Event) -> wsrpc.Handler[Header, Counter, None]:
    async def handler(acceptor: wsrpc.WebSocketAcceptor[Header, Counter, None]) -> None:
        # A real server would check the token (see examples/auth.py).
        if not acceptor.header.get("token", "").startswith("token-"):
            await acceptor.reject(4001, "bad token")
            return
        print(f"[{name}] accepted a client")
        await acceptor.accept(Counter(name, reporting))

    return handler


async def start_server(
    name: str, port: int, reporting: asyncio.Event
) -> wsrpc.WebSocketServer[Header, Counter, None]:
    server = wsrpc.WebSocketServer[Header, Counter, None]()
    await server.open(port, make_handler(name, reporting))  # port 0: a free port
    return server


async def main() -> None:
    reporting = asyncio.Event()  # set by the server once report() runs
    server = await start_server("server 1", 0, reporting)
    port = server.port

    tokens = itertools.count(1)

    def header() -> Header:
        # Called for every handshake: a token fetched now, say.
        return {"token": f"token-{next(tokens)}"}

    policy = wsrpc.ReconnectPolicy(initial_delay=0.05, max_delay=0.5)
    lost: asyncio.Future[wsrpc.CloseInfo] = asyncio.get_running_loop().create_future()
    back = asyncio.Event()

    async with wsrpc.WebSocketConnector[Header, None, CounterRemote](
        header, reconnect=policy
    ) as connector:
        connector.on_lost(lambda _, info: lost.set_result(info))
        connector.on_back(lambda _: back.set())
        await connector.connect(f"ws://127.0.0.1:{port}/")
        counter = connector.get_driver()
        print(f"[client] {await counter.hit()}")
        print(f"[client] {await counter.hit()}")
        report = asyncio.ensure_future(counter.report())
        await reporting.wait()  # the report is running on the server

        print("[server 1] restarting")
        await server.close()
        try:
            await report
        except wsrpc.ConnectionClosedError as exc:
            print(f"[client] the call pending at the restart failed: {exc.code} (not replayed)")
        info = await lost
        print(f"[client] lost the connection ({info.code} {info.reason!r}): reconnecting")
        print(f"[client] state: {connector.state.value}")

        # The server is down: this call waits for the connection.
        waiting = asyncio.ensure_future(counter.hit())
        try:
            await connector.get_driver(timeout=0.2).hit()
        except wsrpc.RpcTimeoutError:
            print("[client] a call with a 0.2 s timeout timed out while the server was down")

        server = await start_server("server 2", port, reporting)  # the same port
        print(f"[client] the waiting call: {await waiting}")
        await back.wait()
        print(
            f"[client] back; state: {connector.state.value}, same driver: "
            f"{connector.get_driver() is counter}"
        )
        print(f"[client] {await counter.hit()}")
    print(f"[client] closed: {connector.close_info}")
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
