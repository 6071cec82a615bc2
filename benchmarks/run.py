#!/usr/bin/env python3
"""
Benchmark wsrpc side by side with its peers, in one run.

Every measurement starts a fresh server process and a fresh client process
(``python -m systems.<module> server|client``, see ``systems/``), both on
127.0.0.1; the server listens on port 0 and prints its port. Each figure is
the median of ``--repeat`` runs and is shown as a ratio to the ceiling, a
hand-written msgpack RPC over websockets (``systems/ws_msgpack.py``).

    make -C benchmarks run      # full run in benchmarks/.venv, every peer
    make -C benchmarks smoke    # seconds; wsrpc and the ceiling only
    python benchmarks/run.py --smoke --out /tmp/r.json

Writes the results as JSON (``--out``, default ``results/latest.json``), the
same table in Markdown next to it (``.md``) and, when matplotlib is
installed, a chart (``chart.png`` next to it). Exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# -- what is measured -------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    module: str
    label: str
    requires: tuple[str, ...]
    uvloop: bool = False
    default: bool = True
    thread_per_connection: bool = False
    """The server runs one thread per connection (idle: capped by the machine's task limits)."""
    base: bool = False
    """Runs wsrpc from the ``--base`` checkout (an older commit), to compare commits in one run."""
    only: tuple[str, ...] | None = None
    """The scenarios this system runs (None: every one); the others are shown as ``–``."""


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            "ws-msgpack",
            "ws_msgpack",
            "msgpack over websockets (ceiling)",
            ("websockets", "msgpack"),
        ),
        System(
            "ws-msgpack-deflate",
            "ws_msgpack_deflate",
            "the same, permessage-deflate",
            ("websockets", "msgpack"),
        ),
        System("wsrpc", "wsrpc_system", "wsrpc", ("wsrpc",)),
        System(
            "wsrpc-uvloop",
            "wsrpc_system",
            "wsrpc on uvloop",
            ("wsrpc", "uvloop"),
            uvloop=True,
        ),
        System(
            "wsrpc-fast",
            "wsrpc_fast_system",
            "wsrpc, transport=picows, on uvloop",
            ("wsrpc", "picows", "uvloop"),
            uvloop=True,
        ),
        System(
            "wsrpc-base",
            "wsrpc_system",
            "wsrpc at --base (an older commit)",
            ("wsrpc",),
            default=False,
            base=True,
        ),
        System(
            "wsrpc-fast-base",
            "wsrpc_fast_system",
            "wsrpc-fast at --base (an older commit)",
            ("wsrpc", "picows", "uvloop"),
            uvloop=True,
            default=False,
            base=True,
        ),
        System(
            "wsrpc-validate",
            "wsrpc_validate_system",
            "wsrpc, validate=True",
            ("wsrpc", "msgspec"),
            only=("pinned", "pipelined"),
        ),
        System(
            "wsrpc-fast-validate",
            "wsrpc_fast_validate_system",
            "wsrpc-fast, validate=True",
            ("wsrpc", "msgspec", "picows", "uvloop"),
            uvloop=True,
            only=("pinned", "pipelined"),
        ),
        System("socketio", "socketio_system", "python-socketio (aiohttp)", ("socketio", "aiohttp")),
        System("rpyc", "rpyc_system", "rpyc (threads)", ("rpyc",), thread_per_connection=True),
        System("picows", "picows_system", "raw picows (+uvloop)", ("picows", "msgpack"), True),
    )
}
CEILING = "ws-msgpack"
BASE_CHECKOUT: str | None = None
"""The ``--base`` checkout that the ``*-base`` systems import wsrpc from."""
SMOKE_SYSTEMS = ("ws-msgpack", "wsrpc", "wsrpc-validate")
"""What the repo's own venv can run (wsrpc-validate: if msgspec is there)."""


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    digits: int = 0
    ratio: bool = True
    """Show the ratio to the ceiling (counts have none worth showing)."""
    out_of: str | None = None
    """The key of the total this figure is a part of, shown as ``part/total``."""


