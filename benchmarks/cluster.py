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
  (``--sizes``) spread evenly over the three nodes, against the same
  broadcast by one server without a backplane holding all the members;
* ``workers`` (``--workers 1,2``): calls/s of ``wsrpc serve --workers N``
  (N processes sharing one port with ``reuse_port``, no backplane), driven
  by ``--worker-clients`` client processes of their own, each with
  ``--worker-conns`` connections and ``--worker-inflight`` calls in flight
  on each; every connection asks which worker it reached.

    python benchmarks/cluster.py [--smoke] [--out results/cluster.json]
    python benchmarks/cluster.py --sizes 10000 --repeat 3 --workers 1,2

Prints a Markdown table (the one in docs/performance.md) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

import wsrpc

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


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
            times, counts, errors = [], [], []
            for _ in range(repeat):
                started = time.perf_counter()
                try:
                    outcomes = await server.group(group).broadcast(lambda c: c.echo(1), timeout=60)
                except Exception as exc:  # reported, not fatal: the others may succeed
                    errors.append(repr(exc))
                    continue
                times.append(time.perf_counter() - started)
                counts.append(sum(o.ok for o in outcomes))
            pipe.send((times, counts, errors))
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

    def kill(self) -> None:
        self.process.kill()
        self.process.join(30)

    def stop(self) -> None:
        try:
            self.pipe.send(("exit", ()))
        except OSError:  # the node died: what killed it is reported already
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


class Client:
    def echo(self, value: int) -> int:
        return value


async def connect(port: int, count: int, group: str) -> tuple[list[Any], list[int]]:
    connectors: list[Any] = []
    ids: list[int] = []
    for start in range(0, count, 250):
        batch: list[wsrpc.WebSocketConnector[None, Client, Any]] = [
            wsrpc.WebSocketConnector(None, Client(), transport=CLIENT_TRANSPORT)
            for _ in range(min(250, count - start))
        ]
        await asyncio.gather(*(c.connect(f"ws://127.0.0.1:{port}/", timeout=60) for c in batch))
        ids += await asyncio.gather(*(c.get_driver().join(group) for c in batch))
        connectors += batch
    return connectors, ids


CLIENT_TRANSPORT: wsrpc.TransportName = "websockets"
"""
The members' transport: picows when it is installed (this process then runs
on uvloop), so that opening 10,000 members costs the client process less;
the nodes serve on the default transport either way.
"""


def run_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop with picows clients when both are installed, else on asyncio's loop."""
    global CLIENT_TRANSPORT
    try:
        import picows  # noqa: F401
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    CLIENT_TRANSPORT = "picows"
    return uvloop.run(coroutine)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log(text: str) -> None:
    print(f"cluster: {text}", file=sys.stderr, flush=True)


def broadcast_figures(
    times: list[float], counts: list[int], errors: list[str], members: int
) -> dict[str, Any]:
    """The median time, and whether every broadcast reached every member."""
    figures: dict[str, Any] = {"members": members}
    if times:
        figures["median_ms"] = statistics.median(times) * 1e3
    if errors or any(count != members for count in counts):
        # A broadcast that missed members is not a measurement of the same work.
        figures["answered"] = counts
        figures["errors"] = errors
        log(f"broadcast to {members} members: answered {counts}, errors {errors}")
    return figures


