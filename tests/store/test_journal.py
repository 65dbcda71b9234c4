"""The journal: typed, redacted, deduplicated by key, gap-free per run, batched, never silently lossy."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from corral.errors import JournalClosedError, JournalError, JournalTimeoutError, RunNotFoundError
from corral.events import ToolReturned
from corral.secrets.redact import Redactor
from corral.store import Store
from corral.store.journal import Journal
from corral.store.models import EventRow
from tests.store.runs import add_run

pytestmark = pytest.mark.usefixtures("database")  # every test on SQLite and on PostgreSQL

#: How each database says that a table is gone.
NO_TABLE = {"sqlite": "no such table: corral_events", "postgresql": 'relation "corral_events" does not exist'}


def make_store(tmp_path: Path) -> Store:
    store = Store.open(home=tmp_path / "home")
    for run_id in ("r1", "r2"):
        add_run(store, run_id)
    return store


def result(key: str, text: str = "ok") -> ToolReturned:
    return ToolReturned(key=key, call_id="c", tool="execute", ok=True, text=text, duration_ms=1.5)


def test_events_round_trip_as_typed_models(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.journal.append("r1", result("tool:0:result", "hello"))
    (record,) = store.events("r1")
    assert (record.run_id, record.seq, record.key, record.type) == ("r1", 1, "tool:0:result", "tool.result")
    assert record.event == result("tool:0:result", "hello").model_copy(update={"ts": record.ts})
    match record.event:
        case ToolReturned(text=text_, duration_ms=duration_ms):
            assert (text_, duration_ms) == ("hello", 1.5)
        case other:
            pytest.fail(f"not a ToolReturned: {other!r}")
    assert record.to_json() == {
        "run_id": "r1",
        "seq": 1,
        "key": "tool:0:result",
        "type": "tool.result",
        "ts": record.ts,
        "duration_ms": 1.5,
        "data": {
            "call_id": "c",
            "tool": "execute",
            "ok": True,
            "text": "hello",
            "error": None,
            "spilled_to": None,
            "exit_code": None,
        },
    }


def test_same_key_is_written_once_and_sequence_has_no_gap(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for key in ["a", "b", "a", "c", "b", "d"]:
        store.journal.append("r1", result(key))
    events = store.events("r1")
    assert [e.key for e in events] == ["a", "b", "c", "d"]
    assert [e.seq for e in events] == [1, 2, 3, 4]


def test_sequences_are_per_run_and_survive_reopening(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.journal.append("r1", result("x"))
    store.journal.append("r2", result("x"))
    store.close()
    store = Store.open(home=tmp_path / "home")
    store.journal.append("r1", result("x"))  # a replayed event: already there
    store.journal.append("r1", result("y"))
    assert [(e.key, e.seq) for e in store.events("r1")] == [("x", 1), ("y", 2)]
    assert [(e.key, e.seq) for e in store.events("r2")] == [("x", 1)]


def test_two_writers_on_one_run_keep_the_sequence_gap_free(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    second = Store.open(home=tmp_path / "home")
    for i in range(20):
        (first if i % 2 else second).journal.append("r1", result(f"k{i}"))
        if i % 5 == 0:
            first.journal.flush()
            second.journal.flush()
    first.journal.flush()
    second.journal.flush()
    seqs = [e.seq for e in first.events("r1")]
    assert seqs == list(range(1, 21))


def test_redaction_happens_before_anything_is_queued(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    redactor = Redactor()
    redactor.add("TOKEN", "s3cr3t-value-123")
    store.journal.set_redactor(redactor.data)
    store.journal.append("r1", result("k", "token=s3cr3t-value-123 end"))
    (record,) = store.events("r1")
    assert isinstance(record.event, ToolReturned)
    assert record.event.text == "token=[secret:TOKEN] end"
    store.journal.flush()
    if store.dialect == "sqlite":  # the whole file, its write-ahead log included
        store.close()
        home = tmp_path / "home"
        stored = b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith("corral.db"))
    else:
        with store.engine.connect() as conn:
            stored = "".join(conn.execute(text("SELECT data::text FROM corral_events")).scalars()).encode()
    assert b"s3cr3t" not in stored
    assert b"[secret:TOKEN]" in stored  # the check read the event


def test_concurrent_appends_are_batched_into_few_transactions(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    commits = 0

    from sqlalchemy import event

    def count(*_: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.engine, "commit", count)

    def writer(n: int) -> None:
        for i in range(250):
            store.journal.append("r1", result(f"{n}:{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.journal.flush()
    assert len(store.events("r1")) == 1000
    assert commits < 100  # 1000 events, far fewer commits: group commit


def test_listeners_see_committed_events_with_their_sequence(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    seen: list[int] = []
    store.journal.subscribe(lambda record: seen.append(record.seq))
    store.journal.append("r1", result("a"))
    store.journal.append("r1", result("b"))
    store.journal.flush()
    assert seen == [1, 2]


# -- failures are never silent ----------------------------------------------------------------------

QUICK_RETRIES = (0.01, 0.02, 0.04)


def sql(store: Store, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement))


@pytest.mark.slow  # waits out the writer's retries (about 4 s)
def test_a_dropped_table_makes_flush_raise_journal_error_with_the_cause(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    journal = store.journal  # with its real retry schedule: a few seconds
    journal.append("r1", result("before"))
    journal.flush()
    sql(store, "DROP TABLE corral_events")
    journal.append("r1", result("lost-1"))
    journal.append("r1", result("lost-2"))

    with pytest.raises(JournalError) as raised:
        journal.flush(timeout_s=10)
    assert raised.value.events == 2
    assert isinstance(raised.value.cause, DBAPIError)  # the driver's error, kept
    assert NO_TABLE[store.dialect] in raised.value.message
    assert journal.broken
    # Broken until the cause is fixed: later appends are refused, loudly.
    with pytest.raises(JournalError) as refused:
        journal.append("r1", result("refused"))
    assert refused.value.events == 3

    # Fixed: the queued events (not the refused one) are committed, in order, by the same writer.
    EventRow.__table__.create(store.engine)
    journal.flush(timeout_s=10)
    assert not journal.broken
    assert [(e.key, e.seq) for e in store.events("r1")] == [("lost-1", 1), ("lost-2", 2)]
    journal.append("r1", result("after"))
    journal.flush(timeout_s=10)
    assert [e.key for e in store.events("r1")] == ["lost-1", "lost-2", "after"]
    store.close()


def test_a_transient_failure_is_retried_and_nothing_is_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(tmp_path)
    store.journal.append("r1", result("k0"))
    store.journal.flush()
    sql(store, "ALTER TABLE corral_events RENAME TO corral_events_away")
    back = threading.Timer(0.3, sql, (store, "ALTER TABLE corral_events_away RENAME TO corral_events"))
    with caplog.at_level(logging.WARNING, logger="corral.journal"):
        back.start()
        try:
            for i in range(1, 6):
                store.journal.append("r1", result(f"k{i}"))
            store.journal.flush()
        finally:
            back.join()
    assert any("retry 1" in r.getMessage() for r in caplog.records), "the write never failed: nothing was tested"
    events = store.events("r1")
    assert [(e.key, e.seq) for e in events] == [(f"k{i}", i + 1) for i in range(6)]
    assert not store.journal.broken
    store.close()


@contextmanager
def write_lock(store: Store) -> Iterator[None]:
    """Hold a lock that blocks the journal's writes from another connection, as another process would."""
    if store.dialect == "sqlite":
        other = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("COMMIT")
        finally:
            other.close()
        return
    with store.engine.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE corral_events IN ACCESS EXCLUSIVE MODE"))
        yield


