"""The journal's hash chain: each event carries the hash of the event before it in its run.

An event's hash is SHA-256 over its canonical JSON: the previous event's hash, its run, key, type,
time, duration and data. The run's row keeps the chain's head (the last event's sequence number and
hash), written in the same transaction as the events. So a journal read back proves itself:

- an event whose stored fields were **changed** no longer matches its hash (or, if its hash was
  rewritten too, the next event's link no longer matches it);
- a **deleted** event leaves a gap in the sequence, or a link to a hash no event has, or — at the
  end — a journal shorter than its head;
- **reordered** events link to hashes that exist, but at other places in the sequence.

What it does not prove: that nobody with write access to the database rebuilt a whole run's chain
and its head. Against that, keep the head ``corral verify`` prints somewhere the database's writers
cannot reach (a ticket, a commit, a log shipped elsewhere): any later rewrite changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = ""
"""The ``prev_hash`` of a run's first event."""


def event_hash(
    prev_hash: str, run_id: str, key: str, type_: str, ts: float, duration_ms: float | None, data: Any
) -> str:
    """The hash an event is stored with (hex SHA-256 of its canonical JSON). Times are hashed as the
    floats the database gives back, so a whole number of seconds hashes the same before and after."""
    canonical = json.dumps(
        [prev_hash, run_id, key, type_, float(ts), None if duration_ms is None else float(duration_ms), data],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=True,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainedRow:
    """One stored event as the verifier reads it: the raw columns, not the parsed event."""

    seq: int
    key: str
    type: str
    ts: float
    duration_ms: float | None
    data: Any
    prev_hash: str | None
    hash: str | None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the chain shows was done to the journal after it was written."""

    kind: str
    """``changed`` (an event no longer matches its hash), ``deleted``, ``reordered``, ``unlinked`` (an event
    does not follow the one before it: that one rewritten with a new hash, or events between them deleted
    and the rest renumbered) or ``unchained`` (events without a hash)."""
    seq: int | None
    """The event the problem was found at (None: the journal as a whole)."""
    message: str


@dataclass(slots=True)
class Verification:
    """What ``verify`` found for one run."""

    run_id: str
    events: int
    head_seq: int
    head_hash: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "intact": self.intact,
            "events": self.events,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message} for p in self.problems],
        }


def verify(run_id: str, rows: Iterable[ChainedRow], head_seq: int, head_hash: str | None) -> Verification:
    """Check a run's stored events (in ``seq`` order) against their chain and the run's recorded head."""
    ordered = list(rows)
    found = Verification(run_id, len(ordered), head_seq, head_hash or GENESIS)
    problems = found.problems
    position_of = {row.hash: row.seq for row in ordered if row.hash}
    expected_seq, expected_prev = 1, GENESIS
    unchained = [row.seq for row in ordered if row.hash is None]
    if unchained:
        problems.append(
            Problem(
                "unchained",
                unchained[0],
                f"{len(unchained)} event(s) carry no hash (from seq {unchained[0]}): "
                "written before the journal was chained, or their hashes were removed",
            )
        )
    for row in ordered:
        if row.hash is None:
            expected_seq, expected_prev = row.seq + 1, GENESIS
            continue
        gap = row.seq > expected_seq
        if gap:
            missing = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}-{row.seq - 1}"
            problems.append(Problem("deleted", expected_seq, f"event(s) {missing} are missing: deleted"))
        prev = row.prev_hash or GENESIS
        if row.hash != event_hash(prev, run_id, row.key, row.type, row.ts, row.duration_ms, row.data):
            problems.append(
                Problem("changed", row.seq, f"event {row.seq} ({row.type}) was changed: it does not match its hash")
            )
        if prev != expected_prev and not gap:
            linked = position_of.get(prev)
            if linked is not None:
                problems.append(
                    Problem(
                        "reordered",
                        row.seq,
                        f"event {row.seq} ({row.type}) is out of order: it was written right after event {linked}",
                    )
                )
            elif row.seq == 1 or expected_prev == GENESIS:
                problems.append(
                    Problem("deleted", row.seq, f"event {row.seq} was not the first: the events before it were deleted")
                )
            else:
                problems.append(
                    Problem(
                        "unlinked",
                        row.seq,
                        f"event {row.seq} ({row.type}) does not follow event {row.seq - 1}: that one was "
                        f"rewritten, or an event between them was deleted",
                    )
                )
        expected_seq, expected_prev = row.seq + 1, row.hash
    last_seq = ordered[-1].seq if ordered else 0
    if head_seq > last_seq:
        problems.append(
            Problem("deleted", last_seq + 1, f"the journal ends at event {last_seq}, its head says {head_seq}: deleted")
        )
    elif head_seq and head_seq == last_seq and head_hash and ordered[-1].hash != head_hash:
        problems.append(
            Problem("changed", last_seq, f"the last event ({last_seq}) is not the one the run's head recorded")
        )
    elif head_seq < last_seq and any(row.hash for row in ordered):
        problems.append(Problem("added", head_seq + 1, f"events after {head_seq}, the run's recorded head, were added"))
    return found
