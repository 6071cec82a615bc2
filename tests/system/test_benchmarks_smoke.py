"""
The benchmark harness does not rot: ``benchmarks/run.py --smoke`` runs.

The smoke run measures wsrpc and the hand-written ceiling (msgpack over
websockets) in every scenario with tiny counts, in this interpreter and with
no installs. Nothing here looks at the figures themselves: only that each
run produced them, in the JSON and in the printed table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parent.parent.parent
RUN = ROOT / "benchmarks" / "run.py"

SYSTEMS = ("wsrpc", "ws-msgpack")
SCENARIOS = ["sequential", "pipelined", "many_clients", "payload", "callbacks"]
if sys.platform == "linux" and shutil.which("taskset"):
    SCENARIOS.append("pinned")

# The figures each scenario must report (the main one first).
METRICS = {
    "sequential": ("calls_per_s", "p50_us", "p99_us"),
    "pinned": ("calls_per_s", "p50_us", "p99_us"),
    "pipelined": ("calls_per_s",),
    "many_clients": ("calls_per_s", "rss_per_conn_kib"),
    "payload": ("mib_per_s",),
    "callbacks": ("calls_per_s", "p50_us", "p99_us"),
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run the smoke benchmark once; its JSON results and its stdout."""
    out = tmp_path_factory.mktemp("bench") / "r.json"
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)  # the figures are the subject here, not warnings
    completed = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results: dict[str, Any] = json.loads(out.read_text())
    return results, completed.stdout


@pytest.mark.timeout(150 * UNIT)
def test_smoke_run_measures_every_scenario(smoke_run: tuple[dict[str, Any], str]) -> None:
    results, _ = smoke_run
    assert results["meta"]["smoke"] is True
    assert set(SCENARIOS) <= set(results["scenarios"])
    for system in SYSTEMS:
        for scenario in SCENARIOS:
            cell = results["results"][system][scenario]
            assert cell["status"] == "ok", (system, scenario, cell["errors"])
            assert cell["errors"] == []
            assert len(cell["reps"]) == 1
            for metric in METRICS[scenario]:
                assert cell["median"][metric] > 0, (system, scenario, metric)
            # Every figure is also given relative to the ceiling.
            assert METRICS[scenario][0] in cell["ratio"], (system, scenario)


@pytest.mark.timeout(150 * UNIT)
def test_smoke_run_measures_validation_where_msgspec_is(
    smoke_run: tuple[dict[str, Any], str],
) -> None:
    results, _ = smoke_run
    cells = results["results"]["wsrpc-validate"]
    if importlib.util.find_spec("msgspec") is None:
        assert all(cell["status"] == "unavailable" for cell in cells.values())
        return
    ran = {"pipelined", "pinned"} & set(SCENARIOS)
    for scenario in results["scenarios"]:
        if scenario in ran:
            assert cells[scenario]["status"] == "ok", (scenario, cells[scenario]["errors"])
            assert cells[scenario]["median"]["calls_per_s"] > 0
        else:  # validate=True runs where the CPU is the cost only
            assert cells[scenario]["status"] == "not run", scenario


def load_round2() -> ModuleType:
    spec = importlib.util.spec_from_file_location("round2", ROOT / "benchmarks" / "round2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("round2", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(150 * UNIT)
def test_round2_checks_each_target_against_the_results(
    smoke_run: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    # round2.py's last step, on the smoke run's results: the streams and
    # cluster steps did not run, so their targets are "not measured".
    results, _ = smoke_run
    round2 = load_round2()
    (tmp_path / "latest.json").write_text(json.dumps(results))
    (tmp_path / "latest.md").write_text("| the table |\n")
    docs = tmp_path / "performance.md"
    docs.write_text(f"before\n{round2.BEGIN}\nold\n{round2.END}\nafter\n")
    document: dict[str, Any] = {
        "meta": {
            "started_at": "now",
            "command": "round2.py --smoke",
            "wall_time_s": 1.0,
            "steps": [{"name": "main", "wall_s": 1.0, "error": "", "stdout": ""}],
        },
        "targets": [],
    }
    round2.finish(document, tmp_path, docs)
    targets = json.loads((tmp_path / "round2.json").read_text())["targets"]
    by_name = {t["target"]: t for t in targets}
    default = by_name["wsrpc ≥ ws-msgpack (ceiling): sequential calls/s"]
    assert default["status"] in ("met", "not met")
    expected = (
        results["results"]["wsrpc"]["sequential"]["median"]["calls_per_s"]
        / results["results"]["ws-msgpack"]["sequential"]["median"]["calls_per_s"]
    )
    assert default["value"] == pytest.approx(expected)
    assert by_name["wsrpc-fast ≥ 0.85x picows: sequential calls/s"]["status"] == "not measured"
    assert {t["group"] for t in targets} >= {"streams", "scale-out", "validation"}
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n")
    assert "old" not in text and "| the table |" in text
    assert "The targets of #16" in (tmp_path / "round2.md").read_text()


@pytest.mark.timeout(150 * UNIT)
def test_smoke_run_prints_the_table(smoke_run: tuple[dict[str, Any], str]) -> None:
    _, stdout = smoke_run
    for name in (*SYSTEMS, *SCENARIOS):
        assert name in stdout, name
    assert "1.00x" in stdout  # the ceiling, relative to itself


def test_cluster_smoke_run_measures_every_figure(tmp_path: Path) -> None:
    # benchmarks/cluster.py: a private redis-server and three node processes.
    out = tmp_path / "cluster.json"
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    completed = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "cluster.py")),
            *("--smoke", "--workers", "1,2", "--out", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results: dict[str, Any] = json.loads(out.read_text())["results"]
    # wsrpc serve --workers 1 and 2 (reuse_port), driven by client processes.
    workers = {name: results.pop(name) for name in ("workers 1", "workers 2")}
    assert all(w["calls_per_s"] > 0 for w in workers.values())
    assert [sum(run) for run in workers["workers 2"]["connections_per_worker"]] == [
        results["workers clients"]["processes"]
        * results["workers clients"]["connections_per_process"]
    ]
    del results["workers clients"]
    assert set(results) == {
        "latency cross-node",
        "latency local",
        "throughput cross-node",
        "throughput local",
        "broadcast 30 over 3 nodes",
        "broadcast 90 over 3 nodes",
        "broadcast 30 in one process",
        "broadcast 90 in one process",
    }
    assert all(value > 0 for figures in results.values() for value in figures.values())
    assert "| latency cross-node |" in completed.stdout


@pytest.mark.timeout(150 * UNIT)
def test_the_streams_benchmark_runs_and_paused_streams_stay_paused(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    out = tmp_path / "streams.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "streams.py"),
            *("--items", "2000", "--repeat", "1", "--paused", "10", "--out", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120 * UNIT,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    for label in ("wsrpc stream", "one call per item", "raw websockets"):
        assert any(line.startswith("|") and label in line for line in lines), completed.stdout
    # Ten paused streams made their first window of 16 items each, and no
    # more; read 100 items further, 264 each (the window grown to 256).
    assert "160 items produced (160 one second later)" in completed.stdout
    assert "2640 items produced (2640 one second later)" in completed.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["results"] and set(report["results"]) == set(report["ratios"])
    for figures in report["results"].values():
        assert all(figures[key]["median"] > 0 for key in ("stream", "calls", "raw"))
    assert {target["target"] for target in report["targets"]} >= {"stream >= 10x one call per item"}
