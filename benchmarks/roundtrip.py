"""
Profile one system's round trip: both sides in one process, on one loop.

``run.py`` measures calls/s between two processes, which is what users get
but moves with everything else the machine does. This tool measures what
one round trip *costs*, so that a change to the hot path can be judged on a
busy machine: the client and the server of a benchmark system
(``systems/``) run in one process and one event loop over a real loopback
socket, as in the ``pinned`` scenario (one CPU: each round trip pays both
sides' work and two loop wake-ups).

Modes:

* ``time``: N calls, wall-clock and CPU time per call (noisy; for a quick look);
* ``cprofile``: N calls under :mod:`cProfile`, the top functions by own
  time (``--top``), client and server side together (their functions are
  told apart by name: ``_call``/``_on_message`` vs ``_on_call``...);
* ``opcodes``: N calls with :func:`sys.settrace` counting the bytecodes
  each Python function runs (opcode events), per call, by function: where
  the interpreter's work goes, exactly, without the profiler's skew
  towards functions called often;
* ``callgrind``: the process runs twice under ``valgrind --tool=callgrind``,
  with N and 2N measured calls after the same warm-up; the difference of
  the instruction counts divided by N is the instructions per round trip,
  start-up and warm-up cancelled out. Split by shared object (the
  interpreter, which runs all the Python code, and the C extensions:
  uvloop, picows, msgpack...). Instruction counts are exact and nearly
  deterministic: the figure to decide with on a shared machine.

Scenarios: ``sequential`` (one call at a time), ``pipelined`` (``--inflight``
workers), ``many_clients`` (``--conns`` connections, one call at a time on
each), ``callbacks`` (the server calls the client's ``add``), ``payload``
(echo of ``--payload-size`` bytes).

Examples::

    .venv/bin/python roundtrip.py --system wsrpc-fast --mode cprofile
    .venv/bin/python roundtrip.py --system picows --mode callgrind --calls 2000
    PYTHONPATH=/work/base16 .venv/bin/python roundtrip.py --system wsrpc-fast --mode callgrind

(``PYTHONPATH`` picks which wsrpc checkout runs; the systems' code is this
one's, and uses only wsrpc's public API.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import io
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from systems import common  # noqa: E402
from systems.common import AsyncClient, Params  # noqa: E402

SYSTEMS = {
    # name: (module, wsrpc transport or None, uvloop by default)
    "wsrpc-fast": ("systems.wsrpc_system", "picows", True),
    "wsrpc": ("systems.wsrpc_system", "websockets", False),
    "wsrpc-uvloop": ("systems.wsrpc_system", "websockets", True),
    "picows": ("systems.picows_system", None, True),
    "ws-msgpack": ("systems.ws_msgpack", None, False),
}
SCENARIOS = ("sequential", "pipelined", "many_clients", "callbacks", "payload")


def _params(port: int, args: argparse.Namespace) -> Params:
    return Params(
        role="client",
        port=port,
        scenario=args.scenario,
        count=args.calls,
        duration=1e9,
        warmup=0.0,
        conns=1,
        batch=1,
        inflight=args.inflight,
        payload_size=args.payload_size,
        sample=0,
        uvloop=args.uvloop,
    )


async def _calls(clients: list[AsyncClient], args: argparse.Namespace, count: int) -> None:
    """``count`` round trips of the scenario: on every client for many_clients, else the first."""
    client = clients[0]
    if args.scenario == "sequential":
        add = client.add
        for i in range(count):
            if await add(i, 1) != i + 1:
                raise AssertionError("wrong sum")
    elif args.scenario in ("pipelined", "many_clients"):
        # Workers calling one at a time until ``count`` calls are made:
        # ``--inflight`` of them on one connection, or one per connection.
        left = count

        async def worker(other: AsyncClient) -> None:
            nonlocal left
            add = other.add
            while left > 0:
                left -= 1
                await add(left, 1)

        workers = clients if args.scenario == "many_clients" else [client] * args.inflight
        await asyncio.gather(*(worker(c) for c in workers))
    elif args.scenario == "callbacks":
        result = await client.run_callbacks(count, 1e9)
        if result["calls"] != count:
            raise AssertionError(f"callbacks: {result}")
    else:
        data = os.urandom(args.payload_size)
        echo = client.echo
        for _ in range(count):
            if len(await echo(data)) != len(data):
                raise AssertionError("short echo")


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    module_name, transport, _ = SYSTEMS[args.system]
    module = importlib.import_module(module_name)
    if transport is not None:
        setattr(module, "TRANSPORT", transport)  # noqa: B010 (a module attribute, known at run time)
    p = _params(0, args)
    port = await module.serve(p)
    clients = [await module.connect(_params(port, args))]
    if args.scenario == "many_clients":
        clients += [await module.connect(_params(port, args)) for _ in range(args.conns - 1)]
    await _calls(clients, args, args.warmup)
    # The set-up's garbage is collected now rather than by a full pass
    # that falls into the measured calls or not, by chance (run.py does the
    # same): with 100 connections, it moved callgrind's figure by a third.
    gc.collect()
    profiler = cProfile.Profile() if args.mode == "cprofile" else None
    opcodes: Counter[str] = Counter()
    cpu, start = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if args.mode == "opcodes":
        sys.settrace(_opcode_counter(opcodes))
    await _calls(clients, args, args.calls)
    sys.settrace(None)
    if profiler is not None:
        profiler.disable()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    result: dict[str, Any] = {
        "loop": common.loop_name(),
        "us_per_call": elapsed / args.calls * 1e6,
        "cpu_us_per_call": cpu / args.calls * 1e6,
    }
    if opcodes:
        lines = [f"{sum(opcodes.values()) / args.calls:10.1f}  all"]
        for name, count in opcodes.most_common(args.top):
            lines.append(f"{count / args.calls:10.1f}  {name}")
        result["profile"] = "opcodes per call, by function:\n" + "\n".join(lines)
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(args.sort).print_stats(args.top)
        result["profile"] = _trim(out.getvalue())
    return result


def _opcode_counter(counts: Counter[str]) -> Callable[[FrameType, str, Any], Any]:
    """A :func:`sys.settrace` function adding each frame's opcodes to ``counts``."""

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = f"{Path(code.co_filename).name}:{code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    return trace


