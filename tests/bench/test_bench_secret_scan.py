"""The secret-scan benchmark runs end to end and writes well-formed JSON; figures are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.secrets.fakes import GITHUB_TOKEN

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "secret_scan.py"


@pytest.mark.slow
def test_secret_scan_benchmark_writes_well_formed_json(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "app.py").write_text(f'TOKEN = "{GITHUB_TOKEN}"\nprint(TOKEN)\n')
    (tree / "tests").mkdir()
    (tree / "tests" / "fixture.py").write_text(f'TOKEN = "{GITHUB_TOKEN}"\n')
    (tree / "README.md").write_text("nothing to see\n")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tree), "--peer-files", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    (result,) = report["trees"]
    assert result["files"] == 3
    for mode in ("output", "file"):
        assert result[mode]["false_positives"] == 1 and result[mode]["findings_in_fixtures"] == 1
        assert result[mode]["top_files"] == {"src/app.py": 1}
    assert report["peer_sample"]["detect_secrets_cli"]["files"] == 3
    assert GITHUB_TOKEN not in completed.stdout + completed.stderr  # reported by place and type only
