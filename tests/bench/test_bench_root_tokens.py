"""The root-tokens benchmark runs both ways for real (the program checks its own answer); figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import root_tokens

SCRIPT = Path(root_tokens.__file__)


@pytest.mark.slow
def test_root_tokens_runs_both_ways_and_reports_growth() -> None:
    argv = [sys.executable, str(SCRIPT), "--items", "10", "30", "--batch", "10", "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["schema"] == root_tokens.SCHEMA
    assert {(r["way"], r["items"]) for r in report["rows"]} == {(w, n) for w in ("program", "loop") for n in (10, 30)}
    loop = {r["items"]: r for r in report["rows"] if r["way"] == "loop"}
    assert loop[30]["model_calls"] == 4 and loop[10]["model_calls"] == 2  # 10 reads per answer, then the answer
    assert set(report["growth_pct_per_item"]) == {"program", "loop"}


def test_one_size_is_refused() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--items", "10"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "two or more" in done.stderr
