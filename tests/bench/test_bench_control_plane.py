"""The control-plane benchmark runs every section end to end, loses no event and no run, and cleans up;
figures are never asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import control_plane
from tests.postgres import DIR_PREFIX, OWNER_FILE

SCRIPT = Path(control_plane.__file__)
INGEST_ROWS = {
    f"ingest/{database}/{shape}"
    for database in ("sqlite", "postgres")
    for shape in ("1-run-1-process", "4-runs-1-process", "1-run-4-processes")
}
LATENCY_KEYS = {"n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"}


def run_benchmark(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """The script in a subprocess (``args`` holds its pid); on timeout it gets SIGTERM first, so it stops
    its cluster and servers."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"the benchmark did not finish in {timeout:.0f} s; its stderr:\n{stderr}")
    return subprocess.CompletedProcess(process.pid, process.returncode, stdout, stderr)


def processes_inside(directory: Path) -> list[str]:
    """Processes whose working directory is under ``directory`` (the benchmark's servers and workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(f"{proc.name}: {cmdline}")
    return found


def clusters_of(pid: int) -> list[Path]:
    """The throwaway PostgreSQL clusters (tests/postgres.py) that process ``pid`` made and left."""
    return [
        directory
        for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*")
        if (directory / OWNER_FILE).is_file() and (directory / OWNER_FILE).read_text().strip() == str(pid)
    ]


@pytest.mark.slow
@pytest.mark.postgres
def test_control_plane_benchmark_loses_no_event_or_run_and_reports_every_section(tmp_path: Path) -> None:
    argv = [
        *("--events", "400", "--repeats", "1"),
        *("--rate", "200", "--seconds", "1", "--warmup-seconds", "0.2"),
        *("--runs", "4", "--workers", "1", "2", "--concurrency", "2", "--warmup-runs", "1", "--submitters", "2"),
        *("--json", "--tmpdir", str(tmp_path)),
    ]
    done = run_benchmark(argv, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == control_plane.SCHEMA
    assert report["parameters"]["sections"] == ["ingest", "sse", "runs"]
    # What each database ran with is read back from it: PostgreSQL durable, SQLite as the store tunes it.
    assert report["databases"]["postgres"]["fsync"] == "on"
    assert report["databases"]["postgres"]["synchronous_commit"] == "on"
    assert report["databases"]["sqlite"]["journal_mode"] == "wal"

    ingest = {row["id"]: row for row in report["ingest"]}
    assert set(ingest) == INGEST_ROWS
    for row in ingest.values():
        assert row["status"] == "ok", row
        (trial,) = row["trials"]
        assert trial["events"] == trial["stored"] == 400  # every event committed by flush()
        assert row["events_per_s"] > 0 and row["batches"]["n"] >= 1

    sse = report["sse"]
    assert sse["status"] == "ok", sse
    assert sse["appended"] == sse["received"] == 240  # 0.2 s of warm-up and 1 s, at 200 events/s
    assert (sse["lost"], sse["duplicates"], sse["out_of_order"], sse["gaps"]) == (0, 0, 0, 0)
    for key in ("latency", "append_to_commit", "commit_to_client"):
        assert sse[key].keys() == LATENCY_KEYS and sse[key]["n"] == 200
    assert sse["target"]["met"] in {True, False}

    runs = {row["id"]: row for row in report["runs"]}
    assert set(runs) == {"runs/1-worker", "runs/2-workers"}
    for row in runs.values():
        assert row["status"] == "ok", row
        assert (row["succeeded"], row["failed"]) == (4, 0)
        assert row["runs_per_s"] > 0 and row["submit"]["n"] == 4

    assert "append -> client" in done.stderr and "runs through the API" in done.stderr  # the table
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
    assert processes_inside(tmp_path) == [], "the benchmark left processes behind"
    assert clusters_of(done.args) == [], "the benchmark left its PostgreSQL cluster behind"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--events", "0"], "must be at least 1"),
        (["--events", "10"], "must be a multiple of 4"),
        (["--rate", "-5"], "must be more than 0"),
        (["--runs", "2", "--submitters", "3"], "cannot exceed --runs"),
        (["--sections", "everything"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
