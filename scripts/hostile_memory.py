"""
What hostile peers cost a wsrpc server in memory: per malformed-input case,
per idle connection, and per silent socket.

Run from the repository root::

    .venv/bin/python scripts/hostile_memory.py            # about half a minute
    .venv/bin/python scripts/hostile_memory.py --all      # every case of the suite
    .venv/bin/python scripts/hostile_memory.py --silent 5000

The server runs in a child process (this script with ``--serve``), on
127.0.0.1, port 0, with :mod:`tracemalloc` on, so that only its own
allocations count; the hostile clients run in this process. The cases are
those of ``tests/io/test_hostile.py`` (one definition for both): by default the
ones whose frames are 4 KiB or more or compressed, plus a sample of small
ones (``--all`` runs every one). Each case runs on a fresh connection to a
server with the case's options (one child per set of options):

1. the child notes its tracemalloc and RSS baseline, resets the tracemalloc
   peak and the RSS high-water mark (``/proc/self/clear_refs``);
2. this process connects (with the wsrpc handshake done by hand, unless the
   case is about the handshake), sends the case's frames and waits for the
   answer (a close code or a reply);
3. it closes its side; the child waits until the connection is gone from
   ``server.acceptors``, then reports.

Columns of the table:

``answer``  the close code or the reply (``ret``/``err``) received.
``ms``      from the first frame sent to the answer (tracemalloc makes the
            server several times slower than usual: compare, do not quote).
``peak``    tracemalloc peak over the baseline while the case ran (KiB).
``extra``   ``peak`` minus the peak of one valid call on a fresh connection
            to the same server (about 280 KiB: asyncio reads a socket into a
            fresh 256 KiB buffer), which any frame costs (KiB).
``bound``   the hardening issue's bound: 2 x ``max_message_size`` (KiB).
``rss``     peak RSS (VmHWM) over the RSS at the start of the case (KiB).
            The allocator reuses freed memory, so this undercounts a peak
            that fits in memory freed by earlier cases.
``kept``    tracemalloc memory still held once the connection is gone, after
            a garbage collection (KiB): a leak if it grows case after case.
``verdict`` ``OVER`` when ``extra`` exceeds ``bound``.

Then, on a default server: 100 idle accepted connections (wsrpc clients that
did the handshake and sent nothing else), and ``--silent`` (1,000) raw
sockets that did the WebSocket upgrade and never send a header, all waiting
at once (``header_timeout`` is raised to 60 s so that none times out while
the others open): the server's memory per connection, tracemalloc and RSS.

Exits 1 when a case got another answer than the suite expects, 0 otherwise
(``OVER`` rows are reported, not failed: they are known findings).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import json
import os
import re
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsrpc  # noqa: E402
from tests.io.test_hostile import (  # noqa: E402
    ALL_CASES,
    DEFAULT_MAX,
    HEADER,
    MEMORY_CASES,
    MP_PROBE,
    PROBED,
    TG_PROBE,
    TOKEN,
    AddRemote,
    Case,
    Codec,
    Service,
    case_id,
    hostile_client,
    outcomes,
    send,
    token_of,
    ws_frame,
)

KiB = 1024
SAMPLE = {
    "msgpack: never-used byte",
    "msgpack: call uid '1'",
    "msgpack: reused running call id",
    "msgpack: return for an unknown uid",
    "msgpack: map key 1",
    "msgpack: ext type 5",
    "msgpack: text frame",
    "msgpack: oversized message",
    "tgrid: not JSON",
    'tgrid: call uid "1"',
    "tgrid: binary frame",
    "msgpack handshake: call before the header",
    "msgpack handshake: header over max_message_size",
    "tgrid handshake: header over max_message_size",
}
"""Small cases measured besides the large ones, one per kind."""


# -- the server, in a child process ------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_mark() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1)) * KiB


def reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


async def serve(options: dict[str, Any]) -> None:
    """Serve until stdin closes; answer one JSON line per JSON command line."""
    tracemalloc.start()
    service = Service()

    async def handler(acceptor: wsrpc.WebSocketAcceptor[Any, Service, None]) -> None:
        token = token_of(acceptor.header)
        if token is not None and hmac.compare_digest(token.encode(), TOKEN.encode()):
            await acceptor.accept(service)
        else:
            await acceptor.reject(4001, "invalid token")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    base = base_rss = connections = 0

    def reply(**fields: Any) -> None:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    async with wsrpc.WebSocketServer[Any, Service, None](**options) as server:
        await server.open(0, handler)
        reply(port=server.port)
        while line := await reader.readline():
            command = json.loads(line)["do"]
            if command == "start":
                gc.collect()
                connections = len(server.acceptors)
                base = tracemalloc.get_traced_memory()[0]
                base_rss = rss()
                tracemalloc.reset_peak()
                reset_high_water_mark()
                reply(ok=True)
            elif command == "sample":  # while connections are open
                reply(
                    current=tracemalloc.get_traced_memory()[0] - base,
                    rss=rss() - base_rss,
                    connections=len(server.acceptors) - connections,
                )
            elif command == "stop":
                peak = tracemalloc.get_traced_memory()[1] - base
                high = high_water_mark() - base_rss
                deadline = time.monotonic() + 10
                # A connection leaves server.acceptors once its close hooks have
                # run, a moment after it is closed: poll for that moment.
                while len(server.acceptors) > connections and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                gc.collect()
                reply(
                    peak=peak,
                    rss=high,
                    kept=tracemalloc.get_traced_memory()[0] - base,
                    lingering=len(server.acceptors) - connections,
                )


# -- this side: the child, and the measurements ------------------------------------


class Child:
    """A server child process, driven over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/"

    @classmethod
    async def start(cls, options: dict[str, Any]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        child = cls(process, 0)
        child.port = (await child.read())["port"]
        child.url = f"ws://127.0.0.1:{child.port}/"
        return child

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the server child died")
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"do": command}).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        await self.process.wait()


