"""
Streams: items/s of a wsrpc stream against one call per item and against the
raw transports sending the same items, on both transports; and the memory a
paused stream holds.

For each transport (``--transports``, default both: ``websockets`` on
asyncio's loop, ``picows`` on uvloop, both processes) one server process
(``python streams.py server --transport T``) serves, on two ports:

* wsrpc on that transport: ``numbers(n)``, an async generator yielding the
  ints 0..n-1; ``push(n)``, which calls the client's ``on_item(i)`` for each
  of them, one awaited call at a time, and returns the seconds it took (the
  workaround streams replace); ``paused(size)``, a generator yielding
  ``size`` bytes for ever; ``produced()``, how many items ``paused`` made;
* the raw library of that transport, no RPC: a client sends ``n``
  (msgpack), the server sends ``n`` binary frames shaped as wsrpc's ITEM
  (``[7, 1, i]``, msgpack, one message each) and a last one,
  ``[3, 1, nil]``, the way a minimal hand-written producer would: websockets'
  ``await send()`` per item; on picows, ``transport.send()`` per item and a
  wait only while the transport has paused writing. The client decodes
  each frame. The ceiling: what the socket carries.

The client (this script, without arguments) starts each server, runs each
figure ``--repeat`` times (interleaved), keeps the median, and prints a
Markdown table per transport and the targets of issue 16:

* ``stream``: ``async for`` over ``numbers(n)``: items/s, timed by the client;
* ``calls``: ``push(n)``: items/s, timed on the server;
* ``raw``: items/s of the same messages on the raw library, timed by the client;
* ``paused``: ``--paused`` streams of ``paused(1024)`` opened at once, one
  item taken from each, then left unread: the server's RSS growth per paused
  stream once they stopped, the items produced (16 each: the first window),
  and the server's RSS growth during one more second (none: the generators
  are paused, not buffering); the client's RSS growth per stream (the items
  it holds, unread);
* ``paused_after_100``: the same with 100 items read from each stream
  first, once the window has grown to 256 items (1 KiB items): 264 items
  made per stream, 164 of them held unread by the client.

It writes every repetition, the medians, the ratios and the targets as JSON
(``--out``, default ``results/streams.json``; the same table in Markdown
next to it, ``.md``). Run it (under a minute)::

    .venv/bin/python benchmarks/streams.py
    .venv/bin/python benchmarks/streams.py --transports picows --repeat 5

picows and uvloop are optional: without them, only ``websockets`` runs.
``--base CHECKOUT`` measures another commit's wsrpc too, in the same run
(each in client processes of their own: ``python streams.py measure``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgpack
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

import wsrpc
from wsrpc._communicator import STREAM_WINDOW

BENCH_DIR = Path(__file__).resolve().parent
TRANSPORTS: tuple[wsrpc.TransportName, ...] = ("websockets", "picows")
ITEM, RETURN = 7, 3  # wsrpc's message kinds, for the raw frames
T = TypeVar("T")

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


async def raw_websockets_handler(connection: ServerConnection) -> None:
    async for request in connection:
        assert isinstance(request, bytes)
        n = msgpack.unpackb(request)
        packer = msgpack.Packer()
        for i in range(n):
            await connection.send(packer.pack([ITEM, 1, i]))
        await connection.send(packer.pack([RETURN, 1, None]))


async def serve_raw_picows() -> int:
    """The raw picows producer; its port."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    class RawProducer(WSListener):
        def __init__(self) -> None:
            super().__init__()
            self.transport: WSTransport | None = None
            self.resumed: asyncio.Future[None] | None = None
            self.tasks: set[asyncio.Task[None]] = set()

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type is WSMsgType.BINARY:
                n = msgpack.unpackb(frame.get_payload_as_bytes())
                task = asyncio.get_running_loop().create_task(self.produce(n))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        def pause_writing(self) -> None:
            self.resumed = asyncio.get_running_loop().create_future()

        def resume_writing(self) -> None:
            if self.resumed is not None and not self.resumed.done():
                self.resumed.set_result(None)
            self.resumed = None

        async def produce(self, n: int) -> None:
            assert self.transport is not None
            send = self.transport.send
            packer = msgpack.Packer()
            for i in range(n):
                send(WSMsgType.BINARY, packer.pack([ITEM, 1, i]))
                if self.resumed is not None:
                    await self.resumed
            send(WSMsgType.BINARY, packer.pack([RETURN, 1, None]))

    server = await ws_create_server(lambda request: RawProducer(), "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1])


async def serve(transport: wsrpc.TransportName) -> None:
    async def handler(acceptor: wsrpc.WebSocketAcceptor[None, Provider, ClientRemote]) -> None:
        await acceptor.accept(Provider(acceptor))

    server = wsrpc.WebSocketServer[None, Provider, ClientRemote](transport=transport)
    await server.open(0, handler, host="127.0.0.1")
    if transport == "picows":
        print(f"PORTS {server.port} {await serve_raw_picows()}", flush=True)
        await asyncio.get_running_loop().create_future()  # until killed
    async with ws_serve(raw_websockets_handler, "127.0.0.1", 0, compression=None) as raw:
        raw_port = next(iter(raw.sockets)).getsockname()[1]
        print(f"PORTS {server.port} {raw_port}", flush=True)
        await asyncio.get_running_loop().create_future()  # until killed


def run_loop(transport: wsrpc.TransportName, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on the loop of ``transport``: uvloop for picows, asyncio's otherwise."""
    if transport == "picows":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


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


class RawClient(Protocol):
    async def take(self, n: int) -> float:
        """Ask for ``n`` items, read and decode them all: the seconds it took."""
        ...

    async def close(self) -> None: ...


class RawWebsocketsClient:
    def __init__(self, port: int) -> None:
        self._port = port

    async def open(self) -> None:
        self._connection = await ws_connect(f"ws://127.0.0.1:{self._port}/", compression=None)

    async def take(self, n: int) -> float:
        raw = self._connection
        started = time.perf_counter()
        await raw.send(msgpack.packb(n))
        count = 0
        while True:
            message = msgpack.unpackb(await raw.recv(decode=False))
            if message[0] == RETURN:
                break
            count += 1
        elapsed = time.perf_counter() - started
        assert count == n
        return elapsed

    async def close(self) -> None:
        await self._connection.close()


class RawPicowsClient:
    def __init__(self, port: int) -> None:
        self._port = port

    async def open(self) -> None:
        from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        class Consumer(WSListener):
            def __init__(self) -> None:
                super().__init__()
                self.count = 0
                self.done: asyncio.Future[None] | None = None

            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type is not WSMsgType.BINARY:
                    return
                message = msgpack.unpackb(frame.get_payload_as_memoryview())
                if message[0] == RETURN:
                    assert self.done is not None
                    self.done.set_result(None)
                else:
                    self.count += 1

        self._transport, consumer = await ws_connect(Consumer, f"ws://127.0.0.1:{self._port}/")
        assert isinstance(consumer, Consumer)
        self._consumer = consumer
        self._binary = WSMsgType.BINARY

    async def take(self, n: int) -> float:
        consumer = self._consumer
        consumer.count = 0
        consumer.done = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self._transport.send(self._binary, msgpack.packb(n))
        await consumer.done
        elapsed = time.perf_counter() - started
        assert consumer.count == n
        return elapsed

    async def close(self) -> None:
        self._transport.send_close()
        self._transport.disconnect()
        await self._transport.wait_disconnected()


async def measure(
    args: argparse.Namespace,
    transport: wsrpc.TransportName,
    pid: int,
    port: int,
    raw_port: int,
) -> dict[str, Any]:
    """Every figure of one transport: the repetitions of each, and the paused streams."""
    n, calls_n = args.items, args.call_items
    reps: dict[str, list[float]] = {"stream": [], "calls": [], "raw": []}
    raw: RawWebsocketsClient | RawPicowsClient
    raw = RawPicowsClient(raw_port) if transport == "picows" else RawWebsocketsClient(raw_port)
    await raw.open()
    async with wsrpc.WebSocketConnector[None, ClientProvider, ServerRemote](
        None, ClientProvider(), transport=transport
    ) as connector:
        await connector.connect(f"ws://127.0.0.1:{port}/")
        remote = connector.get_driver()
        # Warm up each path once.
        assert len([x async for x in remote.numbers(1000)]) == 1000
        await remote.push(200)
        await raw.take(1000)
        for _ in range(args.repeat):
            started = time.perf_counter()
            count = 0
            async for _item in remote.numbers(n):
                count += 1
            reps["stream"].append(n / (time.perf_counter() - started))
            assert count == n
            reps["calls"].append(calls_n / await remote.push(calls_n))
            reps["raw"].append(n / await raw.take(n))
        await raw.close()
        result: dict[str, Any] = {
            key: {"reps": values, "median": statistics.median(values)}
            for key, values in reps.items()
        }
        result["paused"] = await paused(args, remote, pid, read=1)
        result["paused_after_100"] = await paused(args, remote, pid, read=100)
    return result


async def paused(
    args: argparse.Namespace, remote: ServerRemote, pid: int, *, read: int
) -> dict[str, Any]:
    """
    ``--paused`` streams of 1 KiB items opened at once, ``read`` items taken
    from each, then left unread: what they made, and the memory they hold.
    """
    start = await remote.produced()
    server_before, client_before = rss_kib(pid), rss_kib(os.getpid())
    streams = [aiter(remote.paused(1024)) for _ in range(args.paused)]
    for stream in streams:
        for _ in range(read):
            await anext(stream)
    # Round trips until the count stops moving: every generator used its
    # credit (credit and calls share the connection, in order).
    produced, still = await remote.produced(), 0
    while still < 3 or produced - start < args.paused * max(read, STREAM_WINDOW):
        now = await remote.produced()
        still = still + 1 if now == produced else 0
        produced = now
    server_paused, client_paused = rss_kib(pid), rss_kib(os.getpid())
    await asyncio.sleep(1.0)  # measuring that nothing grows: time is the point here
    server_later = rss_kib(pid)
    produced_later = await remote.produced()
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]  # a wsrpc Stream
    return {
        "streams": args.paused,
        "item_bytes": 1024,
        "read_per_stream": read,
        "kib_per_stream": (server_paused - server_before) / args.paused,
        "client_kib_per_stream": (client_paused - client_before) / args.paused,
        "produced": produced - start,
        "produced_one_second_later": produced_later - start,
        "growth_kib_over_one_second": server_later - server_paused,
    }


def run_transport(args: argparse.Namespace, transport: wsrpc.TransportName) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, __file__, "server", "--transport", transport],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        assert line and line[0] == "PORTS", line
        pid, port, raw_port = server.pid, int(line[1]), int(line[2])
        return run_loop(transport, lambda: measure(args, transport, pid, port, raw_port))
    finally:
        server.kill()
        server.wait()


