"""
A calculator served over wsrpc, with a nested provider.

The server provides a :class:`Calculator` whose ``scientific`` attribute holds
a second object, :class:`Scientific`. The client sees both through one typed
driver: ``await calc.add(1, 2)`` and ``await calc.scientific.sqrt(16)`` are
checked by mypy against the ``CalculatorRemote`` protocol and, at run time,
become calls to the dotted paths ``"add"`` and ``"scientific.sqrt"``.

Server and client run in this one script, on 127.0.0.1 and a free port::

    python examples/calculator.py
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol, TypedDict

import wsrpc

# -- the contract: what the client sends and what it may call ----------------


class Header(TypedDict):
    """What a client sends first; this server accepts any client, so it is unused."""

    client: str


class ScientificRemote(Protocol):
    """The nested provider, as the client sees it: every method is awaited."""

    async def sqrt(self, x: float) -> float: ...
    async def pow(self, base: float, exponent: float) -> float: ...


class CalculatorRemote(Protocol):
    """The server's provider, as the client sees it."""

    # A nested provider is declared as an attribute typed with its own
    # protocol; the driver resolves it to the path "scientific.<method>".
    scientific: ScientificRemote

    async def add(self, a: float, b: float) -> float: ...
    async def sub(self, a: float, b: float) -> float: ...
    async def mul(self, a: float, b: float) -> float: ...
    async def div(self, a: float, b: float) -> float: ...


# -- the server's implementation ---------------------------------------------


class Scientific:
    """Plain (synchronous) methods: wsrpc runs them and sends back the result."""

    def sqrt(self, x: float) -> float:
        if x < 0:
            # Raised here, it reaches the caller as wsrpc.RemoteError("ValueError", ...).
            raise ValueError("sqrt of a negative number")
        return math.sqrt(x)

    def pow(self, base: float, exponent: float) -> float:
        # math.pow always returns a float, as the protocol promises (the ``**``
        # operator would return an int for int arguments).
        return math.pow(base, exponent)


class Calculator:
    """The provider: its public methods, and those of ``scientific``, are callable."""

    def __init__(self) -> None:
        # An instance attribute holding a plain object is a nested provider.
        self.scientific = Scientific()

    def add(self, a: float, b: float) -> float:
        return a + b

    def sub(self, a: float, b: float) -> float:
        return a - b

    def mul(self, a: float, b: float) -> float:
        return a * b

    def div(self, a: float, b: float) -> float:
        return a / b


# The server serves a Calculator and calls nothing on its clients (None), like
# TGrid's ``WebSocketServer<Header, Calculator, null>``.
Acceptor = wsrpc.WebSocketAcceptor[Header, Calculator, None]


async def handler(acceptor: Acceptor) -> None:
    """Called once per client, after its header arrived: accept everyone."""
    # One Calculator per client: nothing is shared, so no locking is needed.
    await acceptor.accept(Calculator())


# -- the client --------------------------------------------------------------


async def run_client(port: int) -> None:
    # The client serves nothing back to the server (provider None).
    connector = wsrpc.WebSocketConnector[Header, None, CalculatorRemote]({"client": "calculator"})
    async with connector:
        await connector.connect(f"ws://127.0.0.1:{port}/")
        calc = connector.get_driver()  # typed as CalculatorRemote

        print("1 + 2 =", await calc.add(1, 2))
        print("7 - 10 =", await calc.sub(7, 10))
        print("6 * 7 =", await calc.mul(6, 7))
        print("1 / 4 =", await calc.div(1, 4))
        print("sqrt(16) =", await calc.scientific.sqrt(16))
        print("pow(2, 10) =", await calc.scientific.pow(2, 10))

        # Calls are independent: several may be in flight at once.
        squares = await asyncio.gather(*(calc.mul(n, n) for n in range(1, 6)))
        print("squares:", squares)

        try:
            await calc.scientific.sqrt(-1)
        except wsrpc.RemoteError as error:
            print(f"sqrt(-1) failed remotely: {error.name}: {error.message}")


async def main() -> None:
    async with wsrpc.WebSocketServer[Header, Calculator, None]() as server:
        await server.open(0, handler)  # port 0: the OS picks a free port
        await run_client(server.port)


if __name__ == "__main__":
    asyncio.run(main())