def _trim(text: str) -> str:
    """pstats' table without its preamble, paths shortened to the package."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "ncalls" in line:
            lines = lines[index:]
            break
    text = "\n".join(lines)
    return re.sub(r"/\S*?/(site-packages|lib/python3\.\d+|wsrpc|benchmarks)/", r"\1/", text)


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process."""
    coro: Callable[[], Coroutine[Any, Any, dict[str, Any]]] = lambda: _main(args)  # noqa: E731
    return common.run_event_loop(coro, args.uvloop)


# -- callgrind ----------------------------------------------------------------------

_OBJECTS = [
    ("uvloop", "uvloop"),
    ("picows", "picows"),
    ("aiofastnet", "aiofastnet"),
    ("msgpack", "msgpack"),
    ("websockets", "websockets"),
    ("libc", "libc"),
    ("python", "python (interpreter: all Python code)"),
]


def _self_cost_by_object(path: str) -> dict[str, int]:
    """Instructions (Ir) spent in each shared object of a callgrind output file."""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    current = "?"
    skip_next = False
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.rstrip("\n")
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if skip_next:  # the inclusive cost of a call: counted in the callee
                skip_next = False
                continue
            fields = line.split()
            if len(fields) >= 2:
                totals[current] = totals.get(current, 0) + int(fields[1])
            continue
        if line.startswith(("ob=", "cob=")):
            # Objects are named once, in whichever of the two comes first.
            match = re.match(r"c?ob=(?:\((\d+)\))?\s*(.*)", line)
            assert match is not None
            key, name = match.groups()
            if key is not None and name:
                names[key] = name
            if head == "o":
                current = names.get(key, name) if key is not None else name
        elif line.startswith("calls="):
            skip_next = True
    grouped: dict[str, int] = {}
    for obj, cost in totals.items():
        base = os.path.basename(obj)
        label = "other"
        for needle, name in _OBJECTS:
            if needle in base or (needle != "python" and needle in obj):
                label = name
                break
        if label == "other" and (base.startswith("libpython") or base.startswith("python")):
            label = "python (interpreter: all Python code)"
        grouped[label] = grouped.get(label, 0) + cost
    return grouped