RAW_LABEL = {"websockets": "raw websockets", "picows": "raw picows (uvloop)"}
LOOP = {"websockets": "asyncio", "picows": "uvloop"}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per transport: the stream against one call per item, its raw library and raw picows."""
    out: dict[str, dict[str, float]] = {}
    raw_picows = results.get("picows", {}).get("raw", {}).get("median")
    for transport, figures in results.items():
        stream = figures["stream"]["median"]
        out[transport] = {
            "stream_vs_calls": stream / figures["calls"]["median"],
            "stream_vs_raw": stream / figures["raw"]["median"],
            "calls_vs_raw": figures["calls"]["median"] / figures["raw"]["median"],
        }
        if raw_picows:
            out[transport]["stream_vs_raw_picows"] = stream / raw_picows
    return out


def targets(ratio: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Issue 16's stream targets, each against its measurement."""
    found = []
    for transport, figures in ratio.items():
        found.append(
            {
                "target": "stream >= 10x one call per item",
                "transport": transport,
                "measured": figures["stream_vs_calls"],
                "met": figures["stream_vs_calls"] >= 10,
            }
        )
        if "stream_vs_raw_picows" in figures:
            found.append(
                {
                    "target": "stream >= 0.5x raw picows",
                    "transport": transport,
                    "measured": figures["stream_vs_raw_picows"],
                    "met": figures["stream_vs_raw_picows"] >= 0.5,
                }
            )
    return found


