#!/usr/bin/env python3
"""
Performance, round two (issue #16): every scenario in one command, and each
target against its measurement.

    make -C benchmarks round2                       # ~8-9 minutes on 2 cores
    make -C benchmarks round2 ARGS="--base /work/base16"
    python benchmarks/round2.py --render            # measure nothing: redo the reports

Runs, one after the other, each in processes of its own:

1. ``run.py``: the main table, systems ``ws-msgpack`` (the ceiling),
   ``wsrpc``, ``wsrpc-fast``, ``picows`` (raw picows, the reference of the
   fast transport's targets), ``wsrpc-validate`` and ``wsrpc-fast-validate``
   (``validate=True``; one-CPU and pipelined scenarios only) and, with
   ``--base``, ``wsrpc-base`` and ``wsrpc-fast-base``; every scenario,
   median of 3, ``idle`` with ``--idle-conns`` (default 2,000) connections
   once. Writes ``results/latest.json``, ``latest.md`` and ``chart.png``.
2. ``streams.py --quick --out results/streams.json`` (``--quick`` only if
   that streams.py takes it; its command line is its own).
3. ``cluster.py``: a private ``redis-server``; cross-node call latency
   against a local call, a broadcast to 10,000 members over 3 nodes against
   one process, and calls/s of ``wsrpc serve --workers 1`` and ``2``
   (``reuse_port``) driven by two client processes. Writes
   ``results/cluster.json``.

Then it checks each target of issue #16 against the measurements (every
ratio between figures of one run) and writes ``results/round2.json``,
``results/round2.md`` and the marked section of ``docs/performance.md``
(between ``<!-- round2:begin -->`` and ``<!-- round2:end -->``). A step that
fails is reported (its targets ``not measured``) and the others still run;
the exit status is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS = BENCH_DIR.parent / "docs" / "performance.md"
BEGIN, END = "<!-- round2:begin -->", "<!-- round2:end -->"

SYSTEMS = ["ws-msgpack", "wsrpc", "wsrpc-fast", "picows", "wsrpc-validate", "wsrpc-fast-validate"]
BASE_SYSTEMS = ["wsrpc-base", "wsrpc-fast-base"]
IDLE_CONNS = 2_000
"""
Idle connections per system: 10,000 take 5-22 s per system to open on this
machine (shared), 2,000 take 1-5 s; memory per connection is the same figure
at either count (the difference of two RSS readings divided by the count).
"""
BROADCAST = 10_000
STEPS = ("main", "streams", "cluster")
OUTPUTS = {
    "main": ("latest.json", "latest.md", "chart.png"),
    "streams": ("streams.json", "streams.md"),
    "cluster": ("cluster.json",),
}
STEP_TIMEOUT = {"main": 600.0, "streams": 240.0, "cluster": 300.0}
NOISE = 0.05
"""A figure this close to its bound (relative) is flagged: the machine's noise is larger."""


# -- running the steps --------------------------------------------------------------


@dataclass
class Step:
    name: str
    command: list[str]
    wall_s: float = 0.0
    returncode: int | None = None
    error: str = ""
    stdout: str = ""