def run_callgrind(args: argparse.Namespace) -> dict[str, Any]:
    """Instructions per round trip: callgrind runs with N and 2N calls, subtracted."""
    base = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--system",
        args.system,
        "--scenario",
        args.scenario,
        "--warmup",
        str(args.warmup),
        "--inflight",
        str(args.inflight),
        "--conns",
        str(args.conns),
        "--payload-size",
        str(args.payload_size),
        "--mode",
        "time",
        "--uvloop" if args.uvloop else "--no-uvloop",
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    runs: list[dict[str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.calls, 2 * args.calls):
            out = os.path.join(tmp, f"cg.{n}")
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *base,
                "--calls",
                str(n),
            ]
            subprocess.run(command, env=env, check=True, capture_output=True)
            runs.append(_self_cost_by_object(out))
    labels = sorted(set(runs[0]) | set(runs[1]))
    per_call = {
        label: (runs[1].get(label, 0) - runs[0].get(label, 0)) / args.calls for label in labels
    }
    total = sum(per_call.values())
    return {
        "instructions_per_call": round(total),
        "by_object": {k: round(v) for k, v in sorted(per_call.items(), key=lambda kv: -kv[1])},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--system", choices=SYSTEMS, default="wsrpc-fast")
    parser.add_argument("--scenario", choices=SCENARIOS, default="sequential")
    parser.add_argument(
        "--mode", choices=("time", "cprofile", "opcodes", "callgrind"), default="time"
    )
    parser.add_argument("--calls", type=int, default=None, help="measured round trips")
    parser.add_argument("--warmup", type=int, default=500, help="round trips before measuring")
    parser.add_argument("--inflight", type=int, default=100, help="pipelined: workers")
    parser.add_argument("--conns", type=int, default=1000, help="many_clients: connections")
    parser.add_argument("--payload-size", type=int, default=2**20, help="payload: bytes")
    parser.add_argument("--top", type=int, default=30, help="cprofile: functions to list")
    parser.add_argument("--sort", default="tottime", help="cprofile: pstats sort key")
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument("--uvloop", dest="uvloop", action="store_true", default=None)
    loop.add_argument("--no-uvloop", dest="uvloop", action="store_false")
    args = parser.parse_args(argv)
    if args.uvloop is None:
        args.uvloop = SYSTEMS[args.system][2]
    if args.calls is None:
        args.calls = {"callgrind": 2000, "cprofile": 20_000, "opcodes": 2000, "time": 20_000}[
            args.mode
        ]
        if args.scenario == "payload":
            args.calls //= 20
    return args


def main() -> None:
    args = parse_args()
    result = run_callgrind(args) if args.mode == "callgrind" else run_once(args)
    profile = result.pop("profile", None)
    print(f"{args.system} {args.scenario} ({args.mode}, {args.calls} calls):")
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"  {key}:")
            for k, v in value.items():
                print(f"    {k:<42} {v:>10}")
        elif isinstance(value, float):
            print(f"  {key}: {value:.2f}")
        else:
            print(f"  {key}: {value}")
    if profile:
        print(profile)
    sys.stdout.flush()
    os._exit(0)  # as the benchmark clients: no polite close of the connections


if __name__ == "__main__":
    main()