def table(args: argparse.Namespace, report: dict[str, Any]) -> str:
    """The results as Markdown."""
    results, ratio = report["results"], report["ratios"]
    lines = [
        f"streams: {args.items:,} ints per stream and raw run, {args.call_items:,} calls,"
        f" median of {args.repeat}",
        "",
        "| path | " + " | ".join(f"`{t}` ({LOOP[t]})" for t in results) + " |",
        "| --- |" + " ---: |" * len(results),
    ]
    for key, label in (
        ("stream", "wsrpc stream (`async for`)"),
        ("calls", "wsrpc, one call per item (awaited)"),
        ("raw", "raw library, same items, one message each"),
    ):
        cells = []
        for figures in results.values():
            value = figures[key]["median"]
            cells.append(f"{value:,.0f} items/s ({value / figures['raw']['median']:.2f}x)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| raw library | " + " | ".join(RAW_LABEL[t] for t in results) + " |")
    if "base" in report:
        before = report["base"]["results"]
        for key, label in (
            ("stream", "wsrpc stream, `--base`"),
            ("calls", "one call per item, `--base`"),
            ("raw", "raw library, in `--base`'s processes"),
        ):
            cells = []
            for figures in before.values():
                value = figures[key]["median"]
                cells.append(f"{value:,.0f} items/s ({value / figures['raw']['median']:.2f}x)")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for target in report["targets"]:
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"- {target['target']}, `{target['transport']}`: {target['measured']:.2f}x ({verdict})"
        )
    for transport, figures in ratio.items():
        lines.append(f"- `{transport}`: stream {figures['stream_vs_raw']:.2f}x its raw library")
    if "base" in report:
        lines.append(f"- `--base` is {report['base']['wsrpc']}; its targets:")
        for target in report["base"]["targets"]:
            lines.append(
                f"  - {target['target']}, `{target['transport']}`: {target['measured']:.2f}x"
            )
        for transport, gain in report["base"]["after_vs_base"].items():
            lines.append(
                f"- `{transport}`: stream {gain['stream']:.2f}x `--base`'s,"
                f" one call per item {gain['calls']:.2f}x, raw {gain['raw']:.2f}x"
            )
    lines.append("")
    for transport, figures in results.items():
        for key in ("paused", "paused_after_100"):
            paused = figures[key]
            lines.append(
                f"`{transport}`: {paused['streams']} paused streams of 1 KiB items"
                f" ({paused['read_per_stream']} read from each): "
                f"{paused['kib_per_stream']:.1f} KiB of server RSS each, "
                f"{paused['produced']} items produced "
                f"({paused['produced_one_second_later']} one second later), "
                f"RSS growth over that second {paused['growth_kib_over_one_second']:.0f} KiB; "
                f"the client's RSS grew by {paused['client_kib_per_stream']:.1f} KiB per stream"
            )
    return "\n".join(lines)


