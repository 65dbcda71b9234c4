"""The CLI's views read typed events and print untrusted text as text, never as rich markup."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

from corral.cli.views import (
    RUN_COLUMNS,
    TASK_MIN_WIDTH,
    LiveRunView,
    abbreviate_task,
    fmt_cost,
    fmt_when,
    json_text,
    print_runs,
    print_show,
    print_trace,
    rejections,
    runs_lines,
    tool_mark,
    trace_data,
)
from corral.events import (
    EgressAttempted,
    ModelRequested,
    ModelRetried,
    ToolCalled,
    ToolReturned,
    Usage,
)
from corral.store import RunRecord, RunStatus, Store
from tests.store.runs import finished_run_events

MARKUP = "[red]not markup[/red] [/] [link=http://x]y[/link]"


def console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)


def output(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


def turn_events() -> list:
    return finished_run_events(task=MARKUP, answer=MARKUP, command=MARKUP, tool_error=MARKUP, cost_usd=0.25)


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
    print_runs(listed, [record])
    print_trace(traced, record, store.events("r1"))
    lines = output(shown).splitlines()
    assert any(line.startswith("task") and MARKUP in line for line in lines)
    assert any(line.startswith("error") and MARKUP in line for line in lines)
    assert f"result:\n{MARKUP}\n" in output(shown)  # plain: a title line, then the text
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
            "exit_code": None,
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
    assert [line.icon for line in view.lines] == ["◆", "→", "←"]  # printed lines: the outcome gets its own
    assert view.lines[1].detail.startswith("✗") and view.lines[1].style == "red"
    assert f"turn 1: {MARKUP}" in output(c)
    assert f"← execute  ✗ {MARKUP} 3 ms" in output(c)


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
    print_trace(traced, record, store.events("r1"))
    text = output(traced)
    assert "(the end matters)" in text  # retry reasons are not cut to 60 characters
    assert "✗ PathEscapeError: path escapes the workspace: ../outside" in text
    assert 'path="café.txt"' in text  # unicode stays unicode, not \\u00e9

    live = LiveRunView(console=Console(file=io.StringIO(), width=1000, color_system=None), title="t")
    live.on_event("r1", ModelRetried(key="k", call=0, attempt=1, error=reason, status_code=503, wait_s=0.1))
    assert "(the end matters)" in output(live.console)
    store.close()


def returned(tool: str = "execute", *, ok: bool = True, exit_code: int | None = None, **fields) -> ToolReturned:
    return ToolReturned(
        key="k", call_id="c", tool=tool, ok=ok, text=fields.pop("text", ""), exit_code=exit_code, **fields
    )


def test_tool_marks_say_how_a_command_exited() -> None:
    assert tool_mark(returned(exit_code=0, duration_ms=76)) == ("✓ exit 0 76 ms", True)
    assert tool_mark(returned(exit_code=2, duration_ms=76)) == ("✗ exit 2 76 ms", False)
    assert tool_mark(returned(exit_code=None, duration_ms=76)) == ("✗ exit none (killed) 76 ms", False)
    assert tool_mark(returned("read_file", duration_ms=5)) == ("✓ 5 ms", True)
    failed = returned("read_file", ok=False, error="ToolError", text="no such file\x1b[2J", duration_ms=5)
    assert tool_mark(failed) == ("✗ ToolError: no such file␛[2J 5 ms", False)


def request_with(*parts: dict) -> ModelRequested:
    messages = [{"kind": "request", "parts": list(parts)}]
    return ModelRequested(key="model:1:request", call=1, model="m", message_count=3, new_messages=messages, tools=[])


def test_rejected_output_and_tool_calls_are_found_in_every_part_kind() -> None:
    request = request_with(
        {
            "part_kind": "tool-return",
            "tool_name": "final_result",
            "outcome": "retried",
            "content": "summary: 5\x1b]0;t\x07",
        },
        {"part_kind": "tool-return", "tool_name": "execute", "outcome": "success", "content": "exit code: 0"},
        {
            "part_kind": "retry-prompt",
            "tool_name": "execute",
            "content": [{"loc": ["command"], "msg": "Field required"}],
        },
        {"part_kind": "retry-feedback", "content": "no output", "retry": {"cause": "no_output"}},
    )
    assert rejections(request) == [
        "output rejected: summary: 5␛]0;t␇",
        "execute call rejected: command: Field required",
        "output rejected: no output",
    ]


def test_trace_and_live_view_show_a_rejected_output_under_its_turn(home: Path) -> None:
    store = store_with_a_run(home)
    store.journal.append(
        "r1",
        request_with(
            {"part_kind": "tool-return", "tool_name": "final_result_x", "outcome": "retried", "content": "bad"}
        ),
    )
    traced = console()
    print_trace(traced, store.get_run("r1"), store.events("r1"))
    assert "\n    #7 output rejected: bad\n" in output(traced)  # indented under model call 1
    live = LiveRunView(console=console(), title="t")
    live.on_event("r1", request_with({"part_kind": "retry-prompt", "tool_name": None, "content": "bad"}))
    assert "! output rejected: bad" in output(live.console)
    store.close()


def record(task: str = "fix it", **fields) -> RunRecord:
    values = {
        "id": "agrecfhhg5yqn6nnha",
        "parent_id": None,
        "root_id": "agrecfhhg5yqn6nnha",
        "agent": "fixer",
        "spec": {"model": "m"},
        "spec_hash": "h",
        "task": task,
        "repo": "/r",
        "run_dir": "/d",
        "status": RunStatus.SUCCEEDED,
        "created_at": time.time(),
        "started_at": 1.0,
        "finished_at": 2.0,
        "executor_id": None,
        "result": None,
        "error": None,
        "error_type": None,
        "turns": 3,
        "usage": Usage(input_tokens=1000, output_tokens=20, cost_usd=0.01),
    }
    return RunRecord.model_validate({**values, **fields})


def test_runs_fit_the_terminal_without_cutting_ids_or_squeezing_the_task() -> None:
    long_task = "make the failing test in tests/test_calc.py pass without touching the tests themselves\nline two"
    records = [record(long_task), record("short", id="agreczzzzzzzzzzzzz")]
    narrow = [line.plain for line in runs_lines(records, 80)]
    assert all(len(line) <= 80 for line in narrow)
    assert narrow[0].split() == ["run", "started", "agent", "status", "cost", "task"]
    assert narrow[1].startswith("agrecfhhg5yqn6nnha  ") and narrow[1].endswith("…")
    task_cell = narrow[1][narrow[0].index("task") :]
    assert len(task_cell) >= TASK_MIN_WIDTH and task_cell.startswith("make the failing test")
    # A long agent name drops the agent column rather than squeezing the task.
    named = [line.plain for line in runs_lines([record(long_task, agent="a-very-long-agent-name")], 80)]
    assert "agent" not in named[0].split() and len(named[1][named[0].index("task") :]) >= TASK_MIN_WIDTH
    wide = [line.plain for line in runs_lines(records, 120)]
    assert wide[0].split() == list(RUN_COLUMNS)
    whole = [line.plain for line in runs_lines(records)]
    assert whole[1].endswith("themselves") and "line two" not in whole[1]  # the first line of the task, whole


def test_show_abbreviates_a_long_task_and_says_where_the_rest_is() -> None:
    assert abbreviate_task("short\ntask", "r1") == "short\ntask"
    task = "\n".join(f"line {n}" for n in range(1, 11))
    shown = abbreviate_task(task, "r1")
    assert shown.startswith("line 1\nline 2") and "line 6" not in shown
    assert shown.endswith(
        f"… ({len(task) - len(shown.split('…')[0])} more characters; `corral show r1 --json` has it all)"
    )
    assert len(abbreviate_task("x" * 10_000, "r1")) < 600


def test_start_times_are_compact_local_times() -> None:
    now = datetime(2025, 12, 4, 18, 0).timestamp()
    assert fmt_when(datetime(2025, 12, 4, 13, 5).timestamp(), now) == "13:05"
    assert fmt_when(datetime(2025, 3, 1, 9, 7).timestamp(), now) == "03-01 09:07"
    assert fmt_when(datetime(2024, 12, 4, 13, 5).timestamp(), now) == "2024-12-04"


def test_json_output_keeps_unicode_but_no_terminal_control() -> None:
    text = json_text({"task": "café \x1b[2J \x9b31m \u202e"})
    assert "café" in text and "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert json.loads(text) == {"task": "café \x1b[2J \x9b31m \u202e"}


def test_cost_is_unknown_when_a_call_had_no_price() -> None:
    unknown = record(usage=Usage(input_tokens=10, unpriced_calls=1))
    listed, shown = console(), console()
    print_runs(listed, [unknown])
    print_show(shown, unknown)
    assert "unknown" in output(listed).splitlines()[1]
    assert "cost     unknown" in output(shown)
    assert fmt_cost(Usage(cost_usd=0.5, unpriced_calls=1)) == "≥ $0.5000 (some calls unpriced)"
    assert fmt_cost(Usage(cost_usd=0.5, unpriced_calls=1), short=True) == "≥ $0.5000"


def test_patch_lines_stay_whole_and_file_names_are_made_visible() -> None:
    patch = 'diff --git "a/evil\\033]0;x\\007.txt" b/x\n+' + "y" * 300 + "\n-\x1b[2Jold\n"
    shown = console()
    print_show(shown, record(result={"patch": patch, "files_changed": 1}))
    text = output(shown)
    assert "\n+" + "y" * 300 + "\n" in text and "-␛[2Jold" in text and "\x1b" not in text


def test_the_live_view_names_denied_hosts_safely() -> None:
    live = LiveRunView(console=console(), title="t")
    for allowed in (True, False):
        live.on_event(
            "r1",
            EgressAttempted(
                key=f"egress:{allowed}",
                host="evil\x1b[2J.example",
                port=443,
                allowed=allowed,
                reason="not in the allowlist",
            ),
        )
    assert output(live.console) == "! network denied: evil␛[2J.example:443 (not in the allowlist)\n"