def describe(outcome: Any) -> str:
    if isinstance(outcome, int):
        return str(outcome)
    kind, _, value = outcome
    return "ret" if kind == "return" else f"err {value}"


async def run_case(child: Child, case: Case, floor: int = 0) -> dict[str, Any]:
    await child.ask("start")
    async with hostile_client(
        child.url, case.codec, handshake=case.handshake, compression=case.compression
    ) as ws:
        started = time.monotonic()
        for frame in case.frames:
            await send(ws, frame)
        seen = await outcomes(ws, case.codec, len(case.expect), 30)
        elapsed = time.monotonic() - started
    figures = await child.ask("stop")
    max_size = case.options.get("max_message_size", DEFAULT_MAX)
    return {
        "case": case_id(case),
        "answer": " ".join(describe(outcome) for outcome in seen),
        "ok": tuple(seen) == case.expect,
        "ms": elapsed * 1000,
        "peak": figures["peak"],
        "extra": figures["peak"] - floor,
        "bound": 2 * max_size,
        "rss": figures["rss"],
        "kept": figures["kept"],
        "lingering": figures["lingering"],
    }


async def idle_connections(child: Child, count: int) -> dict[str, float]:
    await child.ask("start")
    connectors: list[wsrpc.WebSocketConnector[dict[str, str], None, AddRemote]] = []
    try:
        for _ in range(count):
            connector: wsrpc.WebSocketConnector[dict[str, str], None, AddRemote] = (
                wsrpc.WebSocketConnector(HEADER)
            )
            await connector.connect(child.url)
            connectors.append(connector)
        assert await connectors[-1].get_driver().add(1, 2) == 3
        sample = await child.ask("sample")
    finally:
        for connector in connectors:
            await connector.close()
    after = await child.ask("stop")
    return {
        "count": sample["connections"],
        "current": sample["current"] / sample["connections"],
        "rss": sample["rss"] / sample["connections"],
        "kept": after["kept"],
    }


class Silent(asyncio.Protocol):
    """Upgrades, then stays silent; counts upgrades and closes."""

    def __init__(self, request: bytes, counts: dict[str, int], upgraded: asyncio.Event) -> None:
        self.request = request
        self.counts = counts
        self.upgraded = upgraded
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and self.buffer.startswith(b"HTTP/1.1 101 "):
            self.buffer = b""
            self.counts["upgraded"] += 1
            self.upgraded.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts["lost"] += 1