def measure_in(args: argparse.Namespace, transport: str, checkout: Path) -> dict[str, Any]:
    """The figures of ``transport`` measured in a client process running ``checkout``'s wsrpc."""
    options = ["--items", str(args.items), "--call-items", str(args.call_items)]
    options += ["--repeat", str(args.repeat), "--paused", str(args.paused)]
    completed = subprocess.run(
        [sys.executable, __file__, "measure", "--transport", transport, *options],
        env=dict(os.environ, PYTHONPATH=str(checkout)),  # the server inherits it
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    line = [x for x in completed.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def wsrpc_revision(root: Path | None = None) -> str:
    """The commit of a wsrpc checkout (the one measured, by default), and where it is."""
    import run  # the harness's helpers

    if root is None:
        root = Path(wsrpc.__file__).resolve().parent.parent
    return f"{run.wsrpc_revision(root)} ({root})"


def meta(args: argparse.Namespace, transports: list[wsrpc.TransportName]) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH_DIR))
    import run  # the harness's description of the machine and versions

    return {
        "benchmark": "streams",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "transports": transports,
        "loops": {t: LOOP[t] for t in transports},
        "items": args.items,
        "call_items": args.call_items,
        "repeat": args.repeat,
        "paused": args.paused,
        "stream_window": STREAM_WINDOW,
        "machine": run.machine(),
        "versions": run.versions(),
        "wsrpc": wsrpc_revision(),
        "load_average_end": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "mode", nargs="?", default="client", choices=["client", "server", "measure"]
    )
    parser.add_argument("--transport", default="websockets", choices=TRANSPORTS)
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help="comma-separated, default both (picows only when picows and uvloop are installed)",
    )
    parser.add_argument("--items", type=int, default=100_000, help="items per stream and raw run")
    parser.add_argument(
        "--call-items", type=int, help="items of one push() run (default: a tenth of --items)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--paused", type=int, default=100)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "streams.json")
    parser.add_argument("--no-out", dest="out", action="store_const", const=None)
    parser.add_argument(
        "--base",
        type=Path,
        help="another commit's checkout (git worktree add): its wsrpc is measured too, "
        "in the same run, each transport's figures next to this one's",
    )
    args = parser.parse_args()
    if args.call_items is None:
        args.call_items = max(1, args.items // 10)
    if args.mode == "server":
        run_loop(args.transport, lambda: serve(args.transport))
        return 0
    if args.mode == "measure":  # one transport, for --base: the results on stdout
        print("RESULT " + json.dumps(run_transport(args, args.transport)), flush=True)
        return 0
    transports: list[wsrpc.TransportName] = []
    for name in args.transports.split(","):
        if name not in TRANSPORTS:
            parser.error(f"unknown transport {name!r}")
        if name == "picows" and not all(
            importlib.util.find_spec(module) for module in ("picows", "uvloop")
        ):
            print("picows or uvloop is not installed: measuring websockets only", flush=True)
            continue
        transports.append(name)
    started = time.monotonic()
    load_start = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    base: dict[str, dict[str, Any]] = {}
    if args.base is None:
        results = {t: run_transport(args, t) for t in transports}
    else:
        # Each wsrpc in processes of its own, one after the other, the
        # order alternating between the transports.
        here = Path(wsrpc.__file__).resolve().parent.parent
        for number, transport in enumerate(transports):
            order = [(here, results), (args.base.resolve(), base)]
            for checkout, into in order[:: 1 if number % 2 == 0 else -1]:
                into[transport] = measure_in(args, transport, checkout)
    ratio = ratios(results)
    report: dict[str, Any] = {
        "meta": meta(args, transports),
        "results": results,
        "ratios": ratio,
        "targets": targets(ratio),
    }
    if base:
        report["base"] = {
            "wsrpc": wsrpc_revision(args.base.resolve()),
            "results": base,
            "ratios": ratios(base),
            "targets": targets(ratios(base)),
            "after_vs_base": {
                t: {
                    key: results[t][key]["median"] / base[t][key]["median"]
                    for key in ("stream", "calls", "raw")
                }
                for t in transports
            },
        }
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    report["meta"]["load_average_start"] = load_start
    print(table(args, report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(args, report) + "\n")
        print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
