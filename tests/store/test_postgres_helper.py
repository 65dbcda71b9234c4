"""The tests' throwaway PostgreSQL: a cluster whose test process died without stopping it is swept."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.postgres import OWNER_FILE, ThrowawayPostgres, bin_dir

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEAVE_RUNNING = """
import sys, time
from tests.postgres import ThrowawayPostgres
server = ThrowawayPostgres()
server.start()
print(server._dir, server.port, flush=True)
time.sleep(600)
"""


def test_a_killed_owners_cluster_is_stopped_and_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen([sys.executable, "-c", LEAVE_RUNNING], cwd=root, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    directory, port = owner.stdout.readline().split()
    left = Path(directory)
    assert (left / OWNER_FILE).read_text().strip() == str(owner.pid)
    with ThrowawayPostgres() as live:
        assert left not in live.sweep_orphans()  # its owner still runs
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert (left / "data" / "postmaster.pid").exists()  # the server outlived its owner
        assert left in live.sweep_orphans()
        assert not left.exists()
        assert live._dir is not None and live._dir.exists()  # its own cluster, owner alive, untouched
    deadline = time.monotonic() + 10
    while (
        subprocess.run([str(bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", port], capture_output=True).returncode
        == 0
    ):
        assert time.monotonic() < deadline, "the orphan's server still answers"
        time.sleep(0.1)
