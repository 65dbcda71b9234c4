"""The journal: typed, redacted, deduplicated by key, gap-free per run, batched."""

from __future__ import annotations

import threading
from pathlib import Path

from corral.events import ToolReturned, parse_event
from corral.secrets.redact import Redactor
from corral.store import Store


def make_store(tmp_path: Path) -> Store:
    store = Store.open(home=tmp_path / "home")
    for run_id in ("r1", "r2"):
        store.create_run(
            id=run_id,
            parent_id=None,
            root_id=run_id,
            agent="a",
            spec={},
            spec_hash="h",
            task="t",
            repo="/r",
            run_dir="/d",
        )
    return store


def result(key: str, text: str = "ok") -> ToolReturned:
    return ToolReturned(key=key, call_id="c", tool="execute", ok=True, text=text, duration_ms=1.5)


def test_events_round_trip_as_typed_models(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.journal.append("r1", result("tool:0:result", "hello"))
    (record,) = store.events("r1")
    event = parse_event(record.type, record.key, record.ts, record.duration_ms, record.data)
    assert isinstance(event, ToolReturned)
    assert event.text == "hello"
    assert event.duration_ms == 1.5


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
    assert record.data["text"] == "token=[secret:TOKEN] end"
    db = (tmp_path / "home" / "corral.db").read_bytes()
    assert b"s3cr3t-value-123" not in db


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