CALLS = Metric("calls_per_s", "calls/s", True)
P50 = Metric("p50_us", "p50 µs", False, 1)
P99 = Metric("p99_us", "p99 µs", False, 1)
MIBS = Metric("mib_per_s", "MiB/s", True, 1)
KIB_PER_CONN = Metric("rss_per_conn_kib", "server KiB/conn", False, 1)
SERVER_CPU = Metric("server_cpu_us_per_call", "server CPU µs/call", False, 1)
CONNS_OPEN = Metric("connections", "conns open", True, ratio=False, out_of="connections_requested")
RSS_BEFORE = Metric("rss_before_mib", "server MiB before", False, 1, ratio=False)
RSS_OPENED = Metric("rss_opened_mib", "server MiB after", False, 1, ratio=False)
OPEN_S = Metric("connect_s", "open s", False, 2)
SAMPLE_OK = Metric("sample_ok", "sample calls ok", True, ratio=False, out_of="sample")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # formatted with the run's Budget
    metrics: tuple[Metric, ...]

    def describe(self, budget: Budget) -> str:
        return self.title.format(
            inflight=budget.inflight,
            conns=budget.conns,
            batch=budget.batch,
            sample=budget.sample,
            payload_mib=budget.payload_size / 2**20,
        )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("sequential", "sequential add(a, b) round trips", (CALLS, P50, P99, SERVER_CPU)),
        Scenario(
            "pinned", "sequential, both processes on one CPU (taskset -c 0)", (CALLS, P50, P99)
        ),
        Scenario(
            "pipelined",
            "add(a, b) with {inflight} calls in flight on one connection",
            (CALLS, SERVER_CPU),
        ),
        Scenario(
            "many_clients",
            "{conns:,} connections, each making sequential calls",
            (CALLS, KIB_PER_CONN),
        ),
        Scenario(
            "idle",
            "{conns:,} idle connections, opened {batch:,} at a time; then one call on {sample:,}",
            (CONNS_OPEN, RSS_BEFORE, RSS_OPENED, KIB_PER_CONN, OPEN_S, SAMPLE_OK),
        ),
        Scenario("payload", "{payload_mib:g} MiB bytes echo, one at a time", (MIBS,)),
        Scenario(
            "callbacks", "server calls the client's add(a, b), sequentially", (CALLS, P50, P99)
        ),
    )
}


@dataclass(frozen=True)
class Budget:
    """Bounds of one client run (whichever of count and duration comes first)."""

    count: int
    duration: float
    warmup: float = 0.2
    conns: int = 0
    batch: int = 100
    inflight: int = 100
    payload_size: int = 2**20
    sample: int = 100
    timeout: float = 60.0  # for the whole run, server start included
    max_repeat: int | None = None  # runs of this scenario at most, whatever --repeat says

    def client_args(self) -> list[str]:
        args = ["--count", str(self.count), "--duration", str(self.duration)]
        args += ["--warmup", str(self.warmup), "--inflight", str(self.inflight)]
        args += ["--conns", str(self.conns), "--batch", str(self.batch)]
        args += ["--sample", str(self.sample)]
        return [*args, "--payload-size", str(self.payload_size)]

    def runs(self, repeat: int) -> int:
        return repeat if self.max_repeat is None else min(repeat, self.max_repeat)


IDLE_CONNS = 10_000
IDLE_REPEAT = 1
"""
Runs of the idle scenario in a full run: opening 10,000 connections takes
4-18 s per system, and the memory figures move by under 1 % between runs.
"""


def idle_budget(conns: int, repeat: int = IDLE_REPEAT, *, smoke: bool = False) -> Budget:
    """The idle scenario with ``conns`` connections: its timeout grows with them."""
    if smoke:
        return Budget(0, 0.0, 0.01, conns=conns, batch=10, sample=10, timeout=30 + conns / 20)
    return Budget(0, 0.0, 0.1, conns=conns, timeout=60 + conns / 50, max_repeat=repeat)


FULL: dict[str, Budget] = {
    "sequential": Budget(200_000, 1.5),
    "pinned": Budget(200_000, 1.5),
    "pipelined": Budget(2_000_000, 1.5),
    "many_clients": Budget(2_000_000, 2.0, 0.1, conns=1000, timeout=180),
    "idle": idle_budget(IDLE_CONNS),
    "payload": Budget(2_000, 1.5, 0.0),
    "callbacks": Budget(200_000, 1.5),
}
SMOKE: dict[str, Budget] = {
    "sequential": Budget(200, 2.0, 0.01, timeout=30),
    "pinned": Budget(200, 2.0, 0.01, timeout=30),
    "pipelined": Budget(500, 2.0, 0.01, timeout=30),
    "many_clients": Budget(200, 2.0, 0.01, conns=20, batch=10, timeout=30),
    "idle": idle_budget(20, smoke=True),
    "payload": Budget(3, 2.0, 0.0, payload_size=2**20, timeout=30),
    "callbacks": Budget(200, 2.0, 0.01, timeout=30),
}


