"""
The tutorial's whole program (docs/tutorial.md), kept identical to it by a test.

Run it: python examples/tutorial.py
"""

from __future__ import annotations

import asyncio
import hmac
import math
from typing import Any, Protocol, TypedDict

from wsrpc import (
    ConnectionClosedError,
    RejectedError,
    RemoteError,
    RpcTimeoutError,
    WebSocketAcceptor,
    WebSocketConnector,
    WebSocketServer,
)


class Header(TypedDict):
    user: str
    token: str


class ScientificRemote(Protocol):
    async def sqrt(self, x: float) -> float: ...


class CalculatorRemote(Protocol):
    scientific: ScientificRemote

    async def add(self, a: int, b: int) -> int: ...
    async def divide(self, a: float, b: float) -> float: ...
    async def countdown(self, n: int) -> str: ...
    async def sleep(self, seconds: float) -> None: ...


class ListenerRemote(Protocol):
    async def progress(self, done: int, total: int) -> None: ...


class Scientific:
    def sqrt(self, x: float) -> float:
        return math.sqrt(x)


class Calculator:
    def __init__(self, listener: ListenerRemote) -> None:
        self.scientific = Scientific()  # a nested provider: "scientific.sqrt"
        self._listener = listener  # the client's driver; "_": out of the client's reach

    def add(self, a: int, b: int) -> int:
        return a + b

    def divide(self, a: float, b: float) -> float:
        return a / b

    async def countdown(self, n: int) -> str:
        for done in range(1, n + 1):
            await self._listener.progress(done, n)  # a call from the server to the client
        return "liftoff"

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


Acceptor = WebSocketAcceptor[object, Calculator, ListenerRemote]


class Listener:
    def progress(self, done: int, total: int) -> None:
        print(f"{done}/{total}")


TOKEN = b"s3cret"  # in real life, from your configuration


async def handler(acceptor: Acceptor) -> None:
    header = acceptor.header  # untrusted: whatever the client sent
    token = header.get("token") if isinstance(header, dict) else None
    if not isinstance(token, str):
        await acceptor.reject(4000, "malformed header")
        return
    if not hmac.compare_digest(token.encode(), TOKEN):
        await acceptor.reject(4001, "invalid token")
        return
    listener = acceptor.get_driver()  # the client's provider, typed as ListenerRemote
    await acceptor.accept(Calculator(listener))


async def main() -> None:
    async with WebSocketServer[object, Calculator, ListenerRemote]() as server:
        await server.open(0, handler)  # port 0: the system picks a free port
        url = f"ws://127.0.0.1:{server.port}/"

        header: Header = {"user": "ada", "token": "s3cret"}
        async with WebSocketConnector[Header, Listener, CalculatorRemote](
            header, Listener()
        ) as connector:
            await connector.connect(url, timeout=5)
            calc = connector.get_driver()  # typed as CalculatorRemote

            print(await calc.add(1, 2))  # 3
            print(await calc.scientific.sqrt(16))  # 4.0
            print(await calc.countdown(3))  # 1/3, 2/3, 3/3, then liftoff

            try:
                await calc.divide(1, 0)
            except RemoteError as exc:
                print(exc.name, exc.message)  # ZeroDivisionError division by zero

            untyped: Any = calc  # hide the call from the type checker
            try:
                await untyped.multiply(2, 3)
            except RemoteError as exc:
                print(exc.name, exc.message)  # MemberAccessError no remote method 'multiply'

            try:
                await connector.get_driver(timeout=0.5).sleep(10)
            except RpcTimeoutError:
                print("timed out")  # and the server's sleep() was cancelled

            try:
                async with asyncio.timeout(0.5):
                    await calc.sleep(10)
            except TimeoutError:
                print("cancelled")  # here and on the server

            intruder = WebSocketConnector[Header, None, CalculatorRemote](
                {"user": "eve", "token": "guess"}
            )
            try:
                await intruder.connect(url)
            except RejectedError as exc:
                print(exc.code, exc.reason)  # 4001 invalid token

            pending = asyncio.create_task(calc.sleep(10))
            await server.close()  # closes every connection with 1001
            try:
                await pending
            except ConnectionClosedError as exc:
                print(exc.code, exc.reason)  # 1001 server closing
            await connector.join()  # already closed: returns at once
            print(server.state, connector.state)  # ServerState.CLOSED ConnectorState.CLOSED


asyncio.run(main())
