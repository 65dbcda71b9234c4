"""Listing runs by status, agent and age in SQL; removing whole runs; reading a store of an older schema."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from corral.errors import UsageError
from corral.store import RunStatus, Store
from corral.store.db import HEAD_REVISION, MIGRATIONS_DIR
from tests.store.runs import add_run, finished_run_events

#: A process that opens (creating or migrating) the store at ``argv[1]`` and closes it.
OPEN_STORE = (
    "import sys; from pathlib import Path; from corral.store import Store; Store.open(home=Path(sys.argv[1])).close()"
)


@pytest.fixture
def store(tmp_path: Path, database: str):
    opened = Store.open(home=tmp_path / "home")
    yield opened
    opened.close()


def ids(records) -> list[str]:
    return [r.id for r in records]


def test_list_runs_filters_by_shown_status_agent_and_age(store: Store) -> None:
    store.register_executor("live", socket.gethostname(), os.getpid())
    add_run(store, "old-ok", status=RunStatus.SUCCEEDED, agent="fixer", created_at=1000.0)
    add_run(store, "new-ok", status=RunStatus.SUCCEEDED, agent="reviewer", created_at=3000.0)
    add_run(store, "failed", status=RunStatus.FAILED, agent="fixer", created_at=2000.0)
    add_run(store, "running", status=RunStatus.RUNNING, executor_id="live", created_at=2500.0)
    add_run(store, "orphan", status=RunStatus.RUNNING, executor_id="gone", created_at=2600.0)
    add_run(store, "queued-orphan", status=RunStatus.QUEUED, executor_id=None, created_at=2700.0)

    assert ids(store.list_runs(status="succeeded")) == ["new-ok", "old-ok"]
    assert ids(store.list_runs(status="running")) == ["running"]  # not the one whose process is gone
    assert ids(store.list_runs(status="interrupted")) == ["queued-orphan", "orphan"]
    assert ids(store.list_runs(status="queued")) == []
    assert ids(store.list_runs(agent="fixer")) == ["failed", "old-ok"]
    assert ids(store.list_runs(since=2000.0, agent="fixer")) == ["failed"]
    assert ids(store.list_runs(before=2000.0)) == ["old-ok"]
    assert ids(store.list_runs(limit=2)) == ["new-ok", "queued-orphan"]
    assert len(store.list_runs(limit=None)) == 6
    with pytest.raises(UsageError, match="unknown status 'done'") as err:
        store.list_runs(status="done")
    assert err.value.hint is not None and "interrupted" in err.value.hint


def test_remove_runs_deletes_rows_and_journals_and_clears_links(store: Store) -> None:
    add_run(store, "top", status=RunStatus.SUCCEEDED)
    add_run(store, "sub", status=RunStatus.SUCCEEDED, parent_id="top")
    add_run(store, "subsub", status=RunStatus.SUCCEEDED, parent_id="sub")
    add_run(store, "next", status=RunStatus.SUCCEEDED, continues_id="top")
    add_run(store, "other", status=RunStatus.SUCCEEDED)
    for run_id in ("top", "sub", "other"):
        for event in finished_run_events():
            store.journal.append(run_id, event)
    store.journal.flush()

    assert ids(store.run_trees(["top"])) == ["top", "sub", "subsub"]
    assert ids(store.followers(["top", "sub"])) == ["next"]
    with pytest.raises(UsageError, match="run sub has sub-run subsub"):
        store.remove_runs(["top", "sub"])
    assert len(store.events("top")) == 6  # nothing was removed

    assert store.remove_runs(["top", "sub", "subsub"]) == 12
    assert sorted(ids(store.list_runs())) == ["next", "other"]
    assert store.events("top") == [] and len(store.events("other")) == 6
    assert store.get_run("next").continues_id is None


def empty_database(request: pytest.FixtureRequest, database: str, name: str) -> str:
    """A database without any table: a new SQLite file in ``name``, or a new PostgreSQL database."""
    if database.startswith("sqlite"):
        home = Path(request.getfixturevalue("tmp_path")) / name
        home.mkdir()
        return f"sqlite:///{home / 'corral.db'}"
    return request.getfixturevalue("postgres").database()


def test_a_store_at_revision_0001_is_migrated_on_open(request: pytest.FixtureRequest, database: str) -> None:
    url = empty_database(request, database, "old-home")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT version_num FROM corral_alembic_version")).one() == ("0001",)
        conn.execute(
            text(
                "INSERT INTO corral_runs (id, parent_id, root_id, agent, spec, spec_hash, task, repo, run_dir, status,"
                " created_at, turns, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
                " reasoning_tokens, cost_usd) VALUES ('old', NULL, 'old', 'fixer', '{}', 'h', 'an old task', '/r',"
                " '/d', 'succeeded', 1.0, 2, 10, 5, 0, 0, 0, 0.5)"
            )
        )
    engine.dispose()

    store = Store(url)
    try:
        record = store.get_run("old")
        assert (record.continues_id, record.usage.unpriced_calls, record.usage.cost_known) == (None, 0, True)
        assert (record.task, record.usage.cost_usd, record.turns) == ("an old task", 0.5, 2)
        assert store._schema_revision() == HEAD_REVISION
    finally:
        store.close()


@pytest.mark.slow
def test_opening_a_store_at_head_does_not_import_alembic(tmp_path: Path) -> None:
    Store.open(home=tmp_path).close()  # created and migrated
    probe = OPEN_STORE + "; print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_take_turns_to_create_it(
    request: pytest.FixtureRequest, database: str
) -> None:
    for attempt in range(5):
        url = empty_database(request, database, f"home-{attempt}")
        home = str(Path(url.removeprefix("sqlite:///")).parent) if url.startswith("sqlite") else "unused"
        env = {**os.environ, "CORRAL_DATABASE_URL": url}
        procs = [
            subprocess.Popen([sys.executable, "-c", OPEN_STORE, home], stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(3)
        ]
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0, 0], errors
