"""The sandbox benchmark runs end to end, writes well-formed JSON and cleans up; figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sandbox.py"
ROW_KEYS = {"id", "group", "label", "status"}
SUMMARY_KEYS = {"n", "p50_ms", "p90_ms", "min_ms", "mean_ms", "max_ms"}
# Rows that need nothing beyond what corral itself needs (git, cp, tar); others may be unavailable here.
ALWAYS_MEASURABLE = [
    "floor/asyncio_exec",
    "floor/subprocess_run",
    "lifecycle/local/sh",
    "lifecycle/local/argv",
    "exec/local/sh",
    "exec/local/argv",
    "workspace/local",
    "workspace/cp_a",
    "workspace/tar_pipe",
    "diff/local",
    "diff/git_diff",
    "breakdown/local/large",
]


@pytest.mark.slow
def test_sandbox_benchmark_writes_well_formed_json(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "3", "--files", "200", "--json", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)

    assert report["schema"] == "corral.bench.sandbox/1"
    assert report["parameters"]["iterations"] == 3
    assert report["repos"]["large"]["files"] == 200
    for fact in ("cpu_model", "cores", "kernel", "tmpdir_filesystem", "bwrap", "python"):
        assert fact in report["machine"]
    rows = {row["id"]: row for row in report["results"]}
    for row in rows.values():
        assert row.keys() >= ROW_KEYS
        assert row["status"] in {"ok", "unavailable", "failed"}
        if row["status"] == "ok":
            assert row.keys() >= SUMMARY_KEYS
            assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["max_ms"]
        else:
            assert row["reason"]
    for row_id in ALWAYS_MEASURABLE:
        assert rows[row_id]["status"] == "ok", rows[row_id]
    assert rows["lifecycle/local/sh"]["n"] == 3
    for backend in ("bubblewrap", "local"):  # a backend that cannot run still has its rows, saying why
        assert f"lifecycle/{backend}/sh" in rows
        assert f"workspace/{backend}" in rows
    assert all(target["met"] in {True, False, None} for target in report["targets"])
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
