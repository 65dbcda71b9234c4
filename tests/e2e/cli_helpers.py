"""Running the real ``corral`` command in a subprocess, as a user would: commands, workers, a model script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.store import Store

CORRAL = [sys.executable, "-m", "corral"]


def corral(
    *args: str, cwd: Path, home: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def corral_json(*args: str, cwd: Path, home: Path) -> Any:
    proc = corral(*args, "--json", cwd=cwd, home=home)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_config(directory: Path, *, base_url: str, model: str = "openai:gpt-6.1-terra", extra: str = "") -> Path:
    path = directory / "corral.toml"
    path.write_text(
        f"""
[agents.fixer]
model = "{model}"
base_url = "{base_url}"
sandbox = "local"
{extra}
[agents.fixer.retry]
initial_backoff_s = 0.01
max_backoff_s = 0.05
"""
    )
    return path


def step_script(directory: Path, *, turns: int, delay_s: float) -> Path:
    """A model script of ``turns`` steps, each answered after ``delay_s``: every step but the last runs
    ``echo step-<i> >> progress.log`` (a side effect the patch shows), the last answers "all steps done"."""
    steps = [
        f"""
[[turns]]
delay = {delay_s}
text = "step {i}"
[[turns.tool_calls]]
name = "execute"
args = {{ command = "echo step-{i} >> progress.log" }}
[turns.usage]
input_tokens = {1000 + 100 * i}
output_tokens = 20
"""
        for i in range(turns - 1)
    ]
    steps.append(f'\n[[turns]]\ndelay = {delay_s}\ntext = "all steps done"\n')
    path = directory / "steps.toml"
    path.write_text("".join(steps))
    return path


_WORKER_LOGS: dict[int, Path] = {}  # worker pid -> the file its output goes to


def start_worker(directory: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A `corral worker` whose output goes to a file in ``directory`` (a pipe nobody reads while it runs
    could fill and stop it)."""
    full_env = {**os.environ, "CORRAL_HOME": str(home), **(env or {})}
    log = directory / f"worker-{len(list(directory.glob('worker-*.log')))}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*CORRAL, "worker", *args], cwd=directory, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    _WORKER_LOGS[proc.pid] = log
    return proc


def output_of(proc: subprocess.Popen[str]) -> str:
    """What a worker started by ``start_worker`` has printed so far."""
    return _WORKER_LOGS[proc.pid].read_text()


def executor_of(store: Store, proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """The executor id a worker registered in the store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e.id for e in store.executors() if e.pid == proc.pid]
        if found:
            return found[0]
        assert proc.poll() is None, output_of(proc)
        time.sleep(0.1)
    raise AssertionError(f"the worker never registered; its output:\n{output_of(proc)}")


def stop_workers(workers: list[subprocess.Popen[str]], timeout: float = 30) -> None:
    """SIGTERM every worker still running, then wait for them all (SIGKILL one that does not stop)."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def kill_worker_mid_run(store: Store, worker: subprocess.Popen[str], executor_id: str) -> tuple[set[str], set[str]]:
    """SIGKILL a worker; the runs surely in flight at the kill (still the dead worker's right after it,
    until another worker recovers them) and those maybe in flight (a run may end, or be taken,
    between the first look and the kill)."""

    def on_worker() -> set[str]:
        return {r.id for r in store.list_runs(limit=None) if r.executor_id == executor_id and not r.status.finished}

    before = on_worker()
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    killed_mid_way = on_worker()
    in_flight = before | killed_mid_way
    assert in_flight, "the killed worker ran nothing: nothing was tested"
    return killed_mid_way, in_flight
