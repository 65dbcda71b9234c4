"""The fan-out benchmark runs corral's real durable fan-out and brings every result back; figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fanout

SCRIPT = Path(fanout.__file__)


@pytest.mark.slow
def test_fanout_runs_every_dispatch_durably_and_reports_it() -> None:
    argv = ["--dispatches", "30", "--concurrency", "8", "--warmup", "5", "--repeats", "1", "--no-peer", "--json"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == fanout.SCHEMA and report["peer"] is None
    (run,) = report["corral"]["runs"]
    assert run["results_ok"] == 30 and run["children_stored"] == 30 and run["journals_checked"] == 20
    assert report["corral"]["durable"] is True and report["corral"]["ms_per_dispatch"] > 0
    assert "fan-out: N=30 C=8" in done.stderr


def test_bad_arguments_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dispatches", "0"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "must be at least 1" in done.stderr
