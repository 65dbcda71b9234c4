"""A real second process that registers an executor and an unfinished run, then idles until killed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXECUTOR = """
import os, socket, sys, time
from pathlib import Path
from corral.store import RunStatus, Store

home, executor_id, run_id = sys.argv[1:4]
store = Store.open(home=Path(home))
store.register_executor(executor_id, socket.gethostname(), os.getpid())
store.create_run(
    id=run_id, parent_id=None, root_id=run_id, agent="fixer", spec={"model": "openai:gpt-6.1-sol"}, spec_hash="h",
    task="a long task", repo="/r", run_dir="/d", executor_id=executor_id,
)
store.update_run(run_id, status=RunStatus.RUNNING, started_at=time.time())
print("ready", flush=True)
time.sleep(600)
"""


@contextmanager
def executor_process(home: Path, executor_id: str, run_id: str) -> Iterator[subprocess.Popen[str]]:
    """Start the process and wait until its executor and run are in the store; kill it on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-c", EXECUTOR, str(home), executor_id, run_id], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", "the executor process did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def sigkill(proc: subprocess.Popen[str]) -> None:
    """Kill it as a crash would (no cleanup runs) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
