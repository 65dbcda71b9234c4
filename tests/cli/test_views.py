"""The CLI's views read typed events and print untrusted text as text, never as rich markup."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from corral.cli.views import LiveRunView, print_show, runs_table, trace_data, trace_tree
from corral.events import (
    ModelRequested,
    ModelResponded,
    ModelRetried,
    RunFinished,
    RunStarted,
    ToolCalled,
    ToolReturned,
)
from corral.store import RunStatus, Store

MARKUP = "[red]not markup[/red] [/] [link=http://x]y[/link]"


def console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)


def output(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


def turn_events() -> list:
    return [
        RunStarted(key="run.started", agent="fixer", task=MARKUP, model="m", engine="native", spec_hash="h", repo="/r"),
        ModelRequested(key="model:0:request", call=0, model="m", message_count=1, new_messages=[], tools=["execute"]),
        ModelResponded(
            key="model:0:response",
            call=0,
            model="m",
            parts=[{"part_kind": "text", "content": MARKUP}, {"part_kind": "tool-call", "tool_name": "execute"}],
            input_tokens=100,
            output_tokens=7,
            cost_usd=0.25,
            duration_ms=12.0,
        ),
        ToolCalled(key="tool:0:call", call_id="c0", tool="execute", args={"command": MARKUP}),
        ToolReturned(key="tool:0:result", call_id="c0", tool="execute", ok=False, text="", error=MARKUP, duration_ms=3),
        RunFinished(key="run.finished", status="failed", error=MARKUP),
    ]


def store_with_a_run(home: Path) -> Store:
    store = Store.open(home=home)
    store.create_run(
        id="r1",
        parent_id=None,
        root_id="r1",
        agent="fixer",
        spec={"model": "m"},
        spec_hash="h",
        task=MARKUP,
        repo="/r",
        run_dir="/d",
    )
    store.update_run(
        "r1", status=RunStatus.FAILED, error=MARKUP, result={"text": MARKUP}, started_at=1.0, finished_at=2.0
    )
    for event in turn_events():
        store.journal.append("r1", event)
    return store


def test_show_runs_and_trace_print_untrusted_text_literally(home: Path) -> None:
    store = store_with_a_run(home)
    record = store.get_run("r1")
    shown, listed, traced = console(), console(), console()
    print_show(shown, record)
    listed.print(runs_table([record]))
    traced.print(trace_tree(record, store.events("r1")))
    lines = output(shown).splitlines()
    assert any(line.startswith("task") and MARKUP in line for line in lines)
    assert any(line.startswith("error") and MARKUP in line for line in lines)
    assert any(f"│ {MARKUP}" in line for line in lines)  # the result panel
    assert MARKUP in output(listed)
    assert f"✗ {MARKUP}" in output(traced)  # the failed tool call's error
    store.close()


def test_trace_data_pairs_model_and_tool_calls_from_typed_events(home: Path) -> None:
    store = store_with_a_run(home)
    events = store.events("r1")
    data = trace_data(store.get_run("r1"), events)
    (call,) = data["model_calls"]
    assert call == {
        "call": 0,
        "model": "m",
        "requested_at": events[1].ts,
        "seq": 2,
        "duration_ms": 12.0,
        "attempts": 1,
        "input_tokens": 100,
        "output_tokens": 7,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.25,
        "finish_reason": None,
        "tool_calls": ["execute"],
    }
    assert data["tool_calls"] == [
        {
            "call_id": "c0",
            "tool": "execute",
            "args": {"command": MARKUP},
            "duration_ms": 3,
            "ok": False,
            "error": MARKUP,
            "spilled_to": None,
        }
    ]
    assert [set(e) for e in data["events"]] == [{"run_id", "seq", "key", "type", "ts", "duration_ms", "data"}] * 6
    assert data["events"][4]["data"]["error"] == MARKUP
    assert data["run"]["interrupted"] is False and data["run"]["status"] == "failed"
    store.close()


def test_the_live_view_follows_typed_events() -> None:
    c = console()
    view = LiveRunView(console=c, title=MARKUP)
    with view:
        for event in turn_events():
            view.on_event("r1", event)
    assert (view.turns, view.input_tokens, view.output_tokens, view.cost_usd) == (1, 100, 7, 0.25)
    assert view.status == "failed"
    assert [line.icon for line in view.lines] == ["◆", "→"]
    assert view.lines[1].detail.startswith("✗") and view.lines[1].style == "red"
    assert f"turn 1: {MARKUP}" in output(c)


def test_trace_shows_what_went_wrong_in_full(home: Path) -> None:
    store = store_with_a_run(home)
    reason = "HTTP 503: ModelHTTPError: upstream boom after a long preamble " + "x" * 80 + " (the end matters)"
    for event in [
        ModelRetried(key="model:0:retry:1", call=0, attempt=1, error=reason, status_code=503, wait_s=0.1),
        ToolCalled(key="tool:1:call", call_id="c1", tool="write_file", args={"path": "café.txt"}),
        ToolReturned(
            key="tool:1:result",
            call_id="c1",
            tool="write_file",
            ok=False,
            text="path escapes the workspace: ../outside",
            error="PathEscapeError",
            duration_ms=1,
        ),
    ]:
        store.journal.append("r1", event)
    record = store.get_run("r1")
    traced = Console(file=io.StringIO(), width=1000, force_terminal=False, color_system=None)
    traced.print(trace_tree(record, store.events("r1")))
    text = output(traced)
    assert "(the end matters)" in text  # retry reasons are not cut to 60 characters
    assert "✗ PathEscapeError: path escapes the workspace: ../outside" in text
    assert 'path="café.txt"' in text  # unicode stays unicode, not \\u00e9

    live = LiveRunView(console=Console(file=io.StringIO(), width=1000, color_system=None), title="t")
    live.on_event("r1", ModelRetried(key="k", call=0, attempt=1, error=reason, status_code=503, wait_s=0.1))
    assert "(the end matters)" in output(live.console)
    store.close()
