"""``corral demo``'s hints are commands a person can paste, whatever the store's path holds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.run_support import corral_env, paste
from tests.e2e.cli_helpers import CORRAL

pytestmark = pytest.mark.slow  # starts the real `corral` entry point


def test_the_demos_hints_quote_the_store_path(tmp_path: Path) -> None:
    home = tmp_path / "demo home; rm -rf ~"  # a path a shell would split, and worse
    done = subprocess.run(
        [*CORRAL, "--home", str(home), "demo", "--sandbox", "local"],
        cwd=tmp_path,
        env=corral_env(None, COLUMNS="80"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    prefix = f"see the whole session: corral --home '{home}' trace "
    assert last.startswith(prefix)  # one line, even at 80 columns
    trace = paste(last.removeprefix("see the whole session: "), cwd=tmp_path)
    assert trace.returncode == 0, trace.stderr
    assert "model call 1" in trace.stdout
    assert f"every step: corral --home '{home}' trace {last.removeprefix(prefix)}" in done.stdout
