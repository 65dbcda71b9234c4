"""``corral runs --status S --agent A --since T``: the store filters; a bad value is a usage error."""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from corral.cli.inspection import cutoff_time
from corral.errors import UsageError
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral, corral_json
from tests.store.runs import add_run

NOW = datetime(2025, 12, 4, 18, 0).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds_ago"),
    [("30m", 1800), ("1h", 3600), ("7d", 7 * 86_400), ("2w", 14 * 86_400), ("45s", 45)],
)
def test_ages_count_back_from_now(value: str, seconds_ago: int) -> None:
    assert cutoff_time(value, "--since", now=NOW) == NOW - seconds_ago


def test_dates_are_local_unless_they_say_otherwise() -> None:
    assert cutoff_time("2025-12-04", "--since") == datetime(2025, 12, 4).timestamp()
    assert cutoff_time("2025-12-04T13:05", "--since") == datetime(2025, 12, 4, 13, 5).timestamp()
    assert cutoff_time("2025-12-04T13:05:00+00:00", "--since") == 1764853500.0


@pytest.mark.parametrize("value", ["yesterday", "1.5h", "-1h", "7 days", "", "1y"])
def test_anything_else_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError, match=r"--older-than .* is neither an age nor a date") as err:
        cutoff_time(value, "--older-than")
    assert err.value.hint is not None and "7d" in err.value.hint


@pytest.fixture
def filtered_home(home: Path) -> Path:
    store = Store.open(home=home)
    now = time.time()
    store.register_executor("this-process", socket.gethostname(), os.getpid())
    add_run(store, "fixed-today", status=RunStatus.SUCCEEDED, agent="fixer", created_at=now - 600)
    add_run(store, "failed-2h", status=RunStatus.FAILED, agent="fixer", created_at=now - 7200)
    add_run(store, "review-10d", status=RunStatus.SUCCEEDED, agent="reviewer", created_at=now - 10 * 86_400)
    add_run(store, "running", status=RunStatus.RUNNING, agent="fixer", executor_id="this-process", created_at=now)
    add_run(store, "orphaned", status=RunStatus.RUNNING, agent="reviewer", executor_id=None, created_at=now - 60)
    store.close()
    return home


def listed(*args: str, home: Path, cwd: Path) -> list[str]:
    return [run["id"] for run in corral_json("runs", *args, cwd=cwd, home=home)]


@pytest.mark.slow
def test_runs_filters_by_status_agent_and_age(filtered_home: Path, tmp_path: Path) -> None:
    home = filtered_home
    assert listed("--status", "succeeded", home=home, cwd=tmp_path) == ["fixed-today", "review-10d"]
    assert listed("--status", "interrupted", home=home, cwd=tmp_path) == ["orphaned"]
    assert listed("--status", "running", home=home, cwd=tmp_path) == ["running"]
    assert listed("--agent", "reviewer", home=home, cwd=tmp_path) == ["orphaned", "review-10d"]
    assert listed("--since", "1h", home=home, cwd=tmp_path) == ["running", "orphaned", "fixed-today"]
    assert listed("--since", "7d", "--agent", "fixer", "--status", "failed", home=home, cwd=tmp_path) == ["failed-2h"]
    today = datetime.now().strftime("%Y-%m-%d")
    assert "review-10d" not in listed("--since", today, home=home, cwd=tmp_path)
    table = corral("runs", "--status", "interrupted", cwd=tmp_path, home=home)
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["run", "orphaned"]
    none = corral("runs", "--agent", "nobody", cwd=tmp_path, home=home)
    assert (none.returncode, none.stdout) == (0, "no runs match\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "done"], "unknown status 'done'"),
        (["--since", "yesterday"], "--since 'yesterday' is neither an age nor a date"),
        (["--limit", "-1"], "--limit -1 is negative"),
    ],
)
def test_bad_filter_values_are_usage_errors(args: list[str], message: str, home: Path, tmp_path: Path) -> None:
    proc = corral("runs", *args, cwd=tmp_path, home=home)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
