"""
A narrated tour of wsrpc, in one process: what ``make demo`` runs.

It starts a server and a client on 127.0.0.1 and walks through:

1. the header handshake: the client sends a token, the server accepts it;
2. typed calls, including one on a nested provider (``calc.scientific``);
3. a call during which the server calls the client back;
4. a remote error: the server's method raises, the client gets
   :exc:`wsrpc.RemoteError`;
5. a client with a bad token, rejected with a close code and a reason.

Run it::

    python examples/demo.py
"""

from __future__ import annotations

import asyncio
import hmac
import math
from typing import Protocol, TypedDict

import wsrpc

TOKEN = "let-me-in"


def step(title: str) -> None:
    print(f"\n== {title}")


def server_says(text: str) -> None:
    print(f"   [server] {text}")


def client_says(text: str) -> None:
    print(f"   [client] {text}")


# -- the contract, shared by both sides ---------------------------------------


class Header(TypedDict):
    token: str


class ScientificRemote(Protocol):
    async def sqrt(self, x: float) -> float: ...


class CalculatorRemote(Protocol):
    """The server's provider as the client sees it: every method is awaited."""

    scientific: ScientificRemote

    async def add(self, a: int, b: int) -> int: ...
    async def div(self, a: float, b: float) -> float: ...
    async def total(self, numbers: list[int]) -> int: ...


class ListenerRemote(Protocol):
    """The client's provider as the server sees it."""

    async def on_progress(self, done: int, count: int, subtotal: int) -> None: ...


# -- the server ---------------------------------------------------------------


class Scientific:
    def sqrt(self, x: float) -> float:
        return math.sqrt(x)


class Calculator:
    def __init__(self, listener: ListenerRemote) -> None:
        self.scientific = Scientific()
        # The client's driver, kept to call the client back. Underscored
        # attributes are never reachable remotely.
        self._listener = listener

    def add(self, a: int, b: int) -> int:
        return a + b

    def div(self, a: float, b: float) -> float:
        return a / b  # b == 0 raises ZeroDivisionError, which the caller receives

    async def total(self, numbers: list[int]) -> int:
        # Async, because it awaits the client: the client's call is still
        # pending while the server calls the client's provider.
        subtotal = 0
        for done, number in enumerate(numbers, start=1):
            subtotal += number
            await self._listener.on_progress(done, len(numbers), subtotal)
        return subtotal


async def handler(acceptor: wsrpc.WebSocketAcceptor[Header, Calculator, ListenerRemote]) -> None:
    header: object = acceptor.header  # untrusted: check its shape before use
    token = header.get("token") if isinstance(header, dict) else None
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), TOKEN.encode()):
        server_says(f"client #{acceptor.id} sent a bad token: rejecting it with 4001")
        await acceptor.reject(4001, "bad token")
        return
    server_says(f"client #{acceptor.id} sent the right token: accepting it")
    # The provider gets its client's driver before accept(), as in TGrid.
    await acceptor.accept(Calculator(acceptor.get_driver()))


# -- the client ---------------------------------------------------------------


class Listener:
    """The client's provider: the server may call its public methods."""

    def on_progress(self, done: int, count: int, subtotal: int) -> None:
        client_says(f"server called on_progress: {done}/{count}, subtotal {subtotal}")


async def main() -> None:
    async with wsrpc.WebSocketServer[Header, Calculator, ListenerRemote]() as server:
        await server.open(0, handler)
        url = f"ws://127.0.0.1:{server.port}/"
        print(f"wsrpc demo: a server listens on {url}")

        step("1. Connect with a good token")
        async with wsrpc.WebSocketConnector[Header, Listener, CalculatorRemote](
            {"token": TOKEN}, Listener()
        ) as connector:
            await connector.connect(url)
            client_says("connected")
            calc = connector.get_driver()  # typed as CalculatorRemote

            step("2. Typed calls")
            client_says(f"calc.add(1, 2) -> {await calc.add(1, 2)}")
            client_says(f"calc.scientific.sqrt(16) -> {await calc.scientific.sqrt(16)}")

            step("3. The server calls the client back during a call")
            client_says("calling calc.total([1, 2, 3])")
            client_says(f"calc.total([1, 2, 3]) -> {await calc.total([1, 2, 3])}")

            step("4. A remote error")
            try:
                await calc.div(1, 0)
            except wsrpc.RemoteError as error:
                client_says(f"calc.div(1, 0) raised RemoteError: {error.name}: {error.message}")

        step("5. Connect with a bad token")
        async with wsrpc.WebSocketConnector[Header, Listener, CalculatorRemote](
            {"token": "guess"}, Listener()
        ) as intruder:
            try:
                await intruder.connect(url)
            except wsrpc.RejectedError as error:
                client_says(f"rejected: code {error.code}, reason {error.reason!r}")

    print("\nDone: the server is closed.")


if __name__ == "__main__":
    asyncio.run(main())
