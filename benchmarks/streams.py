"""
Streams: items/s of a wsrpc stream, against the workaround (the server
calling a client method once per item) and against the raw transport
sending the same items; and the memory a paused stream holds.

One server process (``python streams.py server``) serves, on two ports:

* wsrpc (the transport given by ``--transport``): ``numbers(n)``, an async
  generator yielding the ints 0..n-1; ``push(n)``, which calls the client's
  ``on_item(i)`` for each of them, one awaited call at a time, and returns
  the seconds it took (the workaround streams replace); ``paused(size)``,
  a generator yielding ``size`` bytes for ever; ``produced()``, how many
  items ``paused`` made;
* raw websockets, no RPC: a client sends ``n`` (msgpack), the server sends
  ``n`` binary frames shaped as wsrpc's ITEM (``[7, 1, i]``, msgpack) and a
  last one, ``[3, 1, nil]``. The ceiling: what the socket carries.

The client (this script, without arguments) starts the server, runs each
figure ``--repeat`` times, keeps the median, and prints a Markdown table:

* ``stream``: ``async for`` over ``numbers(n)``: items/s;
* ``call per item``: ``push(n)``: items/s, timed on the server;
* ``raw websockets``: items/s of the same frames, decoded by the client;
* ``paused streams``: ``--paused`` streams of ``paused(1024)`` opened at once,
  one item taken from each, then left unread: the server's RSS growth per
  paused stream once they stopped (each holds at most its credit of 16
  items), the items produced, and the RSS growth during one more second
  (none: the generators are paused, not buffering).

Run it (about 20 s)::

    .venv/bin/python benchmarks/streams.py
    .venv/bin/python benchmarks/streams.py --transport picows --items 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgpack
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

import wsrpc

# -- the server ---------------------------------------------------------------


class ClientRemote(Protocol):
    async def on_item(self, item: int) -> None: ...


class Provider:
    def __init__(self, acceptor: wsrpc.WebSocketAcceptor[None, Provider, ClientRemote]) -> None:
        self._client = acceptor.get_driver()

    async def numbers(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def push(self, n: int) -> float:
        on_item = self._client.on_item
        started = time.perf_counter()
        for i in range(n):
            await on_item(i)
        return time.perf_counter() - started

    async def paused(self, size: int) -> AsyncIterator[bytes]:
        global PRODUCED
        chunk = b"x" * size
        while True:
            PRODUCED += 1
            yield chunk

    def produced(self) -> int:
        return PRODUCED


PRODUCED = 0


async def raw_handler(connection: ServerConnection) -> None:
    async for request in connection:
        assert isinstance(request, bytes)
        n = msgpack.unpackb(request)
        packer = msgpack.Packer()
        for i in range(n):
            await connection.send(packer.pack([7, 1, i]))
        await connection.send(packer.pack([3, 1, None]))


async def serve(transport: wsrpc.TransportName) -> None:
    async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Provider, ClientRemote]) -> None:
        await acceptor.accept(Provider(acceptor))

    server = wsrpc.WebSocketServer[None, Provider, ClientRemote](transport=transport)
    await server.open(0, handler, host="127.0.0.1")
    async with ws_serve(raw_handler, "127.0.0.1", 0, compression=None) as raw:
        raw_port = next(iter(raw.sockets)).getsockname()[1]
        print(f"PORTS {server.port} {raw_port}", flush=True)
        await asyncio.get_running_loop().create_future()  # until killed


# -- the client ------------------------------------------------------------------


class ServerRemote(Protocol):
    def numbers(self, n: int) -> AsyncIterator[int]: ...
    async def push(self, n: int) -> float: ...
    def paused(self, size: int) -> AsyncIterator[bytes]: ...
    async def produced(self) -> int: ...


class ClientProvider:
    def on_item(self, item: int) -> None:
        pass


def rss_kib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    raise RuntimeError("no VmRSS")


async def measure(args: argparse.Namespace, pid: int, port: int, raw_port: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/"
    n = args.items
    figures: dict[str, list[float]] = {"stream": [], "calls": [], "raw": []}
    async with wsrpc.WebSocketConnector[None, ClientProvider, ServerRemote](
        None, ClientProvider(), transport=args.transport
    ) as connector:
        await connector.connect(url)
        remote = connector.get_driver()
        async with ws_connect(f"ws://127.0.0.1:{raw_port}/", compression=None) as raw:
            # Warm up each path once.
            [x async for x in remote.numbers(1000)]
            await remote.push(1000)
            for _ in range(args.repeat):
                started = time.perf_counter()
                count = 0
                async for _item in remote.numbers(n):
                    count += 1
                assert count == n
                figures["stream"].append(n / (time.perf_counter() - started))
                figures["calls"].append(n / await remote.push(n))
                started = time.perf_counter()
                await raw.send(msgpack.packb(n))
                while True:
                    message = msgpack.unpackb(await raw.recv(decode=False))
                    if message[0] == 3:
                        break
                figures["raw"].append(n / (time.perf_counter() - started))
        # Paused streams: opened, one item taken from each, then left unread.
        before = rss_kib(pid)
        streams = [aiter(remote.paused(1024)) for _ in range(args.paused)]
        for stream in streams:
            await anext(stream)
        while await remote.produced() < args.paused * 16:
            pass  # round trips until every generator used its credit
        produced = await remote.produced()
        paused_rss = rss_kib(pid)
        await asyncio.sleep(1.0)  # measuring that nothing grows: time is the point here
        later = rss_kib(pid)
        produced_later = await remote.produced()
    return {
        "stream": statistics.median(figures["stream"]),
        "calls": statistics.median(figures["calls"]),
        "raw": statistics.median(figures["raw"]),
        "paused_kib_per_stream": (paused_rss - before) / args.paused,
        "paused_produced": produced,
        "paused_produced_later": produced_later,
        "paused_growth_kib": later - paused_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="client", choices=["client", "server"])
    parser.add_argument("--transport", default="websockets", choices=["websockets", "picows"])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--paused", type=int, default=100)
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(serve(args.transport))
        return 0
    server = subprocess.Popen(
        [sys.executable, __file__, "server", "--transport", args.transport],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        assert line and line[0] == "PORTS", line
        result = asyncio.run(measure(args, server.pid, int(line[1]), int(line[2])))
    finally:
        server.kill()
        server.wait()
    raw = result["raw"]
    print(f"streams, {args.items:,} ints, transport {args.transport}, median of {args.repeat}")
    print()
    print("| path | items/s | vs raw |")
    print("| --- | ---: | ---: |")
    for key, label in (
        ("stream", "wsrpc stream (`async for`)"),
        ("calls", "wsrpc, one call per item (awaited)"),
        ("raw", "raw websockets, same frames"),
    ):
        print(f"| {label} | {result[key]:,.0f} | {result[key] / raw:.2f}x |")
    print()
    print(
        f"{args.paused} paused streams of 1 KiB items: "
        f"{result['paused_kib_per_stream']:.1f} KiB of server RSS each, "
        f"{result['paused_produced']} items produced "
        f"({result['paused_produced_later']} one second later), "
        f"RSS growth over that second {result['paused_growth_kib']:.0f} KiB"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
