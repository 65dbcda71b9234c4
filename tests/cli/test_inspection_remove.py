"""``corral rm`` and ``corral prune`` remove runs with their journals and files, and never anything else."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from corral.cli.removal import own_run_dir
from corral.store import RunStatus, Store
from tests.cli.test_inspection_follow import start, wait_for_event
from tests.e2e.cli_helpers import corral, corral_json
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.slow

DAY = 86_400


def add_run_with_files(store: Store, run_id: str, **fields) -> Path:
    """A run whose directory is where corral makes it, with a journal and a few files."""
    run_dir = store.runs_dir / run_id
    (run_dir / "workspace").mkdir(parents=True)
    (run_dir / "patch.diff").write_text("x" * 1000)
    (run_dir / "workspace" / "big.bin").write_bytes(b"\0" * 4000)
    add_run(store, run_id, run_dir=str(run_dir), **{"status": RunStatus.SUCCEEDED, **fields})
    for event in finished_run_events():
        store.journal.append(run_id, event)
    store.journal.flush()
    return run_dir


def run_ids(home: Path, cwd: Path) -> list[str]:
    return sorted(r["id"] for r in corral_json("runs", "-n", "100", cwd=cwd, home=home))


def test_rm_removes_the_rows_journal_and_directory_of_a_finished_run(home: Path, tmp_path: Path) -> None:
    store = Store.open(home=home)
    gone = add_run_with_files(store, "agrecgone000000001", task="fix the bug\nin detail")
    kept = add_run_with_files(store, "agreckept000000001")
    store.close()

    proc = corral("rm", "agrecgone", cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("removed run agrecgone000000001 (a, succeeded, ") and lines[0].endswith(": fix the bug")
    assert lines[1] == "removed 1 run(s) and 6 journal event(s); freed 5.0 kB of files"
    assert not gone.exists() and kept.exists()
    assert run_ids(home, tmp_path) == ["agreckept000000001"]
    store = Store.open(home=home)
    assert store.events("agrecgone000000001") == [] and len(store.events("agreckept000000001")) == 6
    store.close()


def test_rm_never_deletes_outside_the_stores_runs_directory(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("mine")
    store = Store.open(home=home)
    store.runs_dir.mkdir(parents=True)
    (store.runs_dir / "linked").symlink_to(outside)
    add_run(store, "elsewhere", status=RunStatus.SUCCEEDED, run_dir=str(outside))
    add_run(store, "linked", status=RunStatus.SUCCEEDED, run_dir=str(store.runs_dir / "linked"))
    add_run(store, "climbing", status=RunStatus.SUCCEEDED, run_dir=str(store.runs_dir / "climbing" / ".." / ".."))
    store.close()

    proc = corral("rm", "elsewhere", "linked", "climbing", cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"kept the files of run elsewhere at {outside}: not this store's run directory" in proc.stdout
    assert "kept the files of run linked at" in proc.stdout and "kept the files of run climbing at" in proc.stdout
    assert (outside / "data.txt").read_text() == "mine"
    assert (home / "corral.db").exists() and (home / "runs" / "linked").is_symlink()
    assert run_ids(home, tmp_path) == []


def test_rm_refuses_unfinished_runs_without_force(home: Path, tmp_path: Path) -> None:
    store = Store.open(home=home)
    store.register_executor("this-process", socket.gethostname(), os.getpid())
    add_run_with_files(store, "live", status=RunStatus.RUNNING, executor_id="this-process")
    add_run_with_files(store, "orphaned", status=RunStatus.RUNNING, executor_id=None)
    add_run_with_files(store, "done")
    store.close()

    live = corral("rm", "done", "live", cwd=tmp_path, home=home)
    assert live.returncode == 2
    assert "error: run live is running" in live.stderr and "`--force` cancels it" in live.stderr
    orphaned = corral("rm", "orphaned", cwd=tmp_path, home=home)
    assert orphaned.returncode == 2
    assert "run orphaned is interrupted (its process is gone) and could still be resumed" in orphaned.stderr
    assert "`corral resume orphaned` continues it" in orphaned.stderr
    assert run_ids(home, tmp_path) == ["done", "live", "orphaned"]  # nothing removed, "done" neither


SLOW_SCRIPT = """
[[turns]]
text = "Starting."
[[turns.tool_calls]]
name = "write_file"
args = { path = "new.txt", content = "work in progress" }

