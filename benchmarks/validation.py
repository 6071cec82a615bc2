"""
The cost of ``validate=True``: calls/s with and without it.

One server process (``python validation.py server``) opens two wsrpc
servers on free ports, one with ``validate=True`` and one without, both
serving the same provider:

* ``add(a: int, b: int) -> int``: the commonest shape, plain ints;
* ``mixed(p: Point, tags: list[str], when: datetime) -> Point``: a
  dataclass built from a map, a list, a datetime from its ISO text, and a
  dataclass result turned back into a map.

The client (this script, without arguments) starts the server, then for
each method and each server measures

* ``sequential``: one call at a time, each awaited (latency-bound);
* ``pipelined``: ``--window`` calls in flight at once (throughput-bound);

runs each figure ``--repeat`` times, keeps the median, and prints a
Markdown table with the cost of validation in percent. First, it times the
validator alone (no socket): µs per call to check the arguments and the
result.

Run it (about 15 s)::

    .venv/bin/python benchmarks/validation.py
    .venv/bin/python benchmarks/validation.py --calls 50000 --transport picows

Needs msgspec (``pip install 'wsrpc[validate]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsrpc


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Provider:
    def add(self, a: int, b: int) -> int:
        return a + b

    def mixed(self, p: Point, tags: list[str], when: datetime.datetime) -> Point:
        return Point(p.x + len(tags), p.y)


class PlainProvider:
    """The same calls without validation: the arguments arrive as plain data."""

    def add(self, a: int, b: int) -> int:
        return a + b

    def mixed(self, p: dict[str, int], tags: list[str], when: str) -> dict[str, int]:
        return {"x": p["x"] + len(tags), "y": p["y"]}


ARGS: dict[str, tuple[Any, ...]] = {
    "add": (1, 2),
    "mixed": ({"x": 1, "y": 2}, ["a", "b"], "2024-01-02T03:04:05Z"),
}


async def serve(transport: Any) -> None:
    async def plain(acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        await acceptor.accept(PlainProvider())

    async def checked(acceptor: wsrpc.WebSocketAcceptor[Any, Any, Any]) -> None:
        await acceptor.accept(Provider())

    options: dict[str, Any] = {"transport": transport, "ping_interval": None}
    off: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer[Any, Any, Any](**options)
    on: wsrpc.WebSocketServer[Any, Any, Any] = wsrpc.WebSocketServer[Any, Any, Any](
        validate=True, **options
    )
    await off.open(0, plain)
    await on.open(0, checked)
    print(off.port, on.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the client ends
    await off.close()
    await on.close()


async def measure(
    port: int, method: str, mode: str, calls: int, window: int, transport: Any
) -> float:
    connector: wsrpc.WebSocketConnector[None, None, Any] = wsrpc.WebSocketConnector(
        None, transport=transport, ping_interval=None
    )
    async with connector:
        await connector.connect(f"ws://127.0.0.1:{port}/")
        remote = getattr(connector.get_driver(), method)
        args = ARGS[method]
        for _ in range(200):  # warm up (and fill the validator cache)
            await remote(*args)
        start = time.perf_counter()
        if mode == "sequential":
            for _ in range(calls):
                await remote(*args)
        else:
            for _ in range(calls // window):
                await asyncio.gather(*(remote(*args) for _ in range(window)))
        return calls / (time.perf_counter() - start)


def micro(rounds: int = 100_000) -> None:
    """The validator alone: µs per call for its arguments and result, no socket."""
    from wsrpc.dispatch import resolve
    from wsrpc.validation import validator_for

    print("| method | check arguments (µs) | check result (µs) |")
    print("|---|---:|---:|")
    provider = Provider()
    for method in ("add", "mixed"):
        func, _ = resolve(provider, method)
        validator = validator_for(func)
        args = list(ARGS[method])
        start = time.perf_counter()
        for _ in range(rounds):
            converted, _ = validator.arguments(args, None)
        taken = time.perf_counter() - start
        value = func(*converted)
        check = validator.result
        assert check is not None
        start = time.perf_counter()
        for _ in range(rounds):
            check(value)
        print(
            f"| `{method}` | {taken / rounds * 1e6:.2f} | "
            f"{(time.perf_counter() - start) / rounds * 1e6:.2f} |"
        )
    print()


def main(options: argparse.Namespace) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "server", "--transport", options.transport],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        off_port, on_port = map(int, server.stdout.readline().split())
        print(
            f"validate=True vs off, {options.transport}, {options.calls} calls per figure, "
            f"median of {options.repeat}, window {options.window}, "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n"
        )
        micro()
        print("| method | mode | off (calls/s) | on (calls/s) | cost |")
        print("|---|---|---:|---:|---:|")
        for method in ("add", "mixed"):
            for mode in ("sequential", "pipelined"):
                figures: dict[int, list[float]] = {off_port: [], on_port: []}
                for _ in range(options.repeat):
                    for port in (off_port, on_port):  # interleaved: drift hits both
                        figures[port].append(
                            asyncio.run(
                                measure(
                                    port,
                                    method,
                                    mode,
                                    options.calls,
                                    options.window,
                                    options.transport,
                                )
                            )
                        )
                off = statistics.median(figures[off_port])
                on = statistics.median(figures[on_port])
                print(
                    f"| `{method}` | {mode} | {off:,.0f} | {on:,.0f} | "
                    f"{(off - on) / off * 100:+.1f} % |"
                )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="client", choices=("client", "server"))
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--transport", default="websockets", choices=("websockets", "picows"))
    parsed = parser.parse_args()
    if parsed.role == "server":
        asyncio.run(serve(parsed.transport))
    else:
        main(parsed)