# -- running one measurement -------------------------------------------------------


class RunError(Exception):
    """One run failed: the message says how, with the processes' last words."""


class LineReader:
    """Reads lines from a child's stdout, each read bounded by a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""

    def readline(self, deadline: float) -> str | None:
        """The next line, or None at end of file; TimeoutError past ``deadline``."""
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                if not self._buffer:
                    return None
                line, self._buffer = self._buffer, b""
                return line.decode(errors="replace")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")


def rss_kib(pid: int) -> float | None:
    """Resident set size of ``pid`` in KiB (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads), in seconds (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_drops() -> int | None:
    """
    Connection attempts this network namespace's listening sockets dropped so
    far (``TcpExt: ListenDrops``, accept-queue overflows included), or None.

    Each drop costs the client a SYN retransmission (a second or more) and so
    inflates the time to open connections; counted around the scenarios that
    open many of them.
    """
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            drops = fields.get("ListenDrops")
            return int(drops) if drops is not None else None
    return None


IDLE_MARGIN = 200
"""File descriptors, ports or tasks left spare when capping the idle scenario."""


def read_ints(path: str) -> list[int]:
    try:
        return [int(word) for word in Path(path).read_text().split()]
    except (OSError, ValueError):
        return []


def idle_cap(system: System) -> tuple[int, str] | None:
    """
    The most connections ``system`` can hold open on this machine in the idle
    scenario, and why; None if no limit is known.

    Each process (client and server) needs a descriptor per connection, and
    raises its soft open-files limit to the hard one; the client needs a local
    port per connection; a thread-per-connection server needs a task (a pid)
    per connection.
    """
    caps: list[tuple[int, str]] = []
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        caps.append((hard - IDLE_MARGIN, f"open-files limit of {hard:,} per process"))
    ports = read_ints("/proc/sys/net/ipv4/ip_local_port_range")
    if len(ports) == 2:
        span = ports[1] - ports[0] + 1
        caps.append((span - IDLE_MARGIN, f"{span:,} local ports (ip_local_port_range)"))
    if system.thread_per_connection:
        limits = read_ints("/proc/sys/kernel/pid_max") + read_ints("/proc/sys/kernel/threads-max")
        if limits:
            tasks = sum(1 for _ in Path("/proc").glob("[0-9]*/task/[0-9]*"))
            why = (
                f"one server thread per connection, and {min(limits):,} tasks at most "
                f"(pid_max, threads-max) with {tasks:,} in use"
            )
            caps.append((min(limits) - tasks - IDLE_MARGIN, why))
    return min(caps, default=None)


def pin_command() -> list[str] | None:
    """The prefix that pins a process to one CPU, or None if this machine cannot."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpu = 0 if 0 in os.sched_getaffinity(0) else min(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if taskset is None:
        return None
    return [taskset, "-c", str(cpu)]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill a child we started, and reap it."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@contextmanager
def child(
    cmd: list[str], log: Path, *, stdin: bool = False, first: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd``; ``first`` goes first on its import path (a ``--base`` checkout)."""
    path = os.pathsep.join(filter(None, [first, str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=BENCH_DIR,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    try:
        yield proc
    finally:
        kill(proc)


def run_once(system: System, scenario: str, budget: Budget, workdir: Path) -> dict[str, Any]:
    """Start a server and a client, run ``scenario`` once, return the client's figures."""
    prefix: list[str] = []
    if scenario == "pinned":
        pin = pin_command()
        if pin is None:
            raise RunError("cannot pin to one CPU here (no taskset)")
        prefix = pin
    loop = ["--uvloop"] if system.uvloop else []
    base = [*prefix, sys.executable, "-m", f"systems.{system.module}"]
    server_log, client_log = workdir / "server.log", workdir / "client.log"
    deadline = time.monotonic() + budget.timeout
    rss: dict[str, float | None] = {}
    cpu: dict[str, float | None] = {}
    result: dict[str, Any] | None = None
    drops_before = listen_drops()
    try:
        first = BASE_CHECKOUT if system.base else None
        with child([*base, "server", *loop], server_log, first=first) as server:
            assert server.stdout is not None
            line = LineReader(server.stdout).readline(deadline)
            if line is None or not line.startswith("PORT "):
                raise RunError(f"the server did not print its port: {line!r}")
            port = line.split()[1]
            cmd = [*base, "client", "--port", port, "--scenario", scenario, *loop]
            with child(
                [*cmd, *budget.client_args()], client_log, stdin=True, first=first
            ) as client:
                assert client.stdout is not None and client.stdin is not None
                reader = LineReader(client.stdout)
                while (line := reader.readline(deadline)) is not None:
                    if line.startswith("SYNC "):
                        label = line.split()[1]
                        rss[label], cpu[label] = rss_kib(server.pid), cpu_seconds(server.pid)
                        client.stdin.write(b"go\n")
                        client.stdin.flush()
                    elif line.startswith("RESULT "):
                        result = json.loads(line[len("RESULT ") :])
                        break
                if server.poll() is not None:
                    raise RunError(f"the server exited with {server.returncode}")
    except (TimeoutError, RunError, OSError, ValueError) as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        logs = f"--- client stderr:\n{tail(client_log)}\n--- server stderr:\n{tail(server_log)}"
        raise RunError(f"{what}\n{logs}") from None
    if result is None:
        raise RunError(f"no result\n--- client stderr:\n{tail(client_log)}")
    drops_after = listen_drops()
    if drops_before is not None and drops_after is not None:
        result["listen_drops"] = drops_after - drops_before
    calls = result.get("calls") or 0
    start_cpu, end_cpu = cpu.get("start"), cpu.get("end")
    if start_cpu is None and "active" in cpu:  # many_clients: the calls run between these two
        start_cpu, end_cpu = cpu.get("opened"), cpu.get("active")
    if start_cpu is not None and end_cpu is not None and calls:
        result["server_cpu_us_per_call"] = (end_cpu - start_cpu) * 1e6 / calls
    if "client_cpu_s" in result and calls:
        result["client_cpu_us_per_call"] = result["client_cpu_s"] * 1e6 / calls
    if "before" in rss:
        result["server_rss_kib"] = rss
        before, opened, active = rss.get("before"), rss.get("opened"), rss.get("active")
        conns = result.get("connections") or 0
        if before is not None and opened is not None and conns:
            result["rss_per_conn_kib"] = (opened - before) / conns
        if before is not None and opened is not None:
            result["rss_before_mib"], result["rss_opened_mib"] = before / 1024, opened / 1024
        if before is not None and active is not None and conns:
            result["rss_per_conn_active_kib"] = (active - before) / conns
    return result


def shortfalls(scenario: str, figures: dict[str, Any]) -> list[str]:
    """What went wrong in a run that still produced figures (idle: closed or dead connections)."""
    if scenario != "idle":
        return []
    found = []
    opened, requested = figures.get("connections", 0), figures.get("connections_requested", 0)
    if opened < requested:
        error = figures.get("first_connect_error")
        found.append(f"only {opened:,} of {requested:,} connections opened (first error: {error})")
    ok, sample = figures.get("sample_ok", 0), figures.get("sample", 0)
    if ok < sample:
        error = figures.get("first_sample_error")
        found.append(f"{ok} of {sample} sample calls succeeded (first error: {error})")
    return found


# -- aggregation and output -----------------------------------------------------------


@dataclass
class Cell:
    """One system in one scenario: every repetition, and their medians."""

    reps: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status: str = "pending"  # ok, error, unavailable, unsupported, not run
    median: dict[str, float] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    note: str = ""  # printed under the table: a cap, or why the system is skipped

    def summarize(self) -> None:
        if not self.reps:
            if self.status == "pending":
                self.status = "error"
            return
        self.status = "ok" if not self.errors else "partial"
        keys = {k for rep in self.reps for k, v in rep.items() if isinstance(v, int | float)}
        for key in sorted(keys):
            values = [rep[key] for rep in self.reps if isinstance(rep.get(key), int | float)]
            self.median[key] = statistics.median(values)


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def cell_text(cell: Cell | None, metric: Metric) -> str:
    if cell is not None and cell.status == "not run":
        return "–"
    if cell is None or metric.key not in cell.median:
        return "n/a" if cell is None or cell.status != "error" else "failed"
    text = fmt(cell.median[metric.key], metric.digits)
    if metric.out_of is not None and metric.out_of in cell.median:
        text += "/" + fmt(cell.median[metric.out_of], metric.digits)
    ratio = cell.ratio.get(metric.key) if metric.ratio else None
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def notes(
    results: dict[str, dict[str, Cell]], systems: list[str], scenario: str
) -> list[tuple[str, str]]:
    """The notes of a scenario (caps, why a system was skipped), each with its systems."""
    found: dict[str, list[str]] = {}
    for system in systems:
        cell = results[system].get(scenario)
        if cell is not None and cell.note:
            found.setdefault(cell.note, []).append(system)
    return [(", ".join(names), note) for note, names in found.items()]


def text_table(
    results: dict[str, dict[str, Cell]],
    systems: list[str],
    scenarios: list[str],
    budgets: dict[str, Budget],
    repeat: int,
) -> str:
    out: list[str] = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        runs = budgets[name].runs(repeat)
        once = f" [{runs} run{'s' if runs > 1 else ''}, not {repeat}]" if runs != repeat else ""
        out.append(f"\n{name}: {scenario.describe(budgets[name])}{once}")
        header = ["system"] + [
            f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in scenario.metrics
        ]
        rows = [header]
        for system in systems:
            cell = results[system].get(name)
            label = system + (" *" if system == CEILING else "")
            if cell is not None and cell.status in ("unavailable", "unsupported"):
                rows.append([label] + [cell.status] * len(scenario.metrics))
            else:
                rows.append([label] + [cell_text(cell, m) for m in scenario.metrics])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            out.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        for system, note in notes(results, systems, name):
            out.append(f"  note: {system}: {note}")
    out.append(f"\n* ceiling: every ratio (x) is relative to {CEILING} ({SYSTEMS[CEILING].label}).")
    out.append("↑: higher is better; ↓: lower is better.")
    return "\n".join(out)


def markdown_table(
    results: dict[str, dict[str, Cell]], systems: list[str], scenarios: list[str]
) -> str:
    header = ["scenario", "metric"] + [f"{s} (ceiling)" if s == CEILING else s for s in systems]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(systems)]
    for name in scenarios:
        for metric in SCENARIOS[name].metrics:
            better = "↑" if metric.higher_is_better else "↓"
            row = [name, f"{metric.label} {better}"]
            for system in systems:
                cell = results[system].get(name)
                if cell is not None and cell.status in ("unavailable", "unsupported"):
                    row.append(cell.status)
                else:
                    row.append(cell_text(cell, metric))
            lines.append("| " + " | ".join(row) + " |")
    footnotes = [
        f"- {name}, {system}: {note}"
        for name in scenarios
        for system, note in notes(results, systems, name)
    ]
    if footnotes:
        lines += ["", *footnotes]
    return "\n".join(lines) + "\n"


CHART_PANELS = (
    ("sequential", "calls_per_s"),
    ("sequential", "p50_us"),
    ("sequential", "server_cpu_us_per_call"),
    ("pinned", "calls_per_s"),
    ("pipelined", "calls_per_s"),
    ("many_clients", "calls_per_s"),
    ("many_clients", "rss_per_conn_kib"),
    ("idle", "rss_per_conn_kib"),
    ("idle", "connect_s"),
    ("payload", "mib_per_s"),
    ("callbacks", "calls_per_s"),
)
"""The figures drawn (the table has them all)."""


def draw_chart(
    results: dict[str, dict[str, Cell]],
    systems: list[str],
    scenarios: list[str],
    path: Path,
    title: str,
    asides: dict[str, str] | None = None,
) -> bool:
    """
    Draw one panel per figure of merit; False if matplotlib is not installed.

    ``asides`` adds a word to the titles of a scenario's panels (its size, its runs).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    panels = [
        (scenario, metric)
        for scenario, key in CHART_PANELS
        if scenario in scenarios
        for metric in SCENARIOS[scenario].metrics
        if metric.key == key
    ]
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(5.2 * columns, (0.4 * len(systems) + 1.4) * rows + 0.8),
        squeeze=False,
    )
    colors = {
        CEILING: "#555555",
        "wsrpc": "#d62728",
        "wsrpc-uvloop": "#ff7f0e",
        "wsrpc-fast": "#9467bd",
        "wsrpc-validate": "#e377c2",
        "wsrpc-fast-validate": "#c5b0d5",
        "wsrpc-base": "#f7b6b2",
        "wsrpc-fast-base": "#dbcfe8",
        "picows": "#2ca02c",
    }
    for ax, (scenario, metric) in zip(axes.flat, panels, strict=False):
        names, values, labels, bar_colors = [], [], [], []
        for system in systems:
            cell = results[system].get(scenario)
            if cell is None or metric.key not in cell.median:
                continue
            names.append(system)
            values.append(cell.median[metric.key])
            ratio = cell.ratio.get(metric.key) if metric.ratio else None
            labels.append(
                f"{fmt(cell.median[metric.key], metric.digits)}  ({ratio:.2f}x)"
                if ratio is not None
                else fmt(cell.median[metric.key], metric.digits)
            )
            bar_colors.append(colors.get(system, "#1f77b4"))
        positions = list(range(len(names)))[::-1]
        ax.barh(positions, values, color=bar_colors)
        ax.set_yticks(positions, names)
        top = max(values, default=1.0)
        ax.set_xlim(0, top * 1.55)
        for y, value, label in zip(positions, values, labels, strict=True):
            ax.text(value + top * 0.02, y, label, va="center", fontsize=8)
        better = "higher is better" if metric.higher_is_better else "lower is better"
        aside = f" ({asides[scenario]})" if asides and scenario in asides else ""
        ax.set_title(f"{scenario}{aside}: {metric.label}\n({better})", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the machine -----------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    found = {}
    for dist in (
        "wsrpc",
        "websockets",
        "msgpack",
        "python-socketio",
        "python-engineio",
        "aiohttp",
        "rpyc",
        "picows",
        "uvloop",
        "msgspec",
        "redis",
        "matplotlib",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def wsrpc_revision(root: Path = BENCH_DIR.parent) -> str:
    """The commit of the checkout ``root`` (this repo), ``+dirty`` if its wsrpc/ has changes."""
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "wsrpc"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def available(system: System) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in system.requires)


# -- main -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts, only wsrpc and the ceiling, one repetition",
    )
    parser.add_argument("--systems", help="comma-separated; any of: " + ", ".join(SYSTEMS))
    parser.add_argument("--scenarios", help="comma-separated; any of: " + ", ".join(SCENARIOS))
    parser.add_argument(
        "--repeat", type=int, help="runs per figure; the median is kept (default 3, smoke 1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON results (default results/latest.json, smoke results/smoke.json)",
    )
    parser.add_argument(
        "--chart", type=Path, help="PNG chart (default chart.png next to --out; none for --smoke)"
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="seconds each timed run measures (default 1.5, many_clients 2; smoke: counts bound)",
    )
    parser.add_argument(
        "--idle-conns",
        type=int,
        metavar="N",
        help=f"idle: connections to open and hold (default {IDLE_CONNS:,}, smoke 20)",
    )
    parser.add_argument(
        "--idle-repeat",
        type=int,
        metavar="N",
        help=f"idle: runs per figure (default {IDLE_REPEAT}; at most --repeat)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        metavar="CHECKOUT",
        help="a checkout of another commit (git worktree add); the *-base systems run its wsrpc",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table of saved results, redraw their .md and chart",
    )
    args = parser.parse_args(argv)

    def pick(text: str | None, known: dict[str, Any], default: Sequence[str]) -> list[str]:
        if not text:
            return list(default)
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"unknown: {', '.join(unknown)} (known: {', '.join(known)})")
        return names

    default_systems = (
        SMOKE_SYSTEMS if args.smoke else [s.name for s in SYSTEMS.values() if s.default]
    )
    args.systems = pick(args.systems, SYSTEMS, default_systems)
    if any(SYSTEMS[name].base for name in args.systems):
        if args.base is None or not (args.base / "wsrpc" / "__init__.py").is_file():
            parser.error("the *-base systems need --base CHECKOUT (a checkout with wsrpc/ in it)")
        global BASE_CHECKOUT
        BASE_CHECKOUT = str(args.base.resolve())
    if CEILING not in args.systems:
        args.systems.insert(0, CEILING)  # every ratio needs it
    args.scenarios = pick(args.scenarios, SCENARIOS, list(SCENARIOS))
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.idle_conns is not None and args.idle_conns < 1:
        parser.error("--idle-conns must be at least 1")
    if args.idle_repeat is not None and args.idle_repeat < 1:
        parser.error("--idle-repeat must be at least 1")
    if args.out is None:
        args.out = RESULTS_DIR / ("smoke.json" if args.smoke else "latest.json")
    if args.chart is None and not args.smoke and not args.no_chart:
        args.chart = args.out.parent / "chart.png"
    if args.no_chart:
        args.chart = None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        chart = None if args.no_chart else args.chart or args.render.parent / "chart.png"
        render(json.loads(args.render.read_text()), args.render, chart)
        return 0
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    if load_start[0] > (os.cpu_count() or 1) / 2:
        print(
            f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} CPU(s); "
            "other work will skew the figures",
            file=sys.stderr,
        )
    budgets = dict(SMOKE if args.smoke else FULL)
    if args.duration is not None:
        budgets = {
            name: replace(budget, duration=args.duration) if budget.duration > 0 else budget
            for name, budget in budgets.items()
        }
    if args.idle_conns is not None or args.idle_repeat is not None:
        budgets["idle"] = idle_budget(
            args.idle_conns or budgets["idle"].conns,
            args.idle_repeat or IDLE_REPEAT,
            smoke=args.smoke,
        )
    systems: list[str] = args.systems
    scenarios: list[str] = args.scenarios
    results: dict[str, dict[str, Cell]] = {s: {n: Cell() for n in scenarios} for s in systems}
    for name in systems:
        only = SYSTEMS[name].only
        if only is not None:
            for scenario in scenarios:
                if scenario not in only:
                    results[name][scenario].status = "not run"
        if not available(SYSTEMS[name]):
            missing = [m for m in SYSTEMS[name].requires if importlib.util.find_spec(m) is None]
            print(f"{name}: unavailable (cannot import {', '.join(missing)})", file=sys.stderr)
            for cell in results[name].values():
                cell.status = "unavailable"
    if "pinned" in scenarios and pin_command() is None:
        print("pinned: unsupported here (no taskset)", file=sys.stderr)
        for name in systems:
            results[name]["pinned"].status = "unsupported"
    system_budgets = {name: dict(budgets) for name in systems}
    if "idle" in scenarios:
        # Cap what a system or this machine cannot hold, rather than watch it fail.
        idle = budgets["idle"]
        for name in systems:
            cap, cell = idle_cap(SYSTEMS[name]), results[name]["idle"]
            if cap is None or cap[0] >= idle.conns or cell.status in ("unavailable", "not run"):
                continue
            limit, reason = cap
            if limit < 1:
                cell.status, cell.note = "unsupported", f"skipped: {reason}"
            else:
                budget = replace(idle, conns=limit, sample=min(idle.sample, limit))
                system_budgets[name]["idle"] = budget
                cell.note = f"capped at {limit:,} of {idle.conns:,} connections: {reason}"
            print(f"idle: {name}: {cell.note}", file=sys.stderr)

    failures = 0
    with tempfile.TemporaryDirectory(prefix="wsrpc-bench-") as tmp:
        workdir = Path(tmp)
        for rep in range(args.repeat):
            # Rotate the order each repetition so no system always runs first.
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            for scenario in scenarios:
                if rep >= budgets[scenario].runs(args.repeat):
                    continue
                for name in order:
                    cell = results[name][scenario]
                    if cell.status in ("unavailable", "unsupported", "not run"):
                        continue
                    t0 = time.monotonic()
                    budget = system_budgets[name][scenario]
                    try:
                        figures = run_once(SYSTEMS[name], scenario, budget, workdir)
                    except RunError as exc:
                        failures += 1
                        cell.errors.append(str(exc))
                        print(
                            f"[{rep + 1}/{args.repeat}] {scenario:12} {name:20} FAILED: {exc}",
                            file=sys.stderr,
                        )
                        continue
                    cell.reps.append(figures)
                    metric = SCENARIOS[scenario].metrics[0]
                    drops = figures.get("listen_drops")
                    print(
                        f"[{rep + 1}/{args.repeat}] {scenario:12} {name:20} "
                        f"{fmt(figures.get(metric.key), metric.digits):>12} {metric.label}"
                        f"  ({time.monotonic() - t0:.1f} s)"
                        + (
                            f"  [{drops} connection attempts dropped by a listen queue]"
                            if drops
                            else ""
                        ),
                        file=sys.stderr,
                    )
                    for problem in shortfalls(scenario, figures):
                        failures += 1
                        cell.errors.append(problem)
                        print(
                            f"[{rep + 1}/{args.repeat}] {scenario:12} {name:20} FAILED: {problem}",
                            file=sys.stderr,
                        )
    for name in systems:
        for cell in results[name].values():
            cell.summarize()
    for scenario in scenarios:
        ceiling = results[CEILING][scenario]
        for name in systems:
            cell = results[name][scenario]
            for key, value in cell.median.items():
                base = ceiling.median.get(key)
                if base:
                    cell.ratio[key] = value / base
    wall = time.monotonic() - started
    document = {
        "meta": {
            "started_at": started_at,
            "wall_time_s": round(wall, 1),
            "smoke": args.smoke,
            "repeat": args.repeat,
            "ceiling": CEILING,
            "machine": machine(),
            # Other work on the machine skews every figure: check these.
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "versions": versions(),
            "wsrpc_revision": wsrpc_revision(),
            "budgets": {n: asdict(budgets[n]) for n in scenarios},
            # Where a system ran a scenario with other bounds (idle: a cap).
            "system_budgets": {
                name: {n: asdict(b) for n, b in per.items() if n in scenarios and b != budgets[n]}
                for name, per in system_budgets.items()
                if any(n in scenarios and b != budgets[n] for n, b in per.items())
            },
        },
        "systems": {n: asdict(SYSTEMS[n]) for n in systems},
        "scenarios": scenarios,
        "metrics": {n: [asdict(m) for m in SCENARIOS[n].metrics] for n in scenarios},
        "results": {
            name: {scenario: asdict(cell) for scenario, cell in cells.items()}
            for name, cells in results.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    render(document, args.out, args.chart)
    if failures:
        print(f"{failures} run(s) failed; see the errors in {args.out}", file=sys.stderr)
    return 1 if failures else 0


def render(document: dict[str, Any], out: Path, chart: Path | None) -> None:
    """Print the table of ``document`` (the JSON results), write it as Markdown, draw the chart."""
    meta = document["meta"]
    systems = list(document["systems"])
    scenarios: list[str] = document["scenarios"]
    budgets = {name: Budget(**budget) for name, budget in meta["budgets"].items()}
    results = {
        system: {scenario: Cell(**cell) for scenario, cell in cells.items()}
        for system, cells in document["results"].items()
    }
    info = meta["machine"]
    title = (
        f"{info['nproc']} CPU(s), {info['cpu_model']}, Python {info['python']}; "
        f"median of {meta['repeat']}; (x) = ratio to {CEILING}"
    )
    markdown = out.with_suffix(".md")
    markdown.write_text(markdown_table(results, systems, scenarios))
    print(text_table(results, systems, scenarios, budgets, meta["repeat"]))
    print(f"\n{title}")
    print(
        f"load average (1, 5, 15 min): {meta['load_average_start']} at the start, "
        f"{meta['load_average_end']} at the end"
    )
    print(f"wall time {meta['wall_time_s']:.1f} s; results in {out} and {markdown}")
    asides = {}
    for name in scenarios:
        words = [f"{budgets[name].conns:,} conns"] if name == "idle" else []
        runs = budgets[name].runs(meta["repeat"])
        if runs != meta["repeat"]:
            words.append(f"{runs} run{'s' if runs > 1 else ''}")
        if words:
            asides[name] = ", ".join(words)
    if chart is not None:
        if draw_chart(results, systems, scenarios, chart, "wsrpc benchmarks: " + title, asides):
            print(f"chart in {chart}")
        else:
            print("no chart: matplotlib is not installed in this interpreter")


if __name__ == "__main__":
    sys.exit(main())