[[turns]]
text = "done"
delay = 30
"""


def test_rm_force_cancels_a_killed_run_then_removes_it(home: Path, tmp_path: Path, repo: Path) -> None:
    (tmp_path / "slow.toml").write_text(SLOW_SCRIPT)
    (tmp_path / "corral.toml").write_text('[agents.fixer]\nmodel = "scripted:slow.toml"\nsandbox = "local"\n')
    proc = start(["run", "fixer", "a slow task", "--repo", str(repo)], cwd=tmp_path, home=home)
    try:
        run_id = wait_for_event(home, "tool.result")
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    run_dir = home / "runs" / run_id
    assert (run_dir / "workspace" / "new.txt").exists()

    refused = corral("rm", run_id, cwd=tmp_path, home=home)
    assert refused.returncode == 2 and f"run {run_id} is interrupted" in refused.stderr
    forced = corral("rm", run_id, "--force", cwd=tmp_path, home=home)
    assert forced.returncode == 0, forced.stderr
    assert f"removed run {run_id} (fixer, cancelled, " in forced.stdout
    assert not run_dir.exists() and run_ids(home, tmp_path) == []
    assert (repo / "calc.py").exists() and not (repo / "new.txt").exists()  # the repository is untouched


def test_a_sub_run_goes_with_its_run_and_follow_ups_lose_their_link(home: Path, tmp_path: Path) -> None:
    store = Store.open(home=home)
    add_run_with_files(store, "top")
    add_run_with_files(store, "sub", parent_id="top")
    add_run(store, "next", status=RunStatus.SUCCEEDED, continues_id="top")
    add_run(store, "waiting", status=RunStatus.RUNNING, continues_id="sub")  # interrupted: no process
    store.close()

    alone = corral("rm", "sub", cwd=tmp_path, home=home)
    assert alone.returncode == 2 and "run sub is a sub-run of run top; it is removed with that run" in alone.stderr
    busy = corral("rm", "top", cwd=tmp_path, home=home)
    assert busy.returncode == 2
    assert "run waiting (interrupted) continues run sub and may still need it" in busy.stderr

    forced = corral("rm", "top", "--force", cwd=tmp_path, home=home)
    assert forced.returncode == 0, forced.stderr
    assert "removed 2 run(s) and 12 journal event(s)" in forced.stdout
    assert "run next continues run top: that link is cleared" in forced.stdout
    assert "run waiting continues run sub: that link is cleared" in forced.stdout
    assert run_ids(home, tmp_path) == ["next", "waiting"]
    assert corral_json("show", "next", cwd=tmp_path, home=home)["continues_id"] is None


def test_rm_of_an_unknown_run_removes_nothing(home: Path, tmp_path: Path) -> None:
    store = Store.open(home=home)
    add_run_with_files(store, "real")
    store.close()
    proc = corral("rm", "real", "nope", cwd=tmp_path, home=home)
    assert proc.returncode == 2 and "no run 'nope' in this store" in proc.stderr
    assert run_ids(home, tmp_path) == ["real"] and (home / "runs" / "real").exists()


def test_prune_removes_finished_runs_older_than_an_age(home: Path, tmp_path: Path) -> None:
    now = time.time()
    store = Store.open(home=home)
    add_run_with_files(store, "old-ok", created_at=now - 10 * DAY)
    add_run_with_files(store, "old-failed", status=RunStatus.FAILED, created_at=now - 8 * DAY)
    add_run_with_files(store, "old-sub", parent_id="old-ok", created_at=now - DAY)  # goes with its run
    add_run_with_files(store, "old-orphan", status=RunStatus.RUNNING, created_at=now - 9 * DAY)  # interrupted
    add_run_with_files(store, "recent", created_at=now - 6 * DAY)
    store.close()

    dry = corral("prune", "--older-than", "7d", "--dry-run", cwd=tmp_path, home=home)
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[3] for line in dry.stdout.splitlines()[:3]] == ["old-failed", "old-ok", "old-sub"]
    assert "would remove 3 run(s); would free 15.0 kB of files" in dry.stdout
    assert len(run_ids(home, tmp_path)) == 5 and (home / "runs" / "old-ok").exists()

    pruned = corral("prune", "--older-than", "7d", cwd=tmp_path, home=home)
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 3 run(s) and 18 journal event(s); freed 15.0 kB of files" in pruned.stdout
    assert run_ids(home, tmp_path) == ["old-orphan", "recent"]
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["old-orphan", "recent"]
    again = corral("prune", "--older-than", "7d", cwd=tmp_path, home=home)
    assert (again.returncode, again.stdout) == (0, "nothing to remove\n")
    bad = corral("prune", "--older-than", "a week", cwd=tmp_path, home=home)
    assert bad.returncode == 2 and "--older-than 'a week' is neither an age nor a date" in bad.stderr
    assert corral("prune", cwd=tmp_path, home=home).returncode == 2  # --older-than is required


def test_only_a_direct_child_of_the_runs_directory_is_a_runs_own(home: Path) -> None:
    store = Store.open(home=home)
    runs_dir = store.runs_dir
    add_run(store, "..", status=RunStatus.SUCCEEDED, run_dir=str(runs_dir / ".."))
    add_run(store, "a/b", status=RunStatus.SUCCEEDED, run_dir=str(runs_dir / "a" / "b"))
    add_run(store, "fine", status=RunStatus.SUCCEEDED, run_dir=str(runs_dir / "fine"))
    assert own_run_dir(store, store.get_run("..")) is None  # would be the store's home
    assert own_run_dir(store, store.get_run("a/b")) is None
    assert own_run_dir(store, store.get_run("fine")) == runs_dir / "fine"
    store.close()
