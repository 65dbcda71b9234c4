"""docs/cli.md's "A session from start to finish" runs exactly as written, with two terminals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.store import Store
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
SECTION = "## A session from start to finish"


def session_blocks() -> list[str]:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.DOTALL)


def shell_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    # `corral` on PATH as the README's set-up leaves it: the venv's entry point.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    return env


def test_the_session_in_the_cli_docs_runs_as_written(tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()  # the agent's default sandbox
    setup, first_run, follow_up, second_terminal, back = session_blocks()
    env = shell_env(tmp_path)
    # Terminal 1 types every block but the second terminal's, in order, in one shell.
    terminal_1 = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", "\n".join([setup, first_run, follow_up, back])],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        home = tmp_path / "shop" / ".corral"
        follow_up_id = wait_for_running_follow_up(home, terminal_1)
        # Terminal 2, while the follow-up runs: the block as written, in the same directory.
        terminal_2 = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", second_terminal],
            cwd=tmp_path / "shop",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out_1, err_1 = terminal_1.communicate(timeout=240)
    finally:
        terminal_1.kill()
        terminal_1.wait()
    assert terminal_1.returncode == 0, out_1 + err_1
    assert terminal_2.returncode == 0, terminal_2.stdout + terminal_2.stderr

    # What a reader sees: the tools the first run called, the test passing, both patches applied.
    assert "execute\nedit_file\n" in out_1
    assert "the test passes now" in out_1
    assert "?? test_empty.py" in out_1 and " M cart.py" in out_1
    assert (tmp_path / "shop" / "cart.py").read_text() == "def total(prices):\n    return sum(prices)\n"
    # The second terminal followed the follow-up live, to its end.
    assert follow_up_id in terminal_2.stdout
    assert "write_file" in terminal_2.stdout
    assert "succeeded" in terminal_2.stdout


def wait_for_running_follow_up(home: Path, terminal_1: subprocess.Popen[str]) -> str:
    """Like the person at the second terminal: wait until the follow-up is running."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert terminal_1.poll() is None, "terminal 1 ended before the follow-up ran: " + str(terminal_1.communicate())
        if (home / "corral.db").exists():
            store = Store.open(home=home)
            try:
                running = [r for r in store.list_runs() if r.continues_id and r.status.value == "running"]
            finally:
                store.close()
            if running:
                return running[0].id
        time.sleep(0.1)
    raise AssertionError("the follow-up never started")
