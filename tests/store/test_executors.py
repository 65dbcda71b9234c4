"""Executor liveness: a run whose process is gone is interrupted; a live process's run is not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.store import RunStatus, Store
from corral.store.liveness import STALE_HEARTBEAT_S, process_alive
from corral.store.models import ExecutorRow
from tests.store.executor_process import executor_process, sigkill
from tests.store.runs import add_run

pytestmark = pytest.mark.usefixtures("database")  # every test on SQLite and on PostgreSQL


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
def test_a_killed_executors_run_is_interrupted_and_a_live_ones_is_not(home: Path) -> None:
    store = Store.open(home=home)
    with (
        executor_process(home, "ex-killed", "run-killed") as killed,
        executor_process(home, "ex-live", "run-live"),
    ):
        assert not store.get_run("run-killed").interrupted
        sigkill(killed)

        assert [r.id for r in store.interrupted_runs()] == ["run-killed"]
        assert store.live_executor_ids() == {"ex-live"}
        dead, live = store.get_run("run-killed"), store.get_run("run-live")
        assert (dead.status, dead.interrupted, dead.display_status) == (RunStatus.RUNNING, True, "interrupted")
        assert (live.status, live.interrupted, live.display_status) == (RunStatus.RUNNING, False, "running")
        assert {r.id: r.interrupted for r in store.list_runs()} == {"run-killed": True, "run-live": False}
    store.close()


def test_finished_runs_are_never_interrupted_and_runs_without_an_executor_are(home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "done", executor_id="gone", status=RunStatus.SUCCEEDED)
    add_run(store, "orphan", executor_id=None, status=RunStatus.QUEUED)
    add_run(store, "unregistered", executor_id="gone", status=RunStatus.WAITING_APPROVAL)
    assert [r.id for r in store.interrupted_runs()] == ["orphan", "unregistered"]
    done = store.get_run("done")
    assert (done.interrupted, done.display_status) == (False, "succeeded")
    store.close()


def test_the_callers_own_executor_is_alive_even_before_it_is_registered(home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "mine", executor_id="me")
    assert [r.id for r in store.interrupted_runs()] == ["mine"]
    assert store.interrupted_runs(exclude_executor="me") == []
    store.close()


def test_an_executor_on_another_host_is_gone_once_its_heartbeat_is_stale(home: Path) -> None:
    store = Store.open(home=home)
    elsewhere = f"not-{socket.gethostname()}"
    store.register_executor("fresh", elsewhere, 1)
    store.register_executor("stale", elsewhere, 1)
    with store.engine.begin() as conn:
        stale_at = time.time() - STALE_HEARTBEAT_S - 1
        conn.execute(ExecutorRow.__table__.update().where(ExecutorRow.id == "stale").values(heartbeat_at=stale_at))
    add_run(store, "on-fresh", executor_id="fresh")
    add_run(store, "on-stale", executor_id="stale")
    assert store.live_executor_ids() == {"fresh"}
    assert [r.id for r in store.interrupted_runs()] == ["on-stale"]
    store.heartbeat("stale")
    assert store.interrupted_runs() == []
    store.close()


def test_a_killed_process_not_yet_reaped_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # a zombie until we reap it below: os.kill(pid, 0) still succeeds
        assert not process_alive(proc.pid)
        os.kill(proc.pid, 0)  # still there as a zombie, which is what the check must see through
    finally:
        proc.kill()
        proc.wait(timeout=10)
