"""The peer fan-out benchmark builds its own venv, runs deepagents + langchain-quickjs for real and brings every
result back; its figures are never asserted.

The slow test builds (or reuses, when its requirements are unchanged) the bench venv at its default place,
~/.cache/corral-bench/peer-venv, so repeated runs do not reinstall the peer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import peer_fanout

SCRIPT = Path(peer_fanout.__file__)
DISPATCHES, CONCURRENCY = 20, 4


@pytest.mark.slow
@pytest.mark.registry
@pytest.mark.timeout(900)
def test_peer_fanout_sets_up_its_venv_and_brings_every_result_back() -> None:
    setup = subprocess.run(
        [sys.executable, str(SCRIPT), "--setup"], capture_output=True, text=True, timeout=600, check=False
    )
    assert setup.returncode == 0, setup.stderr

    argv = ["--dispatches", str(DISPATCHES), "--concurrency", str(CONCURRENCY), "--json"]
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)

    assert report["peer"] == "deepagents+langchain-quickjs"
    assert report["dispatches"] == DISPATCHES
    assert report["concurrency"] == CONCURRENCY
    assert report["results_ok"] == DISPATCHES
    assert report["durable"] is False
    pinned = {
        name: version
        for name, _, version in (
            line.partition("==") for line in peer_fanout.REQUIREMENTS.read_text().splitlines() if "==" in line
        )
    }
    for name in ("deepagents", "langchain-quickjs", "quickjs-rs"):
        assert report["versions"][name] == pinned[name]
    [run] = report["runs"]
    assert run["results_ok"] == DISPATCHES
    assert run["subagent_model_calls"] == DISPATCHES
    assert run["js_max_in_flight"] == CONCURRENCY
    for key in ("wall_s", "ms_per_dispatch", "peak_rss_mb", "rss_after_imports_mb", "rss_after_warmup_mb"):
        assert isinstance(report[key], float) and report[key] > 0
    assert report["machine"]["cores"] >= 1
    assert f"{DISPATCHES}/{DISPATCHES}" in completed.stderr  # the table


@pytest.mark.parametrize("shape", peer_fanout.SHAPES)
def test_every_shape_dispatches_through_the_peers_task_global(shape: str) -> None:
    program = peer_fanout.fanout_program(7, 3, shape)

    assert "const N = 7, C = 3;" in program
    assert "await task({ description: 'item ' + i, subagentType: \"worker\"" in program
    assert program.rstrip().endswith("})()")


def test_a_missing_venv_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert peer_fanout.main(["--venv", str(tmp_path / "absent"), "-n", "2", "-c", "1"]) == 1

    assert "no peer venv at" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--concurrency", "0"], ["--dispatches", "-3"], ["--warmup", "-1"]])
def test_bad_counts_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        peer_fanout.parse_args(argv)

    assert refused.value.code == 2
