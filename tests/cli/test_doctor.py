"""``corral doctor``: the store row is a real check (open and query it), never a ✓ by default."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corral.store import Store
from tests.e2e.cli_helpers import corral
from tests.store.runs import add_run

pytestmark = pytest.mark.slow


def doctor(tmp_path: Path, home: Path, **env: str) -> tuple[int, dict[str, Any]]:
    proc = corral("doctor", "--json", cwd=tmp_path, home=home, env=env)
    report = json.loads(proc.stdout)
    assert report["ok"] is (proc.returncode == 0)
    return proc.returncode, {c["check"]: c for c in report["checks"]}


def test_a_store_that_cannot_be_opened_is_a_failed_check_with_the_reason(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "corral.db").write_text("this is not a database")
    code, checks = doctor(tmp_path, home)
    assert code == 1
    assert checks["store"]["ok"] is False
    assert "file is not a database" in checks["store"]["detail"]

    human = corral("doctor", cwd=tmp_path, home=home)
    assert human.returncode == 1
    assert "✗  store" in human.stdout and "file is not a database" in human.stdout


def test_a_store_whose_tables_are_gone_is_a_failed_check(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store.open(home=home).close()
    with sqlite3.connect(home / "corral.db") as conn:
        conn.execute("DROP TABLE corral_events")
    code, checks = doctor(tmp_path, home)
    assert code == 1
    assert checks["store"]["ok"] is False
    assert "no such table: corral_events" in checks["store"]["detail"]


def test_a_bad_database_url_is_a_failed_check(tmp_path: Path) -> None:
    code, checks = doctor(tmp_path, tmp_path / "home", CORRAL_DATABASE_URL="not a url")
    assert code == 1
    assert checks["store"]["ok"] is False and "URL" in checks["store"]["detail"]


def test_a_working_store_is_checked_and_a_missing_one_is_not_created(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _, checks = doctor(tmp_path, home)
    assert checks["store"]["ok"] is True and "not created yet" in checks["store"]["detail"]
    assert not home.exists()

    Store.open(home=home).close()
    _, checks = doctor(tmp_path, home)
    assert checks["store"]["ok"] is True and checks["store"]["detail"].endswith("(0 runs)")


@pytest.mark.postgres
def test_database_url_before_or_after_the_command_selects_the_store(tmp_path: Path, postgres: Any) -> None:
    url = postgres.database(template=postgres.store_template())
    store = Store(url)
    try:
        add_run(store, "on-postgres")
    finally:
        store.close()
    home = tmp_path / "home"
    for args in (("--database-url", url, "runs", "--json"), ("runs", "--json", "--database-url", url)):
        proc = corral(*args, cwd=tmp_path, home=home)
        assert proc.returncode == 0, proc.stderr
        assert [r["id"] for r in json.loads(proc.stdout)] == ["on-postgres"]
    code, checks = doctor(tmp_path, home, CORRAL_DATABASE_URL=url)
    assert code in (0, 1) and checks["store"]["ok"] is True and "(1 runs)" in checks["store"]["detail"]
    assert not home.exists()  # nothing of the store went to the SQLite home