def test_a_flush_that_times_out_raises_and_keeps_the_events_queued(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with write_lock(store):
        store.journal.append("r1", result("waiting"))
        started = time.monotonic()
        with pytest.raises(JournalTimeoutError) as raised:
            store.journal.flush(timeout_s=0.3)
        assert time.monotonic() - started < 5
        assert raised.value.events == 1
    store.journal.flush()
    assert [(e.key, e.seq) for e in store.events("r1")] == [("waiting", 1)]
    store.close()


def test_appending_to_a_closed_journal_raises(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.close()
    with pytest.raises(JournalClosedError) as raised:
        store.journal.append("r1", result("late"))
    assert (raised.value.run_id, raised.value.key, raised.value.events) == ("r1", "late", 1)


def test_closing_a_broken_journal_reports_what_was_not_committed(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    journal = Journal(store.engine, retry_delays_s=QUICK_RETRIES)
    sql(store, "DROP TABLE corral_events")
    journal.append("r1", result("lost"))
    started = time.monotonic()
    with pytest.raises(JournalError) as raised:
        journal.close(timeout_s=10)
    assert raised.value.events == 1 and NO_TABLE[store.dialect] in raised.value.message
    assert time.monotonic() - started < 5  # the writer stops: close() does not wait out its timeout
    with pytest.raises(JournalClosedError):
        journal.append("r1", result("later"))
    store.close()


def test_the_recorded_head_revision_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from corral.store.db import HEAD_REVISION, MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def deferred_run(store: Store, run_id: str) -> None:
    store.create_run(
        defer=True,
        id=run_id,
        parent_id=None,
        root_id=run_id,
        agent="a",
        spec={},
        spec_hash="h",
        task="t",
        repo="/r",
        run_dir="/d",
        executor_id=None,
    )


def test_a_deferred_run_row_commits_before_its_events_and_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    deferred_run(store, "light")
    store.journal.append("light", result("first"))  # the row is queued ahead of it: the foreign key holds
    store.update_run("light", defer=True, status="succeeded", turns=3)
    deferred_run(store, "light")  # a replayed insert leaves the row (and its update) as they are
    store.journal.append("light", result("second"))
    store.journal.flush()
    record = store.get_run("light")
    assert (record.status.value, record.turns) == ("succeeded", 3)
    assert [(e.key, e.seq) for e in store.events("light")] == [("first", 1), ("second", 2)]
    store.close()


@pytest.mark.slow  # the journal's real retry schedule: seconds
def test_a_deferred_row_write_that_fails_is_never_silent(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.journal.flush()
    sql(store, "DROP TABLE corral_events")  # the batch holding the row write and an event fails as a whole
    deferred_run(store, "light")
    store.journal.append("light", result("first"))
    with pytest.raises(JournalError) as raised:
        store.journal.flush(timeout_s=10)
    assert raised.value.events == 2
    with pytest.raises(RunNotFoundError):  # rolled back with the events: nothing half-written
        store.get_run("light")
    EventRow.__table__.create(store.engine)
    store.journal.flush(timeout_s=10)
    assert store.get_run("light").task == "t"
    assert [e.key for e in store.events("light")] == ["first"]
    store.close()
