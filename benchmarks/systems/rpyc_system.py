"""
rpyc: ``ThreadedServer`` (one thread per connection), blocking clients.

TCP_NODELAY is set by hand on both ends (rpyc leaves Nagle on by default,
which costs ~40 ms per round trip on Linux). Calls go through a cached
``conn.root.add`` (``conn.root.add`` itself would be a remote ``getattr``
each time). Pipelining uses ``rpyc.async_`` with a window of 100 pending
results; many clients are 1,000 connections driven by 1,000 threads, as
rpyc programs do; in the idle scenario the server holds one thread per idle
connection (10,000 by default), the client none. For callbacks the server
calls the client's own service, which rpyc serves while the client waits for
its reply. rpyc's defaults are kept otherwise, including its zlib
compression of large messages.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import rpyc
from rpyc.utils.server import ThreadedServer

from . import common
from .common import Params


def _nodelay(conn: Any) -> None:
    conn._channel.stream.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ServerService(rpyc.Service):  # type: ignore[misc]
    def on_connect(self, conn: Any) -> None:
        self._conn = conn

    def exposed_add(self, a: int, b: int) -> int:
        return a + b

    def exposed_echo(self, data: bytes) -> bytes:
        return data

    def exposed_run_callbacks(self, count: int, seconds: float) -> tuple[float, ...]:
        add = self._conn.root.add
        latencies: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(seconds * 1e9)
        for i in range(count):
            t0 = clock()
            if t0 >= deadline:
                break
            if add(i, 1) != i + 1:
                raise AssertionError("wrong sum")
            latencies.append(clock() - t0)
        stats = common.latency_stats(latencies, (clock() - start) / 1e9)
        # A tuple travels by value; a dict would come back as a remote reference.
        return (stats["calls"], stats["calls_per_s"], stats["p50_us"], stats["p99_us"])


class ClientService(rpyc.Service):  # type: ignore[misc]
    def exposed_add(self, a: int, b: int) -> int:
        return a + b


class NoDelayServer(ThreadedServer):  # type: ignore[misc]
    def _accept_method(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._accept_method(sock)


def serve() -> None:
    server = NoDelayServer(
        ServerService,
        hostname="127.0.0.1",
        port=0,
        backlog=1024,
        protocol_config={"sync_request_timeout": 120},
    )
    server._listen()
    common.print_port(int(server.port))
    server.start()


def connect(p: Params) -> Any:
    conn = rpyc.connect(
        "127.0.0.1",
        p.port,
        service=ClientService,
        config={"sync_request_timeout": 120},
    )
    _nodelay(conn)
    return conn


def warm_up(add: Callable[[int, int], int], seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 10:
        add(i, 1)
        i += 1


def sequential(p: Params) -> dict[str, Any]:
    add = connect(p).root.add
    warm_up(add, p.warmup)
    latencies: list[int] = []
    clock = time.perf_counter_ns
    common.sync("start")
    cpu = time.process_time()
    start = clock()
    deadline = start + int(p.duration * 1e9)
    for i in range(p.count):
        t0 = clock()
        if t0 >= deadline:
            break
        if add(i, 1) != i + 1:
            raise AssertionError("wrong sum")
        latencies.append(clock() - t0)
    result = common.latency_stats(latencies, (clock() - start) / 1e9)
    result["client_cpu_s"] = time.process_time() - cpu
    common.sync("end")
    return result


def pipelined(p: Params) -> dict[str, Any]:
    add = connect(p).root.add
    warm_up(add, p.warmup)
    async_add = rpyc.async_(add)
    window: deque[tuple[int, Any]] = deque()
    done = 0
    common.sync("start")
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + p.duration
    i = 0
    while i < p.count and time.perf_counter() < deadline:
        if len(window) >= p.inflight:
            expected, result = window.popleft()
            if result.value != expected:
                raise AssertionError("wrong sum")
            done += 1
        window.append((i + 1, async_add(i, 1)))
        i += 1
    while window:
        expected, result = window.popleft()
        if result.value != expected:
            raise AssertionError("wrong sum")
        done += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    common.sync("end")
    return {
        "calls": done,
        "calls_per_s": done / elapsed,
        "inflight": p.inflight,
        "client_cpu_s": cpu,
    }


def many_clients(p: Params) -> dict[str, Any]:
    threading.stack_size(512 * 1024)
    warm = connect(p)
    warm_up(warm.root.add, p.warmup)
    common.sync("before")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=p.batch) as pool:
        conns = list(pool.map(lambda _: connect(p), range(p.conns)))
    connect_s = time.perf_counter() - start
    adds = [conn.root.add for conn in conns]  # one remote getattr each, before the clock
    common.sync("opened")
    remaining = p.count
    lock = threading.Lock()
    counts = [0] * len(adds)
    barrier = threading.Barrier(len(adds) + 1)
    deadline = 0.0

    def worker(index: int) -> None:
        nonlocal remaining
        add = adds[index]
        barrier.wait()
        done = 0
        while time.perf_counter() < deadline:
            with lock:
                if remaining <= 0:
                    break
                remaining -= 1
            if add(done, 1) != done + 1:
                raise AssertionError("wrong sum")
            done += 1
        counts[index] = done

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(adds))]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + p.duration
    start = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    common.sync("active")
    return {
        "calls": sum(counts),
        "calls_per_s": sum(counts) / elapsed,
        "connections": len(conns),
        "connect_s": connect_s,
        "idle_connections": sum(1 for c in counts if c == 0),
    }


def idle(p: Params) -> dict[str, Any]:
    """
    The idle scenario with blocking connections: ``p.batch`` threads open them,
    a batch at a time, and the client keeps no thread per connection (nothing
    reads an idle rpyc connection). Each connection fetches ``conn.root`` once
    while it opens: rpyc has no handshake, and this round trip is what makes
    sure the server's thread for it runs before its memory is read.
    """
    warm = connect(p)
    warm_up(warm.root.add, p.warmup)
    common.sync("before")

    def open_one(_: int) -> Any:
        conn = connect(p)
        conn.root  # noqa: B018 - a round trip: the server's thread is serving it
        return conn

    conns: list[Any] = []
    errors: list[str] = []
    attempted = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=p.batch) as pool:
        while attempted < p.conns:
            batch = min(p.batch, p.conns - attempted)
            attempted += batch
            futures = [pool.submit(open_one, i) for i in range(batch)]
            opened = 0
            for future in futures:
                try:
                    conns.append(future.result())
                    opened += 1
                except Exception as exc:
                    errors.append(repr(exc))
            if not opened:
                break
    connect_s = time.perf_counter() - start
    common.sync("opened")

    sample = common.sample_indices(len(conns), p.sample)
    sample_errors: list[str] = []
    for i in sample:  # sequentially: 100 blocking round trips take milliseconds
        try:
            if conns[i].root.add(i, 1) != i + 1:
                raise AssertionError("wrong sum")
        except Exception as exc:
            sample_errors.append(repr(exc))
    return common.idle_result(
        requested=p.conns,
        opened=len(conns),
        errors=errors,
        connect_s=connect_s,
        sample=len(sample),
        sample_errors=sample_errors,
    )


def payload(p: Params) -> dict[str, Any]:
    echo = connect(p).root.echo
    data = os.urandom(p.payload_size)
    if echo(data) != data:
        raise AssertionError("echo mismatch")
    n = 0
    start = time.perf_counter()
    deadline = start + p.duration
    while n < p.count and time.perf_counter() < deadline:
        if len(echo(data)) != len(data):
            raise AssertionError("echo mismatch")
        n += 1
    elapsed = time.perf_counter() - start
    return {"echoes": n, "mib_per_s": n * len(data) / 2**20 / elapsed, "payload_bytes": len(data)}


def callbacks(p: Params) -> dict[str, Any]:
    run_callbacks = connect(p).root.run_callbacks
    run_callbacks(1_000_000, p.warmup)
    calls, calls_per_s, p50, p99 = run_callbacks(p.count, p.duration)
    return {"calls": calls, "calls_per_s": calls_per_s, "p50_us": p50, "p99_us": p99}


SCENARIOS: dict[str, Callable[[Params], dict[str, Any]]] = {
    "sequential": sequential,
    "pipelined": pipelined,
    "many_clients": many_clients,
    "idle": idle,
    "payload": payload,
    "callbacks": callbacks,
}


def main() -> None:
    p = common.parse_args()
    common.raise_nofile_limit()
    if p.role == "server":
        serve()
        return
    result = SCENARIOS[p.scenario](p)
    result["loop"] = "threads"
    common.emit_result(result)


if __name__ == "__main__":
    main()
    sys.exit(0)
