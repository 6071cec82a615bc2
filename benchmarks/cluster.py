"""
The cluster scenario: what crossing Redis costs.

Starts a private ``redis-server`` (127.0.0.1, a free port, no persistence)
and three server processes joined by a ``RedisBackplane``; the clients are
connections opened from this process. Measures, each figure against its
one-process counterpart:

* ``latency``: sequential calls through ``server.get_driver(id)`` from node
  A to a client held by node B, p50 and p99, against the same calls from B
  (a local call through the same API);
* ``throughput``: calls/s from node A to a client on node B with 64 calls in
  flight, against B's own calls to it;
* ``broadcast``: one ``group.broadcast`` to 1,000 and to 10,000 members
  spread evenly over the three nodes, against the same broadcast by one
  server without a backplane holding all the members.

    python benchmarks/cluster.py [--smoke] [--out results/cluster.json]

Prints a Markdown table (the one in docs/performance.md) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import wsrpc

HERE = Path(__file__).resolve().parent


class ClientRemote(Protocol):
    async def echo(self, value: int) -> int: ...


class Service:
    def __init__(self, server: Any, acceptor: Any) -> None:
        self._server = server
        self._acceptor = acceptor

    def join(self, group: str) -> int:
        self._server.group(group).add(self._acceptor)
        return int(self._acceptor.id)


async def _node(pipe: multiprocessing.connection.Connection, redis_url: str | None) -> None:
    backplane = None if redis_url is None else wsrpc.RedisBackplane(redis_url, name="bench")
    server: wsrpc.WebSocketServer[Any, Service, ClientRemote] = wsrpc.WebSocketServer(
        backplane=backplane, max_connections=20_000
    )

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Service, ClientRemote]) -> None:
        await acceptor.accept(Service(server, acceptor))

    await server.open(0, handler)
    pipe.send(server.port)
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        if command == "exit":
            break
        if command == "latency":
            target, count = args
            driver = server.get_driver(target)
            times = []
            for i in range(count):
                started = time.perf_counter()
                await driver.echo(i)
                times.append(time.perf_counter() - started)
            pipe.send(times)
        elif command == "throughput":
            target, total, in_flight = args
            driver = server.get_driver(target)
            left = total

            async def worker(driver: Any = driver) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await driver.echo(left)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            pipe.send(time.perf_counter() - started)
        elif command == "broadcast":
            group, repeat = args
            times, counts = [], []
            for _ in range(repeat):
                started = time.perf_counter()
                outcomes = await server.group(group).broadcast(lambda c: c.echo(1), timeout=60)
                times.append(time.perf_counter() - started)
                counts.append(sum(o.ok for o in outcomes))
            pipe.send((times, counts))
    await server.close()


def node_main(pipe: multiprocessing.connection.Connection, redis_url: str | None) -> None:
    asyncio.run(_node(pipe, redis_url))


class Node:
    def __init__(self, redis_url: str | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=node_main, args=(child, redis_url), daemon=True)
        self.process.start()
        self.port: int = self.pipe.recv()

    async def ask(self, command: str, *args: Any) -> Any:
        self.pipe.send((command, args))
        return await asyncio.get_running_loop().run_in_executor(None, self.pipe.recv)

    def stop(self) -> None:
        self.pipe.send(("exit", ()))
        self.process.join(30)


class Client:
    def echo(self, value: int) -> int:
        return value


async def connect(port: int, count: int, group: str) -> tuple[list[Any], list[int]]:
    connectors: list[Any] = []
    ids: list[int] = []
    for start in range(0, count, 250):
        batch: list[wsrpc.WebSocketConnector[None, Client, Any]] = [
            wsrpc.WebSocketConnector(None, Client()) for _ in range(min(250, count - start))
        ]
        await asyncio.gather(*(c.connect(f"ws://127.0.0.1:{port}/", timeout=60) for c in batch))
        ids += await asyncio.gather(*(c.get_driver().join(group) for c in batch))
        connectors += batch
    return connectors, ids


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(redis_url: str, smoke: bool, broadcasts: bool = True) -> dict[str, Any]:
    calls = 200 if smoke else 3000
    total = 500 if smoke else 20_000
    sizes = ([30, 90] if smoke else [1_000, 10_000]) if broadcasts else []
    repeat = 1 if smoke else 5
    results: dict[str, Any] = {}
    nodes = [Node(redis_url) for _ in range(3)]
    try:
        a, b, _ = nodes
        connectors, (target,) = await connect(b.port, 1, "target")
        for name, node in (("cross-node", a), ("local", b)):
            await node.ask("latency", target, 50)  # warm up
            times = await node.ask("latency", target, calls)
            results[f"latency {name}"] = {
                "p50_us": percentile(times, 0.5) * 1e6,
                "p99_us": percentile(times, 0.99) * 1e6,
            }
            seconds = await node.ask("throughput", target, total, 64)
            results[f"throughput {name}"] = {"calls_per_s": total / seconds}
        for connector in connectors:
            await connector.close()
        for size in sizes:
            group = f"room{size}"
            every: list[Any] = []
            for node in nodes:
                opened, _ = await connect(node.port, size // 3, group)
                every += opened
            await a.ask("broadcast", group, 1)  # warm up
            times, counts = await a.ask("broadcast", group, repeat)
            assert all(count == size // 3 * 3 for count in counts), counts
            results[f"broadcast {size} over 3 nodes"] = {
                "median_ms": statistics.median(times) * 1e3
            }
            await asyncio.gather(*(c.close() for c in every))
    finally:
        for node in nodes:
            node.stop()
    single = Node(None)
    try:
        for size in sizes:
            group = f"room{size}"
            opened, _ = await connect(single.port, size // 3 * 3, group)
            await single.ask("broadcast", group, 1)
            times, counts = await single.ask("broadcast", group, repeat)
            assert all(count == size // 3 * 3 for count in counts), counts
            results[f"broadcast {size} in one process"] = {
                "median_ms": statistics.median(times) * 1e3
            }
            await asyncio.gather(*(c.close() for c in opened))
    finally:
        single.stop()
    return results


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not on the PATH (make test installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def table(results: dict[str, Any]) -> str:
    lines = ["| measure | value |", "|---|---|"]
    for name, figures in results.items():
        shown = ", ".join(
            f"{key.rsplit('_', 1)[0]} {value:,.0f} {key.rsplit('_', 1)[1].replace('us', 'µs')}"
            if not key.startswith("calls")
            else f"{value:,.0f} calls/s"
            for key, value in figures.items()
        )
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-broadcast", action="store_true", help="calls only")
    options = parser.parse_args()
    redis, redis_url = start_redis()
    try:
        results = asyncio.run(measure(redis_url, options.smoke, not options.no_broadcast))
    finally:
        redis.terminate()
        redis.wait()
    print(table(results))
    out = options.out or HERE / "results" / (
        "cluster-smoke.json" if options.smoke else "cluster.json"
    )
    meta = {"machine": platform.machine(), "cpus": multiprocessing.cpu_count(),
            "python": platform.python_version(), "smoke": options.smoke}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