async def measure(
    redis_url: str,
    smoke: bool,
    sizes: list[int],
    repeat: int | None = None,
    results: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure into ``results`` (kept if a later part fails) and return it."""
    calls = 200 if smoke else 2000
    total = 500 if smoke else 10_000
    repeat = repeat or (1 if smoke else 5)
    results = {} if results is None else results
    started = time.monotonic()

    async def broadcasts(node: Node, group: str, size: int, where: str) -> None:
        """Time ``repeat`` broadcasts to ``group`` from ``node``, after one to warm up."""
        await node.ask("broadcast", group, 1)
        times, counts, errors = await node.ask("broadcast", group, repeat)
        results[f"broadcast {size} {where}"] = broadcast_figures(
            times, counts, errors, size // 3 * 3
        )
        log(f"broadcasts {where} done ({time.monotonic() - started:.1f} s)")

    nodes = [Node(redis_url) for _ in range(3)]
    try:
        a, b, _ = nodes
        log(f"3 nodes up ({time.monotonic() - started:.1f} s)")
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
        log(f"calls measured ({time.monotonic() - started:.1f} s)")
        for connector in connectors:
            await connector.close()
        for size in sizes:
            group = f"room{size}"
            every: list[Any] = []
            for node in nodes:
                opened, _ = await connect(node.port, size // 3, group)
                every += opened
            log(f"{size} members connected to 3 nodes ({time.monotonic() - started:.1f} s)")
            await broadcasts(a, group, size, "over 3 nodes")
            if size != sizes[-1]:
                await asyncio.gather(*(c.close() for c in every))
    finally:
        # Killed, not stopped: closing 10,000 connections politely (a close
        # handshake each) takes longer than the measurement.
        for node in nodes:
            node.kill()
    single = Node(None)
    try:
        for size in sizes:
            group = f"room{size}"
            opened, _ = await connect(single.port, size // 3 * 3, group)
            log(f"{size} members connected to 1 process ({time.monotonic() - started:.1f} s)")
            await broadcasts(single, group, size, "in one process")
            if size != sizes[-1]:
                await asyncio.gather(*(c.close() for c in opened))
    finally:
        single.kill()
    return results


# -- several workers on one port (reuse_port) ---------------------------------------


class WorkerService:
    """What ``wsrpc serve cluster:worker_app`` serves: ``add``, and which worker answered."""

    def add(self, a: int, b: int) -> int:
        return a + b

    def pid(self) -> int:
        return os.getpid()


def worker_app() -> tuple[wsrpc.WebSocketServer[Any, WorkerService, None], Any]:
    """The factory ``wsrpc serve`` calls in each worker: the default options."""

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, WorkerService, None]) -> None:
        await acceptor.accept(WorkerService())

    return wsrpc.WebSocketServer[Any, WorkerService, None](), handler


SERVING = re.compile(r"serving on \S+://[^\s:]+:(\d+)")


def start_workers(count: int) -> tuple[subprocess.Popen[bytes], int]:
    """``wsrpc serve cluster:worker_app --workers count`` on a free port, all listening."""
    command = [sys.executable, "-m", "wsrpc", "serve", "cluster:worker_app", "--port", "0"]
    command += ["--host", "127.0.0.1", "--grace", "1", "--workers", str(count)]
    process = subprocess.Popen(command, cwd=HERE, stderr=subprocess.PIPE)
    assert process.stderr is not None
    ports: list[int] = []
    buffer = b""
    deadline = time.monotonic() + 60
    while len(ports) < count:
        ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(process.stderr.fileno(), 65536) if ready else b""
        if not chunk:
            process.kill()
            process.wait()
            raise RuntimeError(f"wsrpc serve --workers {count} did not start: {buffer[-2000:]!r}")
        buffer += chunk
        ports = [int(port) for port in SERVING.findall(buffer.decode(errors="replace"))]
    if len(set(ports)) != 1:
        raise RuntimeError(f"workers on different ports: {ports}")
    return process, ports[0]


def stop_workers(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


async def _load_client(
    pipe: multiprocessing.connection.Connection,
    port: int,
    conns: int,
    inflight: int,
    transport: wsrpc.TransportName,
) -> None:
    """One client process: open ``conns`` connections, then calls until told to stop."""
    connectors = [
        wsrpc.WebSocketConnector[None, None, Any](None, transport=transport) for _ in range(conns)
    ]
    await asyncio.gather(*(c.connect(f"ws://127.0.0.1:{port}/", timeout=60) for c in connectors))
    drivers = [c.get_driver() for c in connectors]
    pids = await asyncio.gather(*(d.pid() for d in drivers))
    for driver in drivers:  # warm up
        await driver.add(1, 2)
    loop = asyncio.get_running_loop()
    pipe.send("ready")
    seconds = await loop.run_in_executor(None, pipe.recv)
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(driver: Any) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await driver.add(done, 1)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(d) for d in drivers for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    pipe.send({"calls": done, "seconds": elapsed, "pids": dict(collections.Counter(pids))})
    await asyncio.gather(*(c.close() for c in connectors))


def load_client_main(
    pipe: multiprocessing.connection.Connection,
    port: int,
    conns: int,
    inflight: int,
    transport: wsrpc.TransportName,
) -> None:
    coroutine = _load_client(pipe, port, conns, inflight, transport)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def measure_workers(
    counts: list[int],
    *,
    clients: int,
    conns: int,
    inflight: int,
    seconds: float,
    repeat: int,
    transport: wsrpc.TransportName,
) -> dict[str, Any]:
    """Calls/s of ``wsrpc serve --workers N`` for each N, driven by client processes."""
    context = multiprocessing.get_context("spawn")
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in counts}
    for _ in range(repeat):
        for count in counts:  # interleaved: drift on the machine hits every count
            server, port = start_workers(count)
            processes, pipes = [], []
            try:
                for _ in range(clients):
                    pipe, theirs = context.Pipe()
                    process = context.Process(
                        target=load_client_main,
                        args=(theirs, port, conns, inflight, transport),
                        daemon=True,
                    )
                    process.start()
                    processes.append(process)
                    pipes.append(pipe)
                for pipe in pipes:
                    if not pipe.poll(120) or pipe.recv() != "ready":
                        raise RuntimeError("a client process did not get ready")
                for pipe in pipes:
                    pipe.send(seconds)
                reports = []
                for pipe in pipes:
                    if not pipe.poll(seconds + 60):
                        raise RuntimeError("a client process did not report")
                    reports.append(pipe.recv())
            finally:
                for process in processes:
                    process.join(30)
                    if process.is_alive():
                        process.kill()
                stop_workers(server)
            per_worker: collections.Counter[int] = collections.Counter()
            for report in reports:
                per_worker.update({int(pid): n for pid, n in report["pids"].items()})
            runs[count].append(
                {
                    "calls_per_s": sum(r["calls"] / r["seconds"] for r in reports),
                    "connections_per_worker": sorted(per_worker.values(), reverse=True),
                }
            )
    results: dict[str, Any] = {}
    for count in counts:
        figures = [run["calls_per_s"] for run in runs[count]]
        results[f"workers {count}"] = {
            "calls_per_s": statistics.median(figures),
            "runs_calls_per_s": figures,
            "connections_per_worker": [run["connections_per_worker"] for run in runs[count]],
        }
    results["workers clients"] = {
        "processes": clients,
        "connections_per_process": conns,
        "inflight_per_connection": inflight,
        "transport": transport,
        "seconds": seconds,
        "repeat": repeat,
        "server": "wsrpc serve cluster:worker_app --workers N (default transport, asyncio loop)",
    }
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
        if name == "workers clients":
            shown = (
                f"{figures['processes']} client processes x {figures['connections_per_process']}"
                f" connections x {figures['inflight_per_connection']} calls in flight"
                f" ({figures['transport']})"
            )
        elif name.startswith("workers "):
            spread = " / ".join(
                "+".join(str(n) for n in run) for run in figures["connections_per_worker"]
            )
            shown = f"{figures['calls_per_s']:,.0f} calls/s (connections per worker: {spread})"
        elif name.startswith("broadcast "):
            shown = f"median {figures.get('median_ms', 0):,.0f} ms"
            if "answered" in figures:
                shown += f" (members answering: {figures['answered']} of {figures['members']}"
                shown += f"; {len(figures['errors'])} broadcasts failed)"
        else:
            shown = ", ".join(
                f"{key.rsplit('_', 1)[0]} {value:,.0f} {key.rsplit('_', 1)[1].replace('us', 'µs')}"
                if not key.startswith("calls")
                else f"{value:,.0f} calls/s"
                for key, value in figures.items()
            )
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def integers(text: str) -> list[int]:
    return [int(word) for word in text.split(",") if word.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-broadcast", action="store_true", help="calls only")
    parser.add_argument(
        "--sizes", type=integers, help="broadcast sizes, comma-separated (default 1000,10000)"
    )
    parser.add_argument("--repeat", type=int, help="runs per broadcast figure (default 5)")
    parser.add_argument(
        "--workers", type=integers, default=[], help="e.g. 1,2: calls/s of wsrpc serve --workers N"
    )
    parser.add_argument("--worker-clients", type=int, default=2, help="client processes")
    parser.add_argument("--worker-conns", type=int, default=50, help="connections per process")
    parser.add_argument("--worker-inflight", type=int, default=4, help="calls in flight per conn")
    parser.add_argument("--worker-seconds", type=float, default=2.0, help="seconds measured")
    parser.add_argument("--worker-repeat", type=int, default=3, help="runs per worker count")
    parser.add_argument(
        "--worker-transport",
        default="picows",
        choices=["picows", "websockets"],
        help="the clients' transport (default picows, on uvloop: cheaper than the server)",
    )
    options = parser.parse_args()
    if options.no_broadcast:
        sizes: list[int] = []
    elif options.sizes is not None:
        sizes = options.sizes
    else:
        sizes = [30, 90] if options.smoke else [1_000, 10_000]
    started = time.monotonic()
    results: dict[str, Any] = {}
    errors: list[str] = []
    if options.workers:  # first: it needs no Redis, and a failure below must not cost it
        transport = options.worker_transport
        try:
            import picows  # noqa: F401
        except ImportError:
            transport = "websockets"
        try:
            results.update(
                measure_workers(
                    options.workers,
                    clients=options.worker_clients,
                    conns=3 if options.smoke else options.worker_conns,
                    inflight=options.worker_inflight,
                    seconds=0.3 if options.smoke else options.worker_seconds,
                    repeat=1 if options.smoke else options.worker_repeat,
                    transport=transport,
                )
            )
        except Exception as exc:  # reported in the JSON, and the exit status
            errors.append(f"workers: {exc!r}")
        log(f"workers measured ({time.monotonic() - started:.1f} s)")
    redis, redis_url = start_redis()
    try:
        run_loop(measure(redis_url, options.smoke, sizes, options.repeat, results))
    except Exception as exc:
        errors.append(f"backplane: {exc!r}")
    finally:
        redis.terminate()
        redis.wait()
    errors += [
        f"{name}: members answering {figures['answered']} of {figures['members']}"
        + (f", failed: {figures['errors']}" if figures["errors"] else "")
        for name, figures in results.items()
        if "answered" in figures
    ]
    print(table(results))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    out = options.out or HERE / "results" / (
        "cluster-smoke.json" if options.smoke else "cluster.json"
    )
    meta = {
        "machine": platform.machine(),
        "cpus": multiprocessing.cpu_count(),
        "python": platform.python_version(),
        "smoke": options.smoke,
        "redis_server": redis_version(),
        "wall_time_s": round(time.monotonic() - started, 1),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"meta": meta, "results": results, "errors": errors}, indent=2) + "\n"
    )
    return 1 if errors else 0


def redis_version() -> str | None:
    executable = shutil.which("redis-server")
    if executable is None:
        return None
    try:
        text = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"v=(\S+)", text)
    return found.group(1) if found else text.strip()


if __name__ == "__main__":
    sys.exit(main())
