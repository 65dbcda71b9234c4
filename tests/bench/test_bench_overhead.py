"""The overhead benchmark runs end to end, writes well-formed JSON and cleans up; figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "overhead.py"
ROW_KEYS = {"id", "group", "label", "status"}
SUMMARY_KEYS = {"n", "p50_ms", "p90_ms", "min_ms", "mean_ms", "max_ms"}
ROWS = [
    "turn/pydantic_ai",
    "turn/corral",
    "turn/dbos_floor",
    "step/dbos_async",
    "step/dbos_sync",
    "workflow/dbos_one_step",
    "session/pydantic_ai",
    "session/corral",
    "session/dbos_floor",
    "coldstart/corral_run",
    "coldstart/python_floor",
    "coldstart/import_corral_cli",
    "coldstart/import_corral_runtime",
]
TURNS = 3


@pytest.mark.slow
def test_overhead_benchmark_writes_well_formed_json(tmp_path: Path) -> None:
    argv = ["--turns", str(TURNS), "--sessions", "1", "--warmup", "0", "--instrumented", "1", "--cold-starts", "1"]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--top", "5", "--json", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)

    assert report["schema"] == "corral.bench.overhead/1"
    assert report["parameters"]["turns"] == TURNS
    assert report["model_seam"] == ["Runtime(engines={'native': NativeEngine(model=FunctionModel)})"]
    rows = {row["id"]: row for row in report["results"]}
    assert sorted(rows) == sorted(ROWS)
    for row in rows.values():
        assert row.keys() >= ROW_KEYS
        # Everything here needs only corral's own dependencies: every row must have run.
        assert row["status"] == "ok", row
        assert row.keys() >= SUMMARY_KEYS
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["max_ms"]
    assert rows["turn/corral"]["n"] == TURNS  # one sample per turn of the one timed session
    assert set(rows["turn/corral"]["phases"]) == {"loop_cpu", "process_cpu"}
    assert set(rows["coldstart/corral_run"]["phases"]) >= {"to_submit", "sandbox_create", "sandbox_to_request"}

    assert set(report["overhead"]) == {"p50", "mean"}
    assert report["overhead"]["p50"]["dbos_floor_ms"] > 0
    # Each steady-state turn takes two durable steps: DBOS writes and commits for them, the journal for its events.
    corral = report["counts"]["corral"]
    assert corral["by_db"]["dbos"]["commits_per_turn"] >= 2
    # corral's own writes (the journal, group-committed) cost less per turn than DBOS's two steps; in a
    # session this short the journal may write nothing until the run ends (then no "corral" entry).
    ours = corral["by_db"].get("corral", {}).get("statements_per_turn", 0.0)
    assert ours < corral["by_db"]["dbos"]["statements_per_turn"]
    assert report["counts"]["dbos_floor"]["by_db"]["dbos"]["commits_per_turn"] >= 2
    itemised = {row["label"]: row for row in report["itemised"]}
    assert not [row for row in itemised.values() if "missing" in row], "a probe's target moved"
    for label in ("Steps.model_call: the durable model step", "Steps.tool_call: the durable tool step"):
        assert itemised[label]["calls_per_turn"] == 1
    assert {item["item"] for item in report["budget"]["items"]}
    assert "unattributed_ms" in report["budget"]
    for subject in ("corral", "pydantic_ai"):
        assert report["profiles"][subject]["groups"]
    for name in ("corral_run", "corral_cli"):
        assert report["imports"][name]["modules"] > 0
    assert report["imports"]["corral_run_profile"]["by_cumtime"]
    assert all(target["met"] in {True, False, None} for target in report["targets"])
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
