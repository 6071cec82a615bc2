"""
What every system module shares: command line, scenarios, statistics.

A system module provides a server entry point and a way to open a client
connection; the client scenarios below run the same loops on every system.
``rpyc`` is thread-based and brings its own copies of these loops.

Protocol with ``run.py`` (stdout lines, one per event):

* server: ``PORT <n>`` once listening, then nothing more on stdout;
* client: ``SYNC <label>`` (then it blocks until a line arrives on stdin),
  and finally ``RESULT <json>``; then it exits at once (``os._exit``) rather
  than closing hundreds of connections politely.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

__all__ = [
    "MAX_MESSAGE_SIZE",
    "SCENARIOS",
    "AsyncClient",
    "Params",
    "callback_loop",
    "emit_result",
    "latency_stats",
    "sample_indices",
    "loop_name",
    "main",
    "parse_args",
    "print_port",
    "raise_nofile_limit",
    "run_event_loop",
    "sync",
]

T = TypeVar("T")

MAX_MESSAGE_SIZE = 4 * 2**20
"""Frame size limit set on every system that has one (the 1 MiB echo needs more than 1 MiB)."""

SCENARIOS = ("sequential", "pinned", "pipelined", "many_clients", "idle", "payload", "callbacks")
"""Every scenario; ``pinned`` is ``sequential`` with both processes on one CPU."""

SAMPLE_TIMEOUT = 30.0
"""idle: seconds the sample calls on idle connections may take, all together."""


@dataclass(frozen=True)
class Params:
    """One client run: which scenario, and its bounds (count and time)."""

    role: str
    port: int
    scenario: str
    count: int
    duration: float
    warmup: float
    conns: int
    batch: int
    inflight: int
    payload_size: int
    sample: int
    uvloop: bool


def parse_args(argv: Sequence[str] | None = None, *, default_uvloop: bool = False) -> Params:
    parser = argparse.ArgumentParser(description="one side of a benchmark run")
    parser.add_argument("role", choices=("server", "client"))
    parser.add_argument("--port", type=int, default=0, help="server port (client only)")
    parser.add_argument("--scenario", choices=SCENARIOS, default="sequential")
    parser.add_argument("--count", type=int, default=10_000, help="most calls to make")
    parser.add_argument("--duration", type=float, default=1.0, help="most seconds to measure")
    parser.add_argument("--warmup", type=float, default=0.1, help="seconds of warm-up calls")
    parser.add_argument("--conns", type=int, default=1000, help="many_clients, idle: connections")
    parser.add_argument(
        "--batch", type=int, default=100, help="many_clients, idle: connections opened at once"
    )
    parser.add_argument(
        "--sample", type=int, default=100, help="idle: connections that make one call at the end"
    )
    parser.add_argument("--inflight", type=int, default=100, help="pipelined: calls in flight")
    parser.add_argument("--payload-size", type=int, default=2**20, help="payload: bytes")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--uvloop", dest="uvloop", action="store_true", default=default_uvloop)
    loop.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    ns = parser.parse_args(argv)
    if ns.scenario == "pinned":  # pinning is run.py's business (taskset)
        ns.scenario = "sequential"
    return Params(
        role=ns.role,
        port=ns.port,
        scenario=ns.scenario,
        count=ns.count,
        duration=ns.duration,
        warmup=ns.warmup,
        conns=ns.conns,
        batch=ns.batch,
        inflight=ns.inflight,
        payload_size=ns.payload_size,
        sample=ns.sample,
        uvloop=ns.uvloop,
    )


# -- process plumbing ---------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (many_clients, idle: a descriptor each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def run_event_loop(main: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool) -> T:
    """Run ``main()`` on uvloop when asked and installed, else on asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main())
    return asyncio.run(main())


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: which event loop runs this code."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def print_port(port: int) -> None:
    print(f"PORT {port}", flush=True)


def sync(label: str) -> None:
    """Tell run.py we reached ``label`` and wait for its go-ahead (a line on stdin)."""
    print(f"SYNC {label}", flush=True)
    if not sys.stdin.readline():
        raise SystemExit("run.py went away")