async def silent_sockets(child: Child, count: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{child.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    counts = {"upgraded": 0, "lost": 0}
    upgraded = asyncio.Event()
    await child.ask("start")
    transports: list[asyncio.Transport] = []
    started = time.monotonic()
    try:
        for batch in range(0, count, 100):
            size = min(100, count - batch)
            for _ in range(size):
                transport, _ = await loop.create_connection(
                    lambda: Silent(request, counts, upgraded), "127.0.0.1", child.port
                )
                transports.append(transport)
            while counts["upgraded"] < batch + size:
                upgraded.clear()
                await asyncio.wait_for(upgraded.wait(), 30)
        opening = time.monotonic() - started
        sample = await child.ask("sample")
    finally:
        for transport in transports:
            # A close frame, as a polite client would send, then the socket.
            transport.write(ws_frame(8, (1000).to_bytes(2, "big")))
            transport.close()
    after = await child.ask("stop")
    return {
        "count": sample["connections"],
        "opening": opening,
        "current": sample["current"] / max(sample["connections"], 1),
        "rss": sample["rss"] / max(sample["connections"], 1),
        "kept": after["kept"],
    }


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    header = (
        f"{'case':60} | {'answer':14} | {'ms':>6} | {'peak':>6} | {'extra':>6} | "
        f"{'bound':>5} | {'rss':>6} | {'kept':>4} | verdict"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = "OVER" if row["extra"] > row["bound"] else "ok"
        if not row["ok"]:
            verdict += " (unexpected answer)"
        if row["lingering"]:
            verdict += f" ({row['lingering']} connections left)"
        print(
            f"{row['case'][:60]:60} | {row['answer'][:14]:14} | {row['ms']:6.1f} | "
            f"{row['peak'] / KiB:6.0f} | {row['extra'] / KiB:6.0f} | {row['bound'] / KiB:5.0f} | "
            f"{row['rss'] / KiB:6.0f} | {row['kept'] / KiB:4.0f} | {verdict}"
        )


async def main(arguments: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < arguments.silent + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, arguments.silent + 200), hard))
    if arguments.all:
        cases = list(ALL_CASES)
    else:
        cases = [case for case in ALL_CASES if case in MEMORY_CASES or case_id(case) in SAMPLE]
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(json.dumps(case.options, sort_keys=True), []).append(case)
    rows: list[dict[str, Any]] = []
    floors: list[int] = []
    for options, group in groups.items():
        child = await Child.start(json.loads(options))
        try:
            # What any frame costs (asyncio reads into a fresh 256 KiB buffer):
            # the peak of one valid call on the same kind of connection, once
            # each codec is warm (the first TGrid connection imports its codec).
            compression = any(case.compression for case in group)
            codecs: list[Codec] = json.loads(options).get("codecs", ["msgpack", "tgrid"])
            warm: list[int] = []
            for round in range(2):
                for codec in codecs:
                    probe = Case(
                        "one valid call",
                        codec,
                        (MP_PROBE if codec == "msgpack" else TG_PROBE,),
                        (PROBED,),
                        compression=compression,
                    )
                    peak = (await run_case(child, probe))["peak"]
                    if round:
                        warm.append(peak)
            floor = max(warm)
            floors.extend(warm)
            for case in group:
                rows.append(await run_case(child, case, floor))
        finally:
            await child.stop()
    print("Server memory per malformed-input case (KiB; tracemalloc and RSS of the server")
    print(f"process only; python {sys.version.split()[0]}, {len(rows)} cases; one valid call")
    print(f"costs {min(floors) / KiB:.0f}-{max(floors) / KiB:.0f} KiB at the peak):")
    print()
    print_table(rows)

    child = await Child.start({"header_timeout": 60.0})
    try:
        idle = await idle_connections(child, 100)
        silent = await silent_sockets(child, arguments.silent)
    finally:
        await child.stop()
    print()
    print(
        f"{idle['count']:.0f} idle accepted connections: {idle['current'] / KiB:.1f} KiB each "
        f"(tracemalloc), {idle['rss'] / KiB:.1f} KiB each (RSS); "
        f"{idle['kept'] / KiB:.0f} KiB kept after they closed"
    )
    print(
        f"{silent['count']:.0f} silent sockets waiting at once (opened in "
        f"{silent['opening']:.2f} s): {silent['current'] / KiB:.1f} KiB each (tracemalloc), "
        f"{silent['rss'] / KiB:.1f} KiB each (RSS); {silent['kept'] / KiB:.0f} KiB kept after "
        f"they closed"
    )
    over = [row["case"] for row in rows if row["extra"] > row["bound"]]
    unexpected = [row["case"] for row in rows if not row["ok"]]
    print()
    print(f"over the 2 x max_message_size bound: {len(over)} of {len(rows)}")
    for name in over:
        print(f"  {name}")
    if unexpected:
        print(f"unexpected answers: {unexpected}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="measure every case of the suite")
    parser.add_argument("--silent", type=int, default=1000, help="silent sockets (1000)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(serve(json.loads(args.serve)))
    else:
        sys.exit(asyncio.run(main(args)))
