"""docs/events.md documents every line ``corral run --json`` can write: each event type, each field."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from corral.cli.stream import STREAM_VERSION, event_line, result_line
from corral.events import Event, RunStarted, Usage
from corral.store import EventRecord, RunRecord, RunStatus

DOC = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
EVENT_TYPES = typing.get_args(typing.get_args(Event)[0])
COMMON = {"key", "ts", "duration_ms", "type"}


def table_row(first_cell: str) -> str:
    """The line of a markdown table whose first cell is `first_cell` (in backticks)."""
    rows = re.findall(rf"^\| `{re.escape(first_cell)}` \|.*$", DOC, flags=re.MULTILINE)
    assert rows, f"docs/events.md has no table row for `{first_cell}`"
    return rows[0]


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
def test_every_event_type_and_its_fields_are_documented(event_type: type) -> None:
    name = event_type.model_fields["type"].default
    row = table_row(name)
    for field in set(event_type.model_fields) - COMMON:
        assert f"`{field}`" in row, f"docs/events.md: `{name}` lacks `{field}`"


def test_every_field_of_event_and_result_lines_is_documented() -> None:
    event = RunStarted(key="run.started", agent="a", task="t", model="m:x", engine="native", spec_hash="h", repo="/r")
    record = RunRecord(
        id="r1",
        parent_id=None,
        root_id="r1",
        agent="a",
        spec={},
        spec_hash="h",
        task="t",
        repo="/r",
        run_dir="/d",
        status=RunStatus.SUCCEEDED,
        created_at=0.0,
        started_at=0.0,
        finished_at=1.0,
        executor_id=None,
        result={"text": "done", "patch": ""},
        error=None,
        error_type=None,
        turns=1,
        usage=Usage(),
    )
    lines = [event_line(EventRecord(run_id="r1", seq=1, event=event)), result_line(record, exit_code=0)]
    for line in lines:
        assert line["v"] == STREAM_VERSION
        for field in line:
            table_row(field)
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC, flags=re.DOTALL)]
    assert [sorted(example) for example in examples] == [sorted(line) for line in lines]
    for field in Usage.model_fields:
        assert f"`{field}`" in table_row("usage")
