"""
A live price ticker: the server streams quotes, the client iterates them.

The server's ``quotes(symbol)`` is an async generator: it yields a new quote
every few milliseconds, for as long as someone reads. The client declares it
in its protocol as a plain ``def`` returning ``AsyncIterator[Quote]`` and
reads it with ``async for``, type-checked by mypy.

Things worth noticing:

* the client leaves the loop after five quotes: the stream is cancelled on
  the server, whose generator sees ``GeneratorExit`` at its ``yield`` and runs
  its ``finally`` (the server prints it);
* the generator never runs ahead of its reader: the client grants it a
  window of 16 quotes (up to 256 once it has seen that they are small) and
  more only as it takes them, so a reader that stops reading pauses the
  generator instead of filling memory;
* ``history(symbol, count)`` is a finite stream: it ends by returning;
* an exception in the generator (an unknown symbol) reaches the client as
  :exc:`wsrpc.RemoteError`, after the quotes sent before it;
* both sides have ``validate=True``: the server checks each quote against
  ``AsyncIterator[Quote]`` before sending it, and the client, made with its
  ``MarketRemote`` protocol as the ``Remote`` type parameter, builds each
  item back into a ``Quote`` dataclass, its ``Decimal`` price and its
  ``datetime`` included (``pip install 'wsrpc[validate]'``);
* the script waits on events, not on time, and prints in a fixed order, so
  its output is always the same.

Run it::

    python examples/ticker.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Protocol

import wsrpc


@dataclasses.dataclass
class Quote:
    symbol: str
    seq: int
    price: Decimal
    at: datetime.datetime


class MarketRemote(Protocol):
    """The server's provider as the client sees it: streams are plain ``def``."""

    def quotes(self, symbol: str) -> AsyncIterator[Quote]: ...
    def history(self, symbol: str, count: int) -> AsyncIterator[Quote]: ...


OPENING = {"ACME": Decimal("100.00"), "INITECH": Decimal("42.50")}
UP, DOWN = Decimal("0.25"), Decimal("0.50")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Market:
    """The server's provider; each stream method is an async generator."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.log: list[str] = []

    async def quotes(self, symbol: str) -> AsyncIterator[Quote]:
        price = OPENING[symbol]  # KeyError for an unknown symbol
        seq = 0
        try:
            while True:
                seq += 1
                price = price + UP if seq % 3 else price - DOWN
                yield Quote(symbol, seq, price, now())
                await asyncio.sleep(0.005)  # a live feed: a quote every 5 ms
        finally:
            # Runs when the reader leaves: the stream was cancelled.
            self.log.append(f"[server] {symbol} stream closed: the reader left")
            self.closed.set()

    async def history(self, symbol: str, count: int) -> AsyncIterator[Quote]:
        price = OPENING[symbol]
        for seq in range(1, count + 1):
            yield Quote(symbol, seq, price - seq, now())


async def main() -> None:
    market = Market()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Market, None]) -> None:
        await acceptor.accept(market)

    server = wsrpc.WebSocketServer[None, Market, None](validate=True)
    await server.open(0, handler, host="127.0.0.1")
    connector = wsrpc.WebSocketConnector[None, None, MarketRemote](None, validate=True)
    async with connector:
        await connector.connect(f"ws://127.0.0.1:{server.port}/")
        market_remote = connector.get_driver()

        async for quote in market_remote.quotes("ACME"):
            assert isinstance(quote.price, Decimal) and quote.at.tzinfo is datetime.UTC
            print(f"[client] {quote.symbol} #{quote.seq}: {quote.price}")
            if quote.seq == 5:
                break  # leaving the loop cancels the stream on the server
        await market.closed.wait()
        print(*market.log)

        closes = [str(quote.price) async for quote in market_remote.history("INITECH", 3)]
        print(f"[client] INITECH history: {closes}")

        try:
            async for quote in market_remote.quotes("NOPE"):
                print(quote)
        except wsrpc.RemoteError as exc:
            print(f"[client] NOPE: {exc.name}: {exc.message}")
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