def emit_result(result: dict[str, Any]) -> NoReturn:
    """Print the result and exit at once, without closing the connections one by one."""
    print("RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)


# -- statistics ----------------------------------------------------------------


def latency_stats(latencies_ns: list[int], elapsed: float) -> dict[str, float]:
    """Calls per second and p50/p99 latency (µs) of sequential calls."""
    n = len(latencies_ns)
    if n == 0:
        return {"calls": 0, "calls_per_s": 0.0, "p50_us": 0.0, "p99_us": 0.0}
    ordered = sorted(latencies_ns)
    return {
        "calls": n,
        "calls_per_s": n / elapsed,
        "p50_us": ordered[(n - 1) // 2] / 1000,
        "p99_us": ordered[min(n - 1, round(0.99 * (n - 1)))] / 1000,
    }


async def callback_loop(
    add: Callable[[int, int], Awaitable[int]], count: int, seconds: float
) -> dict[str, float]:
    """
    The server side of the callbacks scenario: sequential calls of the client's
    ``add`` for at most ``count`` calls and ``seconds`` seconds.
    """
    latencies: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(seconds * 1e9)
    for i in range(count):
        t0 = clock()
        if t0 >= deadline:
            break
        if await add(i, 1) != i + 1:
            raise AssertionError("wrong sum")
        latencies.append(clock() - t0)
    return latency_stats(latencies, (clock() - start) / 1e9)


def sample_indices(total: int, size: int) -> list[int]:
    """``size`` indices spread evenly over ``range(total)``, first and last included."""
    size = min(size, total)
    if size <= 1:
        return list(range(size))
    return [round(i * (total - 1) / (size - 1)) for i in range(size)]


def idle_result(
    *,
    requested: int,
    opened: int,
    errors: list[str],
    connect_s: float,
    sample: int,
    sample_errors: list[str],
) -> dict[str, Any]:
    """What the idle scenario reports, on every system."""
    return {
        "connections": opened,
        "connections_requested": requested,
        "connect_errors": len(errors),
        "first_connect_error": errors[0] if errors else None,
        "connect_s": connect_s,
        "sample": sample,
        "sample_ok": sample - len(sample_errors),
        "first_sample_error": sample_errors[0] if sample_errors else None,
    }


# -- the async client scenarios -------------------------------------------------


@dataclass
class AsyncClient:
    """
    One open connection, as the scenarios see it.

    Each attribute returns an awaitable (a coroutine or a future): systems
    plug their own call path in with as little wrapping as they can.
    """

    add: Callable[[int, int], Awaitable[int]]
    echo: Callable[[bytes], Awaitable[bytes]]
    run_callbacks: Callable[[int, float], Awaitable[dict[str, float]]]
    owner: object = None
    """Whatever must stay referenced while the connection is in use."""


Connect = Callable[[Params], Awaitable[AsyncClient]]


async def _warm_up(client: AsyncClient, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 10:
        await client.add(i, 1)
        i += 1


async def sequential(p: Params, connect: Connect) -> dict[str, Any]:
    client = await connect(p)
    await _warm_up(client, p.warmup)
    add = client.add
    latencies: list[int] = []
    clock = time.perf_counter_ns
    sync("start")
    cpu = time.process_time()
    start = clock()
    deadline = start + int(p.duration * 1e9)
    for i in range(p.count):
        t0 = clock()
        if t0 >= deadline:
            break
        if await add(i, 1) != i + 1:
            raise AssertionError("wrong sum")
        latencies.append(clock() - t0)
    result = latency_stats(latencies, (clock() - start) / 1e9)
    result["client_cpu_s"] = time.process_time() - cpu
    sync("end")
    return result


async def pipelined(p: Params, connect: Connect) -> dict[str, Any]:
    client = await connect(p)
    await _warm_up(client, p.warmup)
    add = client.add
    remaining = p.count
    deadline = time.perf_counter() + p.duration

    async def worker() -> int:
        nonlocal remaining
        done = 0
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            if await add(done, 1) != done + 1:
                raise AssertionError("wrong sum")
            done += 1
        return done

    sync("start")
    cpu = time.process_time()
    start = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(p.inflight)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    sync("end")
    calls = sum(counts)
    return {
        "calls": calls,
        "calls_per_s": calls / elapsed,
        "inflight": p.inflight,
        "client_cpu_s": cpu,
    }


async def many_clients(p: Params, connect: Connect) -> dict[str, Any]:
    warm = await connect(p)  # the first connection pays for lazy imports and caches
    await _warm_up(warm, p.warmup)
    sync("before")
    start = time.perf_counter()
    clients: list[AsyncClient] = []
    while len(clients) < p.conns:
        batch = min(p.batch, p.conns - len(clients))
        clients += await asyncio.gather(*(connect(p) for _ in range(batch)))
    connect_s = time.perf_counter() - start
    sync("opened")
    # Opening 1,000 connections leaves tens of thousands of objects for the
    # collector's next full pass, which then fell into the measured seconds
    # or not, by chance (80 ms for wsrpc's client): it is set-up, not calls.
    # Collections the calls themselves cause still count.
    gc.collect()
    remaining = p.count
    deadline = time.perf_counter() + p.duration

    async def worker(client: AsyncClient) -> int:
        nonlocal remaining
        add = client.add
        done = 0
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            if await add(done, 1) != done + 1:
                raise AssertionError("wrong sum")
            done += 1
        return done

    cpu = time.process_time()
    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    idle = sum(1 for c in counts if c == 0)
    sync("active")
    return {
        "calls": sum(counts),
        "calls_per_s": sum(counts) / elapsed,
        "connections": len(clients),
        "connect_s": connect_s,
        "idle_connections": idle,
        "client_cpu_s": cpu,
    }


async def idle(p: Params, connect: Connect) -> dict[str, Any]:
    """
    Open ``p.conns`` connections in batches of ``p.batch`` and leave them idle
    while run.py reads the server's RSS; then one call on ``p.sample`` of them,
    spread over the range, proves they are still alive.

    A connection that fails to open is counted, not fatal; opening stops at
    the first batch in which none opened (the server or this process is out
    of something, and more attempts would only fail the same way).
    """
    warm = await connect(p)  # the first connection pays for lazy imports and caches
    await _warm_up(warm, p.warmup)
    sync("before")
    start = time.perf_counter()
    clients: list[AsyncClient] = []
    errors: list[str] = []
    attempted = 0
    while attempted < p.conns:
        batch = min(p.batch, p.conns - attempted)
        attempted += batch
        outcomes = await asyncio.gather(*(connect(p) for _ in range(batch)), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, AsyncClient):
                clients.append(outcome)
            else:
                errors.append(repr(outcome))
        if not any(isinstance(outcome, AsyncClient) for outcome in outcomes):
            break
    connect_s = time.perf_counter() - start
    sync("opened")

    async def one_call(i: int) -> None:
        if await clients[i].add(i, 1) != i + 1:
            raise AssertionError("wrong sum")

    sample = sample_indices(len(clients), p.sample)
    calls = [asyncio.ensure_future(one_call(i)) for i in sample]
    sample_errors: list[str] = []
    if calls:
        done, pending = await asyncio.wait(calls, timeout=SAMPLE_TIMEOUT)
        for call in pending:
            call.cancel()
        sample_errors += ["no reply in time"] * len(pending)
        sample_errors += [repr(c.exception()) for c in done if c.exception() is not None]
    return idle_result(
        requested=p.conns,
        opened=len(clients),
        errors=errors,
        connect_s=connect_s,
        sample=len(sample),
        sample_errors=sample_errors,
    )


async def payload(p: Params, connect: Connect) -> dict[str, Any]:
    client = await connect(p)
    data = os.urandom(p.payload_size)  # incompressible: deflate cannot cheat
    if await client.echo(data) != data:
        raise AssertionError("echo mismatch")
    echo = client.echo
    size = len(data)
    n = 0
    start = time.perf_counter()
    deadline = start + p.duration
    while n < p.count and time.perf_counter() < deadline:
        if len(await echo(data)) != size:
            raise AssertionError("echo mismatch")
        n += 1
    elapsed = time.perf_counter() - start
    return {"echoes": n, "mib_per_s": n * size / 2**20 / elapsed, "payload_bytes": size}


async def callbacks(p: Params, connect: Connect) -> dict[str, Any]:
    client = await connect(p)
    await client.run_callbacks(1_000_000, p.warmup)
    return dict(await client.run_callbacks(p.count, p.duration))


ASYNC_SCENARIOS: dict[str, Callable[[Params, Connect], Awaitable[dict[str, Any]]]] = {
    "sequential": sequential,
    "pipelined": pipelined,
    "many_clients": many_clients,
    "idle": idle,
    "payload": payload,
    "callbacks": callbacks,
}


def main(
    *,
    serve: Callable[[Params], Awaitable[int]],
    connect: Connect,
    default_uvloop: bool = False,
    argv: Sequence[str] | None = None,
) -> None:
    """
    The command line of an asyncio-based system.

    ``serve`` starts the server on 127.0.0.1, port 0, and returns its port;
    ``connect`` opens one client connection to ``params.port``.
    """
    p = parse_args(argv, default_uvloop=default_uvloop)
    raise_nofile_limit()
    if p.role == "server":

        async def server_main() -> None:
            print_port(await serve(p))
            await asyncio.Event().wait()  # until run.py kills us

        run_event_loop(server_main, p.uvloop)
        return

    scenario = ASYNC_SCENARIOS[p.scenario]

    async def client_main() -> None:
        result = await scenario(p, connect)
        result["loop"] = loop_name()
        # Exit from inside the loop: leaving asyncio.run() would cancel every
        # connection's tasks and wait for them, for up to 10,000 connections
        # (and a wsrpc connector left open makes asyncio.run() wait for ever).
        emit_result(result)

    run_event_loop(client_main, p.uvloop)