def run_step(step: Step, timeout: float) -> None:
    """Run one step's command; its stderr goes to ours (progress), its stdout is kept."""
    print(f"== {step.name}: {' '.join(step.command)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        completed = subprocess.run(
            step.command,
            cwd=BENCH_DIR,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        step.error = f"timed out after {timeout:.0f} s"
        out = exc.stdout
        step.stdout = out.decode(errors="replace") if isinstance(out, bytes) else out or ""
    except OSError as exc:
        step.error = str(exc)
    else:
        step.returncode = completed.returncode
        step.stdout = completed.stdout
        if completed.returncode != 0:
            step.error = f"exit status {completed.returncode}"
    step.wall_s = round(time.monotonic() - started, 1)
    status = step.error or "ok"
    print(f"== {step.name}: {status} ({step.wall_s:.0f} s)", file=sys.stderr, flush=True)


def streams_quick(python: str) -> list[str]:
    """``--quick`` if this streams.py takes it (its CLI is its own), else nothing."""
    try:
        shown = subprocess.run(
            [python, str(BENCH_DIR / "streams.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return ["--quick"] if "--quick" in shown else []


def commands(args: argparse.Namespace, out_dir: Path) -> dict[str, list[str]]:
    python = sys.executable
    systems = SYSTEMS + (BASE_SYSTEMS if args.base else [])
    main = [python, str(BENCH_DIR / "run.py"), "--out", str(out_dir / "latest.json")]
    if args.smoke:
        main += ["--smoke", "--systems", "ws-msgpack,wsrpc,wsrpc-validate"]
    else:
        main += ["--systems", ",".join(systems), "--repeat", str(args.repeat)]
        main += ["--idle-conns", str(args.idle_conns), "--duration", str(args.duration)]
    if args.base:
        main += ["--base", str(args.base)]
    streams = [python, str(BENCH_DIR / "streams.py"), *streams_quick(python)]
    streams += ["--out", str(out_dir / "streams.json")]
    cluster = [python, str(BENCH_DIR / "cluster.py"), "--out", str(out_dir / "cluster.json")]
    cluster += ["--workers", "1,2"]
    if args.smoke:
        cluster += ["--smoke"]
    else:
        cluster += ["--sizes", str(BROADCAST), "--repeat", "3", "--worker-seconds", "1.5"]
    return {"main": main, "streams": streams, "cluster": cluster}


# -- the targets ----------------------------------------------------------------------


@dataclass
class Target:
    group: str
    target: str
    measured: str
    value: float | None
    bound: float | None
    higher_is_better: bool = True
    failed: str = ""
    """Why the measurement does not count (a broadcast that missed members)."""

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.value is None:
            return "not measured"
        if self.bound is None:
            return "reported"
        ok = self.value >= self.bound if self.higher_is_better else self.value <= self.bound
        return "met" if ok else "not met"

    @property
    def near(self) -> bool:
        """Within NOISE of the bound: this machine's noise could tip it either way."""
        if self.value is None or not self.bound:
            return False
        return abs(self.value - self.bound) / abs(self.bound) < NOISE


def median(document: dict[str, Any] | None, system: str, scenario: str, key: str) -> float | None:
    if document is None:
        return None
    cell = document.get("results", {}).get(system, {}).get(scenario)
    if not cell:
        return None
    value = cell.get("median", {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


MAIN_FIGURES = (
    ("sequential", "calls_per_s", "sequential calls/s"),
    ("pinned", "calls_per_s", "one-CPU calls/s"),
    ("pipelined", "calls_per_s", "pipelined calls/s"),
    ("many_clients", "calls_per_s", "1,000-client calls/s"),
    ("callbacks", "calls_per_s", "callback calls/s"),
    ("payload", "mib_per_s", "1 MiB echo MiB/s"),
)


def pair(
    main: dict[str, Any] | None,
    group: str,
    target: str,
    system: str,
    reference: str,
    scenario: str,
    key: str,
    bound: float | None,
    higher_is_better: bool = True,
) -> Target:
    a, b = median(main, system, scenario, key), median(main, reference, scenario, key)
    value = ratio(a, b)
    measured = (
        f"{x(value)} ({a:,.1f} / {b:,.1f})" if value is not None and a and b else "not measured"
    )
    cpu = ratio(*(median(main, s, scenario, "server_cpu_us_per_call") for s in (system, reference)))
    if value is not None and cpu is not None and key == "calls_per_s":
        # Less noisy than calls/s on a shared machine: what each call cost the server.
        measured += f"; server CPU per call {x(cpu)}"
    return Target(group, target, measured, value, bound, higher_is_better)


def main_targets(main: dict[str, Any] | None) -> list[Target]:
    found: list[Target] = []
    group = "fast transport"
    for scenario, key, label in MAIN_FIGURES:
        found.append(
            pair(
                main,
                group,
                f"wsrpc-fast ≥ 0.85x picows: {label}",
                "wsrpc-fast",
                "picows",
                scenario,
                key,
                0.85,
            )
        )
    found.append(
        pair(
            main,
            group,
            "wsrpc-fast ≤ picows: KiB per idle connection",
            "wsrpc-fast",
            "picows",
            "idle",
            "rss_per_conn_kib",
            1.0,
            higher_is_better=False,
        )
    )
    group = "default transport"
    for scenario, key, label in MAIN_FIGURES:
        found.append(
            pair(
                main,
                group,
                f"wsrpc ≥ ws-msgpack (ceiling): {label}",
                "wsrpc",
                "ws-msgpack",
                scenario,
                key,
                1.0,
            )
        )
    systems = main.get("systems", {}) if main else {}
    for system in ("wsrpc", "wsrpc-fast"):
        base = f"{system}-base"
        if base not in systems:
            found.append(
                Target(
                    "against the base commit",
                    f"{system} ≥ {base} (every scenario)",
                    "not measured: run with --base CHECKOUT",
                    None,
                    1.0,
                )
            )
            continue
        for scenario, key, label in MAIN_FIGURES:
            found.append(
                pair(
                    main,
                    "against the base commit",
                    f"{system} ≥ {base}: {label}",
                    system,
                    base,
                    scenario,
                    key,
                    1.0,
                )
            )
    for system in ("wsrpc", "wsrpc-fast"):
        for scenario, label in (("pinned", "one-CPU"), ("pipelined", "pipelined")):
            found.append(
                pair(
                    main,
                    "validation",
                    f"{system}-validate ≥ 0.85x {system}: {label} calls/s",
                    f"{system}-validate",
                    system,
                    scenario,
                    "calls_per_s",
                    0.85,
                )
            )
    return found


def flatten(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, (*path, str(key).lower()))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


def stream_figures(document: Any) -> dict[str, dict[str, float]]:
    """
    items/s by transport (or "" if the file has one) of ``stream``, ``call``
    (one call per item) and ``raw_picows``, read from streams.py's JSON: its
    ``results`` by transport (``{"stream": {"median": ...}, "calls": ...,
    "raw": ...}``, raw picows being the ``raw`` of ``picows``), or else, best
    effort, by the words in its keys (its shape is streams.py's business).
    """
    results = document.get("results") if isinstance(document, dict) else None
    if isinstance(results, dict) and results:
        found: dict[str, dict[str, float]] = {}
        for transport, figures in results.items():
            if not isinstance(figures, dict):
                continue
            for key, kind in (("stream", "stream"), ("calls", "call"), ("raw", "raw")):
                value = (
                    figures.get(key, {}).get("median")
                    if isinstance(figures.get(key), dict)
                    else None
                )
                if isinstance(value, int | float):
                    found.setdefault(transport, {})[kind] = float(value)
        raw_picows = found.get("picows", {}).get("raw")
        if raw_picows is not None:
            for kinds in found.values():
                kinds["raw_picows"] = raw_picows
        if any("stream" in kinds for kinds in found.values()):
            return found
    leaves = [
        (path, value)
        for path, value in flatten(document)
        if path and not any(word in path[0] for word in ("meta", "machine", "version"))
    ]
    rates = [(p, v) for p, v in leaves if any("per_s" in k or "/s" in k for k in p)]
    guessed: dict[str, dict[str, float]] = {}
    for path, value in rates or leaves:
        transport = next((t for t in ("websockets", "picows") if t in path[:-1]), "")
        words = " ".join(k for k in path if k != transport)
        if any(w in words for w in ("paused", "kib", "rss", "ratio", " vs ", "_vs_", "count")):
            continue
        if "raw" in words and "picows" in words:
            kind = "raw_picows"
        elif "raw" in words:
            kind = "raw_other"
        elif "call" in words:
            kind = "call"
        elif "stream" in words:
            kind = "stream"
        else:
            continue
        guessed.setdefault(transport, {}).setdefault(kind, value)
    return guessed


def stream_targets(streams: Any) -> list[Target]:
    group = "streams"
    if streams is None:
        return [
            Target(group, "stream ≥ 10x one call per item (items/s)", "not measured", None, 10),
            Target(
                group, "stream ≥ 0.5x raw picows, same items (items/s)", "not measured", None, 0.5
            ),
        ]
    figures = stream_figures(streams)
    raw_picows = next((f["raw_picows"] for f in figures.values() if "raw_picows" in f), None)
    found: list[Target] = []
    for transport, kinds in sorted(figures.items()):
        name = f" ({transport})" if transport else ""
        stream, call = kinds.get("stream"), kinds.get("call")
        if stream is None:
            continue
        value = ratio(stream, call)
        found.append(
            Target(
                group,
                f"stream ≥ 10x one call per item{name}",
                f"{x(value)} ({stream:,.0f} / {call:,.0f} items/s)" if call else "not measured",
                value,
                10,
            )
        )
        value = ratio(stream, raw_picows)
        found.append(
            Target(
                group,
                f"stream ≥ 0.5x raw picows{name}",
                f"{x(value)} ({stream:,.0f} / {raw_picows:,.0f} items/s)"
                if raw_picows
                else "not measured (no raw picows figure in streams.json)",
                value,
                0.5,
            )
        )
    if not found:
        found.append(
            Target(
                group, "streams targets", "streams.json not understood: see its output", None, None
            )
        )
    return found


def cluster_targets(cluster: dict[str, Any] | None) -> list[Target]:
    group = "scale-out"
    results = cluster.get("results", {}) if cluster else {}

    def get(name: str, key: str) -> float | None:
        value = results.get(name, {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    local50, cross50 = get("latency local", "p50_us"), get("latency cross-node", "p50_us")
    local99, cross99 = get("latency local", "p99_us"), get("latency cross-node", "p99_us")
    added = cross50 - local50 if cross50 is not None and local50 is not None else None
    found = [
        Target(
            group,
            "a call to another node adds ≤ 1 ms at p50 over a local call",
            f"+{added / 1000:.2f} ms ({cross50:,.0f} µs against {local50:,.0f} µs)"
            if added is not None and cross50 is not None and local50 is not None
            else "not measured",
            None if added is None else added / 1000,
            1.0,
            higher_is_better=False,
        ),
        Target(
            group,
            "the same at p99 (reported)",
            f"{cross99:,.0f} µs against {local99:,.0f} µs"
            if cross99 is not None and local99 is not None
            else "not measured",
            None if cross99 is None or local99 is None else (cross99 - local99) / 1000,
            None,
        ),
    ]
    spread = get(f"broadcast {BROADCAST} over 3 nodes", "median_ms")
    single = get(f"broadcast {BROADCAST} in one process", "median_ms")
    value = ratio(spread, single)
    missed = [
        f"{name}: members answering {figures['answered']} of {figures['members']:,}"
        + (
            f", {len(figures['errors'])} runs failed: {figures['errors'][0]}"
            if figures.get("errors")
            else ""
        )
        for name, figures in results.items()
        if name.startswith(f"broadcast {BROADCAST} ") and "answered" in figures
    ]
    found.append(
        Target(
            group,
            f"broadcast to {BROADCAST:,} members over 3 nodes ≤ 2x one process",
            f"{x(value)} ({spread:,.0f} ms against {single:,.0f} ms)"
            if value is not None and spread is not None and single is not None
            else "not measured",
            value,
            2.0,
            higher_is_better=False,
            failed="; ".join(missed),
        )
    )
    one, two = get("workers 1", "calls_per_s"), get("workers 2", "calls_per_s")
    clients = results.get("workers clients", {})
    used = (
        f"; clients: {clients['processes']} processes x {clients['connections_per_process']} "
        f"connections x {clients['inflight_per_connection']} in flight ({clients['transport']})"
        if clients
        else ""
    )
    found.append(
        Target(
            group,
            "reuse_port: calls/s of 1 and 2 worker processes (reported)",
            f"{one:,.0f} and {two:,.0f} calls/s ({x(ratio(two, one))}){used}"
            if one is not None and two is not None
            else "not measured",
            ratio(two, one),
            None,
        )
    )
    return found


# -- reports ------------------------------------------------------------------------


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets_table(targets: list[Target]) -> str:
    lines = ["| | target | measured (same run) | |", "|---|---|---|---|"]
    for t in targets:
        status = f"**{t.status}**" if t.status in ("not met", "failed") else t.status
        if t.failed:
            status += f": {t.failed}"
        if t.near and t.status in ("met", "not met"):
            status += f" (within {NOISE:.0%} of the bound)"
        lines.append(f"| {t.group} | {t.target} | {t.measured} | {status} |")
    return "\n".join(lines)


def machine_text(main: dict[str, Any] | None, cluster: dict[str, Any] | None) -> str:
    if main is None:
        return "The machine: not recorded (the main table did not run)."
    meta = main["meta"]
    info, versions = meta["machine"], meta.get("versions", {})
    libraries = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    redis = (cluster or {}).get("meta", {}).get("redis_server")
    kernel = info.get("kernel") or info.get("platform", "")
    return (
        f"The machine: {info['nproc']} CPUs ({info['cpu_model']}), Linux {kernel}; "
        f"{info['implementation']} {info['python']}; {libraries}"
        + (f"; redis-server {redis}" if redis else "")
        + f". Load average {meta['load_average_start'][0]:.2f} at the start of the main table "
        f"and {meta['load_average_end'][0]:.2f} at its end: the machine is shared with other "
        f"jobs. {spread_text(main)}"
    )


def spread_text(main: dict[str, Any]) -> str:
    """How far apart the repetitions of one figure were: the noise to read the ratios with."""
    spreads: list[float] = []
    for cells in main["results"].values():
        for scenario, cell in cells.items():
            key = "mib_per_s" if scenario == "payload" else "calls_per_s"
            values = [rep[key] for rep in cell.get("reps", []) if rep.get(key)]
            if len(values) >= 2:
                spreads.append(max(values) / min(values) - 1)
    if not spreads:
        return ""
    spreads.sort()
    return (
        "The repetitions of one figure (calls/s, MiB/s) were "
        f"{spreads[len(spreads) // 2]:.0%} apart (max over min) in the median cell and "
        f"up to {spreads[-1]:.0%}: a ratio between two figures is only as good as that, and "
        "a target closer than that to its bound is not settled by this run."
    )


def validation_table(main: dict[str, Any] | None) -> str:
    lines = [
        "| transport | scenario | off (calls/s) | validate=True | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for system, transport in (("wsrpc", "websockets"), ("wsrpc-fast", "picows (uvloop)")):
        for scenario in ("pinned", "pipelined"):
            off = median(main, system, scenario, "calls_per_s")
            on = median(main, f"{system}-validate", scenario, "calls_per_s")
            lines.append(
                f"| {transport} | {scenario} | {'–' if off is None else f'{off:,.0f}'} | "
                f"{'–' if on is None else f'{on:,.0f}'} | {x(ratio(on, off))} |"
            )
    return "\n".join(lines)


def cluster_table(cluster: dict[str, Any] | None) -> str:
    if cluster is None:
        return "Not measured (the cluster step failed; see round2.json)."
    results = cluster["results"]

    def get(name: str, key: str) -> float | None:
        value = results.get(name, {}).get(key)
        return float(value) if isinstance(value, int | float) else None

    def num(value: float | None, unit: str) -> str:
        return "–" if value is None else f"{value:,.0f} {unit}".strip()

    rows = [
        ("call latency p50", num(get("latency local", "p50_us"), "µs"),
         num(get("latency cross-node", "p50_us"), "µs")),
        ("call latency p99", num(get("latency local", "p99_us"), "µs"),
         num(get("latency cross-node", "p99_us"), "µs")),
        ("calls/s, 64 in flight, one target", num(get("throughput local", "calls_per_s"), ""),
         num(get("throughput cross-node", "calls_per_s"), "")),
        (f"broadcast to {BROADCAST:,} members",
         num(get(f"broadcast {BROADCAST} in one process", "median_ms"), "ms"),
         num(get(f"broadcast {BROADCAST} over 3 nodes", "median_ms"), "ms")),
    ]  # fmt: skip
    lines = ["| measure | one process (local) | across 3 nodes |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    one, two = results.get("workers 1"), results.get("workers 2")
    clients = results.get("workers clients")
    if one and two and clients:
        lines += [
            "",
            f"`wsrpc serve --workers N` (`reuse_port`, default transport, asyncio loop), driven by "
            f"{clients['processes']} client processes of {clients['connections_per_process']} "
            f"connections each, {clients['inflight_per_connection']} calls in flight per "
            f"connection ({clients['transport']} transport on uvloop), {clients['seconds']:g} s "
            f"per run, median of {clients['repeat']}:",
            "",
            "| workers | calls/s | runs | connections per worker |",
            "|---:|---:|---|---|",
        ]
        for count, figures in (("1", one), ("2", two)):
            runs = ", ".join(f"{v:,.0f}" for v in figures["runs_calls_per_s"])
            spread = "; ".join(
                " + ".join(str(n) for n in run) for run in figures["connections_per_worker"]
            )
            lines.append(f"| {count} | {figures['calls_per_s']:,.0f} | {runs} | {spread} |")
    return "\n".join(lines)


def streams_text(step: dict[str, Any] | None, streams: Any) -> str:
    tables = [line for line in (step or {}).get("stdout", "").splitlines() if line.startswith("|")]
    if tables:
        return "\n".join(tables)
    if streams is None:
        return "Not measured (the streams step failed; see round2.json)."
    return "See `benchmarks/results/streams.json`."


def streams_options(step: dict[str, Any] | None) -> str:
    return " --quick" if step and "--quick" in step.get("command", []) else ""


def report(document: dict[str, Any], out_dir: Path) -> str:
    """The Markdown of the round: command, machine, tables, targets."""
    meta, targets = document["meta"], document["targets"]
    main, cluster = load(out_dir / "latest.json"), load(out_dir / "cluster.json")
    streams = load(out_dir / "streams.json")
    steps = {step["name"]: step for step in meta["steps"]}
    table = (out_dir / "latest.md").read_text().strip() if main else "Not measured."
    revision = main["meta"]["wsrpc_revision"] if main else "unknown"
    repeat = main["meta"]["repeat"] if main else 0
    timings = ", ".join(
        f"{s['name']} {s['wall_s']:.0f} s"
        + (f" ({s['error']})" if s["error"] else "")
        + (f" (run of {s['earlier_run']})" if s.get("earlier_run") else "")
        for s in meta["steps"]
    )
    idle = (main or {}).get("meta", {}).get("budgets", {}).get("idle", {}).get("conns")
    return f"""\
Measured {meta["started_at"]} at commit `{revision}` with `{meta["command"]}`:
{meta["wall_time_s"]:.0f} s in all ({timings}).

{machine_text(main, cluster)}

### The table (round two)

Each cell: the median of {repeat} runs{f" (idle: {idle:,} connections, one run)" if idle else ""},
and in brackets its ratio to the ceiling (`ws-msgpack`). ↑: higher is
better; ↓: lower is better. `picows` is raw picows on uvloop running the
ceiling's protocol: the reference of the fast transport's targets.
`wsrpc-validate` and `wsrpc-fast-validate` are the same with
`validate=True` on both sides, run in the one-CPU and pipelined scenarios
only (`–`).

{table}

![Every figure as a ratio to the ceiling](../benchmarks/results/chart.png)

### Validation cost (round two)

Calls/s with `validate=True` against without it (`add(a: int, b: int) ->
int`), from the table above:

{validation_table(main)}

### Streams (round two)

`benchmarks/streams.py{streams_options(steps.get("streams"))}` (its own output):

{streams_text(steps.get("streams"), streams)}

### Scale-out (round two)

`benchmarks/cluster.py`: a private `redis-server` on 127.0.0.1, three
server processes (default transport) joined by a `RedisBackplane`, the
clients in one more process (picows transport on uvloop: cheaper to open
10,000 of); latency over 2,000 sequential calls, broadcasts medians of 3.

{cluster_table(cluster)}

### The targets of #16

Every ratio is between two figures of this one run; "within 5 % of the
bound" flags a figure that close to it (read it with the spread of the
repetitions given with the machine above).{same_code_text(meta)}

{targets_table([Target(**{k: v for k, v in t.items() if k != "status"}) for t in targets])}
"""


def wsrpc_tree(checkout: Path) -> str | None:
    """The git tree hash of ``checkout``'s wsrpc/ (uncommitted changes not included)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD:wsrpc"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def same_code_text(meta: dict[str, Any]) -> str:
    trees = meta.get("wsrpc_trees") or {}
    if not trees.get("base") or trees.get("base") != trees.get("this"):
        return ""
    return (
        "\n\n**The `*-base` systems ran the same wsrpc code as the others** (the same "
        f"`wsrpc/` tree, `{trees['this'][:10]}`): their ratios, the “against the base "
        "commit” rows, compare identical code and so measure this run's noise, not a change."
    )


def update_docs(path: Path, text: str) -> bool:
    """Replace what lies between the markers in ``path``; False if it has no markers."""
    try:
        doc = path.read_text()
    except OSError:
        return False
    start, end = doc.find(BEGIN), doc.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(doc[: start + len(BEGIN)] + "\n" + text.strip() + "\n" + doc[end:])
    return True


def finish(document: dict[str, Any], out_dir: Path, docs: Path | None) -> None:
    """Compute the targets, write round2.json and round2.md, update the docs."""
    main, cluster = load(out_dir / "latest.json"), load(out_dir / "cluster.json")
    streams = load(out_dir / "streams.json")
    targets = main_targets(main) + stream_targets(streams) + cluster_targets(cluster)
    document["targets"] = [asdict(t) | {"status": t.status} for t in targets]
    (out_dir / "round2.json").write_text(json.dumps(document, indent=1) + "\n")
    text = report(document, out_dir)
    (out_dir / "round2.md").write_text("## Round two\n\n" + text)
    print(targets_table(targets))
    if docs is not None:
        if update_docs(docs, text):
            print(f"updated {docs}", file=sys.stderr)
        else:
            print(f"{docs} has no {BEGIN} ... {END} section: not updated", file=sys.stderr)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, metavar="CHECKOUT", help="also run *-base systems")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny counts, about a minute; writes results/smoke-round2/, not the docs",
    )
    parser.add_argument("--repeat", type=int, default=3, help="main table: runs per figure")
    parser.add_argument("--idle-conns", type=int, default=IDLE_CONNS, metavar="N")
    parser.add_argument(
        "--duration", type=float, default=1.0, metavar="S", help="main table: seconds per run"
    )
    parser.add_argument("--steps", default=",".join(STEPS), help=f"a subset of {','.join(STEPS)}")
    parser.add_argument(
        "--out-dir", type=Path, help="where the JSON and Markdown go (default results/)"
    )
    parser.add_argument("--docs", type=Path, help=f"the page to update (default {DOCS})")
    parser.add_argument("--no-docs", action="store_true", help="leave the docs alone")
    parser.add_argument(
        "--render", action="store_true", help="measure nothing: redo targets and reports"
    )
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    if args.out_dir is None:
        args.out_dir = RESULTS_DIR / "smoke-round2" if args.smoke else RESULTS_DIR
    if args.no_docs or (args.smoke and args.docs is None):
        args.docs = None
    elif args.docs is None:
        args.docs = DOCS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render:
        document = load(out_dir / "round2.json")
        if document is None:
            print(f"no {out_dir / 'round2.json'} to render", file=sys.stderr)
            return 1
        finish(document, out_dir, args.docs)
        return 0
    shown = ["make -C benchmarks round2"]
    options = [f"--base {args.base}"] if args.base else []
    if set(args.steps) != set(STEPS):
        options.append(f"--steps {','.join(args.steps)}")
    if options:
        shown.append(f'ARGS="{" ".join(options)}"')
    if args.base is None and "main" not in args.steps:
        earlier = load(out_dir / "round2.json") or {}
        base = (earlier.get("meta", {}).get("wsrpc_trees") or {}).get("base")
        args.base_tree = base
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    steps = [
        Step(name, command)
        for name, command in commands(args, out_dir).items()
        if name in args.steps
    ]
    for step in steps:
        for stale in OUTPUTS[step.name]:  # never report an older run's figures as this one's
            (out_dir / stale).unlink(missing_ok=True)
        run_step(step, STEP_TIMEOUT[step.name] * (0.5 if args.smoke else 1.0))
    document = {
        "meta": {
            "started_at": started_at,
            "command": " ".join(shown) if not args.smoke else "round2.py --smoke",
            "wall_time_s": round(time.monotonic() - started, 1),
            "smoke": args.smoke,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "steps": [asdict(step) for step in steps],
            "wsrpc_trees": {
                "this": wsrpc_tree(BENCH_DIR.parent),
                "base": wsrpc_tree(args.base) if args.base else getattr(args, "base_tree", None),
            },
        },
        "targets": [],
    }
    earlier = load(out_dir / "round2.json")
    if set(args.steps) != set(STEPS) and isinstance(earlier, dict):
        # A subset re-measured: the other steps' records (and files) stay as they were.
        ran = {step.name for step in steps}
        kept = [step for step in earlier["meta"].get("steps", []) if step["name"] not in ran]
        for step in kept:
            step["earlier_run"] = earlier["meta"].get("started_at")
        document["meta"]["steps"] = kept + document["meta"]["steps"]
        # "In all": what the whole command would have taken, step by step.
        document["meta"]["wall_time_s"] = sum(step["wall_s"] for step in document["meta"]["steps"])
    finish(document, out_dir, args.docs)
    print(f"wall time {document['meta']['wall_time_s']:.0f} s", file=sys.stderr)
    return 1 if any(step.error for step in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
