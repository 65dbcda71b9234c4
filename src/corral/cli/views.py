"""What the CLI shows: the live view of a run, and the renderings behind runs, show and trace.

On a terminal the output is laid out for its width (rich tables, panels, trees). When stdout is
not a terminal (a pipe, a file) it is plain: no boxes or panels, nothing wrapped or cut to a width
(ids, task lines and patch lines stay whole), and no escape sequences at all. Every piece of text
corral did not write itself (tasks, agent names, answers, tool arguments and errors, file names,
hosts) goes through :func:`corral.cli.text.clean` or :func:`~corral.cli.text.safe`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.cells import cell_len
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from corral.cli.text import clean, safe
from corral.events import (
    ApprovalDecided,
    ApprovalRequested,
    BaseEvent,
    BudgetExceeded,
    ContextCompacted,
    EgressAttempted,
    ModelCalled,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    ModelRetried,
    PolicyDecided,
    ProgramLogged,
    RunFinished,
    RunResumed,
    RunStarted,
    SandboxCreated,
    SecretsDetected,
    TaskDispatched,
    TaskFinished,
    ToolCalled,
    ToolReturned,
    Usage,
    event_payload,
)
from corral.store import EventRecord, RunRecord

# -- formatting -------------------------------------------------------------------------------------


def fmt_cost(cost: Usage | float, *, short: bool = False) -> str:
    """Dollars, or ``unknown`` when a model call had no known price (never a misleading $0.0000).

    ``short`` leaves out the explanation of a lower bound (``≥ $0.0012``), for table cells.
    """
    if isinstance(cost, Usage):
        if not cost.cost_known:
            if cost.cost_usd == 0:
                return "unknown"
            return f"≥ {fmt_cost(cost.cost_usd)}" + ("" if short else " (some calls unpriced)")
        cost = cost.cost_usd
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def fmt_tokens(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def fmt_when(ts: float, now: float | None = None) -> str:
    """A compact local time: ``13:05`` today, ``12-04 13:05`` this year, ``2024-12-04`` before."""
    when, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(time.time() if now is None else now)
    if when.date() == today.date():
        return when.strftime("%H:%M")
    return when.strftime("%m-%d %H:%M" if when.year == today.year else "%Y-%m-%d")


def _elapsed(record: RunRecord) -> str:
    return f"{record.elapsed_s:.1f}s" if record.elapsed_s is not None else "-"


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, safe to print, cut with an ellipsis past ``limit`` characters."""
    flat = clean(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _short_args(args: Any, limit: int = 70) -> str:
    """Tool arguments on one line, safe to print (unicode stays unicode)."""
    if isinstance(args, dict):
        text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        text = str(args)
    text = clean(text.replace("\n", "⏎"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as JSON: unicode readable, and no character a terminal acts on (json escapes C0 itself)."""
    dumped = json.dumps(data, indent=indent, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", dumped)


def plain(console: Console) -> bool:
    """Whether to print plain output: stdout is not a terminal (see the module docstring)."""
    return not console.is_terminal


def print_lines(console: Console, lines: Iterable[Text]) -> None:
    """Print whole lines: never wrapped or cut by rich (a terminal may still wrap them visually)."""
    for line in lines:
        console.print(line, soft_wrap=True)


# -- what happened in a journal event, in words -------------------------------------------------------

#: pydantic-ai names the tools through which a model returns typed output ``final_result…``.
OUTPUT_TOOL_PREFIX = "final_result"
#: The tool that runs commands; its result carries the command's exit code.
COMMAND_TOOL = "execute"


def tool_mark(result: ToolReturned) -> tuple[str, bool]:
    """How a tool call ended, as ``(text, ok)``: ``✓ exit 0 76 ms``, ``✗ exit 2 …``, ``✗ Error: why …``.

    A command that exits non-zero is not a failed tool call (the model reads its output), but it is
    what a person looks for first, so it is marked ✗ too.
    """
    duration = fmt_ms(result.duration_ms)
    if not result.ok:
        why = f"{result.error or 'error'}: {_one_line(result.text)}" if result.text else (result.error or "error")
        return f"✗ {clean(why)} {duration}", False
    if result.exit_code is not None:
        ok = result.exit_code == 0
        return f"{'✓' if ok else '✗'} exit {result.exit_code} {duration}", ok
    if result.tool == COMMAND_TOOL:  # killed before it exited: a timeout, a memory or disk limit
        return f"✗ exit none (killed) {duration}", False
    return f"✓ {duration}", True


def rejections(request: ModelRequested) -> list[str]:
    """What the model is told was wrong with its last answer: typed output or a tool call rejected.

    pydantic-ai journals these in the next request's new messages: a ``tool-return`` part with
    outcome ``retried`` (a call to an output tool or another tool), a ``retry-feedback`` part (an
    answer no tool call carried), or, from older versions, a ``retry-prompt`` part.
    """
    found = []
    for message in request.new_messages:
        for part in message.get("parts") or ():
            kind = part.get("part_kind")
            if kind in ("retry-prompt", "retry-feedback") or (
                kind == "tool-return" and part.get("outcome") == "retried"
            ):
                found.append(_rejection(part))
    return found


def _rejection(part: dict[str, Any]) -> str:
    tool = part.get("tool_name")
    what = "output rejected" if tool is None or str(tool).startswith(OUTPUT_TOOL_PREFIX) else f"{tool} call rejected"
    content = part.get("content")
    if isinstance(content, list):  # validation errors: where, and what is wrong there
        content = "; ".join(
            f"{'.'.join(map(str, e.get('loc') or ())) or '(root)'}: {e.get('msg', e)}"
            if isinstance(e, dict)
            else str(e)
            for e in content
        )
    return _one_line(f"{what}: {content}", 500)


def _answer_summary(parts: list[dict[str, Any]]) -> str:
    """A model's answer on one line: its text, else whether it called tools or gave its typed output."""
    texts = [str(p.get("content", "")).strip() for p in parts if p.get("part_kind") == "text"]
    calls = [str(p.get("tool_name")) for p in parts if p.get("part_kind") == "tool-call"]
    typed = any(name.startswith(OUTPUT_TOOL_PREFIX) for name in calls)
    return _one_line(" ".join(t for t in texts if t), 90) or ("(output)" if typed else "(tool calls)")


def _seq(seq: int, style: str) -> Text:
    return Text(f"#{seq} ", style=style)


#: ``ModelResponded.price_source`` of a call whose model has no known price (``corral.models.pricing``).
UNPRICED = "unknown"


def call_usage(response: ModelResponded) -> Usage:
    """The cost of one model call, unpriced when no price was known for its model."""
    return Usage(cost_usd=response.cost_usd, unpriced_calls=int(response.price_source == UNPRICED))


def _model_label(seq: int, response: ModelResponded) -> Text:
    attempts = f" · {response.attempts} attempts" if response.attempts > 1 else ""
    return Text.assemble(
        (f"#{seq} model call {response.call + 1}", "magenta"),
        f"  {fmt_ms(response.duration_ms)} · {response.input_tokens} in / {response.output_tokens} out · "
        f"cost {fmt_cost(call_usage(response))}{attempts}",
    )


def _tool_label(seq: int, call: ToolCalled) -> Text:
    return Text.assemble(_seq(seq, "cyan"), safe(call.tool, "cyan"), f"({_short_args(call.args)})")


def _mark_text(result: ToolReturned) -> Text:
    mark, ok = tool_mark(result)
    return Text(mark, style="green" if ok else "red")


def _event_label(record: EventRecord) -> Text:
    """Any other event: its type and its short fields (errors whole: their end says what went wrong)."""
    event = record.event
    fields = event_payload(event)
    summary = ", ".join(f"{k}={v}" for k, v in fields.items() if isinstance(v, str | int | float) and k != "task")
    loud = isinstance(event, ModelRetried | ModelFailed | BudgetExceeded)
    limit = 500 if isinstance(event, ModelRetried | ModelFailed) else 100
    return Text.assemble(
        (f"#{record.seq} {record.type}", "yellow" if loud else "dim"), f"  {_one_line(summary, limit)}"
    )


def _gate_label(seq: int, event: PolicyDecided | ApprovalRequested | ApprovalDecided) -> Text:
    """What policy and people said about a tool call, under it in the trace."""
    match event:
        case PolicyDecided(verdict=verdict, rule=rule, reason=reason):
            style = {"allow": "dim", "deny": "red", "ask": "yellow"}[verdict]
            by = f" (rule {clean(rule)})" if rule else " (default)"
            return Text.assemble(_seq(seq, style), (f"policy: {verdict}{by}", style), f"  {_one_line(reason)}")
        case ApprovalRequested(approval_id=ident, expires_at=expires_at):
            until = datetime.fromtimestamp(expires_at).strftime("%Y-%m-%d %H:%M")
            return Text.assemble(
                _seq(seq, "yellow"), (f"waiting for approval {clean(ident)}", "yellow"), f" (until {until})"
            )
        case ApprovalDecided(approval_id=ident, outcome=outcome, by=by, reason=reason):
            style = "green" if outcome == "approved" else "red"
            who = f" by {clean(by)}" if by else ""
            why = f": {_one_line(reason)}" if reason else ""
            return Text.assemble(_seq(seq, style), (f"{outcome}{who}", style), f"  {clean(ident)}{why}")


def secrets_summary(event: SecretsDetected) -> str:
    """``2 likely secrets replaced in execute's result: GitHub Token (line 3), …``: types and places, no values."""
    where = {
        "tool": f"{event.tool}'s result",
        "result": "the final text",
        "output": "the typed output",
        "patch": "the patch (kept as is)",
    }[event.where]
    verb = "found in" if event.where == "patch" else "replaced in"
    places = ", ".join(f"{f.get('type', '?')} ({_place(f)})" for f in event.findings[:PATCH_SECRETS_LISTED])
    hidden = len(event.findings) - PATCH_SECRETS_LISTED
    more = f" and {hidden} more" if hidden > 0 else ""
    return clean(f"{len(event.findings)} likely secret(s) {verb} {where}: {places}{more}")


def _place(finding: dict[str, Any]) -> str:
    if finding.get("file"):
        return f"{finding['file']}:{finding.get('line')}"
    if finding.get("field"):
        return str(finding["field"])
    return f"line {finding.get('line')}"


def _rejection_label(seq: int, text: str) -> Text:
    return Text.assemble(_seq(seq, "yellow"), (text, "yellow"))


def event_lines(record: EventRecord) -> list[Text]:
    """One journal event as lines of its own (``corral trace --follow``), each starting with its time."""
    event, seq = record.event, record.seq
    match event:
        case ModelRequested(call=call) as request:
            lines = [Text.assemble(_seq(seq, "dim"), (f"model call {call + 1} requested", "dim"))]
            lines += [_rejection_label(seq, text) for text in rejections(request)]
        case ModelResponded() as response:
            lines = [_model_label(seq, response)]
        case ToolCalled() as call:
            lines = [_tool_label(seq, call)]
        case ToolReturned() as result:
            lines = [Text.assemble(_seq(seq, "cyan"), safe(result.tool, "cyan"), "  ", _mark_text(result))]
        case SecretsDetected() as found:
            lines = [Text.assemble(_seq(seq, "yellow"), (secrets_summary(found), "yellow"))]
        case _:
            lines = [_event_label(record)]
    stamp = datetime.fromtimestamp(event.ts).strftime("%H:%M:%S ")
    return [Text.assemble((stamp, "dim"), line) for line in lines]


# -- the live view of `corral run` ------------------------------------------------------------------


@dataclass
class _Line:
    icon: str
    text: str
    """Safe to print: made of :func:`clean` text."""
    detail: str = ""
    style: str = ""

    def render(self) -> Text:
        detail = f"  {self.detail}" if self.detail else ""
        return Text.assemble((f"{self.icon} ", "bold"), (self.text, self.style), detail)


@dataclass
class LiveRunView:
    """A rich live panel fed with a run's events as they happen (turns, tool calls, tokens, cost).

    When the console is not a terminal it prints one line per thing that happened instead.
    """

    console: Console
    title: str
    lines: list[_Line] = field(default_factory=list)
    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    started: float = field(default_factory=time.monotonic)
    status: str = "starting"
    run_ids: set[str] = field(default_factory=set)
    _live: Live | None = None
    _pending_tools: dict[str, int] = field(default_factory=dict)
    _log_handler: logging.Handler | None = None
    _saved_handlers: list[logging.Handler] = field(default_factory=list)
    _held: bool = False
    _unprinted: list[_Line] = field(default_factory=list)

    def __enter__(self) -> LiveRunView:
        # Log records (the local sandbox's warning, say) print above the live panel, not through it.
        from rich.logging import RichHandler

        self._log_handler = RichHandler(console=self.console, show_time=False, show_path=False)
        self._saved_handlers = logging.root.handlers[:]
        logging.root.handlers = [self._log_handler]
        if self.console.is_terminal:
            self._live = self._new_live()
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._live is not None:
                self._live.update(self._render())
                self._live.__exit__(None, None, None)
        finally:
            logging.root.handlers = self._saved_handlers

    def _new_live(self) -> Live:
        return Live(self._render(), console=self.console, refresh_per_second=8, transient=False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop redrawing (a question is asked on the terminal); what happens meanwhile shows after."""
        live = self._live
        if live is None:
            self._held = True
            try:
                yield
            finally:
                self._held = False
                for line in self._unprinted:
                    self.console.print(line.render(), soft_wrap=True)
                self._unprinted.clear()
            return
        live.update(self._render())
        live.stop()
        self._live = None
        self._held = True
        try:
            yield
        finally:
            self._held = False
            self._unprinted.clear()  # the new panel shows them
            self._live = self._new_live()
            self._live.start()

    def on_event(self, run_id: str, event: BaseEvent) -> None:
        if self.run_ids and run_id not in self.run_ids:
            return
        for line in self._lines_for(event):
            self.lines.append(line)
            if self._held:
                self._unprinted.append(line)
            elif self._live is None:
                self.console.print(line.render(), soft_wrap=True)
        if self._live is not None:
            self._live.update(self._render())

    def _lines_for(self, event: BaseEvent) -> list[_Line]:
        """The lines an event adds; it may also update the counters or an earlier tool call's line."""
        match event:
            case RunStarted():
                self.status = "running"
            case RunResumed():
                return [_Line("↻", "resumed after interruption", style="yellow")]
            case SandboxCreated(backend=backend, isolated=True):
                return [_Line("□", f"sandbox {clean(backend)} (isolated)", style="dim")]
            case SandboxCreated(backend=backend):
                return [
                    _Line("!", f"sandbox {clean(backend)}: NOT isolated, commands run on this machine", style="yellow")
                ]
            case ModelRequested(call=call) as request:
                self.status = f"thinking (turn {call + 1})"
                return [_Line("!", text, style="yellow") for text in rejections(request)]
            case ModelRetried(error=error, wait_s=wait_s):
                return [_Line("!", f"retry in {wait_s:.1f}s: {_one_line(error)}", style="yellow")]
            case ModelResponded() as response:
                return [self._turn(response)]
            case ModelFailed(error=error):
                return [_Line("✗", f"model call failed: {_one_line(error)}", style="red")]
            case ModelCalled(status=status, error=str() as error):
                return [_Line("✗", f"model call: HTTP {status}: {_one_line(error)}", style="red")]
            case ModelCalled(call=call, model=model, input_tokens=tokens_in, output_tokens=tokens_out):
                self.status = f"thinking (call {call + 1})"
                return [_Line("◇", f"{clean(model)}: {tokens_in:,} in, {tokens_out:,} out", style="dim")]
            case ToolCalled(tool=tool, args=args, call_id=call_id):
                self.status = f"running {clean(tool)}"
                self._pending_tools[call_id] = len(self.lines)
                return [_Line("→", f"{clean(tool)}({_short_args(args)})", style="cyan")]
            case ToolReturned(call_id=call_id) as result:
                mark, ok = tool_mark(result)
                index = self._pending_tools.pop(call_id, None)
                if index is not None and index < len(self.lines):
                    self.lines[index].detail = mark
                    if not ok:
                        self.lines[index].style = "red"
                if self._live is None:  # printed lines cannot be updated: say how the call ended
                    return [_Line("←", clean(result.tool), mark, style="" if ok else "red")]
            case SecretsDetected() as found:
                return [_Line("!", secrets_summary(found), style="yellow")]
            case ContextCompacted(evicted_messages=evicted, saved_to=saved_to):
                return [_Line("≡", f"context compacted: {evicted} messages → {clean(saved_to)}", style="dim")]
            case BudgetExceeded(limit=limit):
                return [_Line("✗", f"budget exhausted: {clean(limit)}", style="red")]
            case EgressAttempted(allowed=False, host=host, port=port, reason=reason):
                return [_Line("!", f"network denied: {clean(host)}:{port} ({_one_line(reason)})", style="yellow")]
            case ApprovalRequested(approval_id=ident, tool=tool, reason=reason):
                self.status = f"waiting for approval {clean(ident)}"
                return [
                    _Line("?", f"{clean(tool)} needs a person's approval: {_one_line(reason)}", style="yellow"),
                    _Line(
                        " ", f"corral approve {clean(ident)}   ·   corral deny {clean(ident)} --reason …", style="dim"
                    ),
                ]
            case ApprovalDecided(approval_id=ident, outcome=outcome, by=by):
                self.status = "running"
                who = f" by {clean(by)}" if by else ""
                return [_Line("✓" if outcome == "approved" else "✗", f"{clean(ident)} {outcome}{who}")]
            case RunFinished(status=status):
                self.status = clean(status)
            case _:
                pass  # allowed egress and future events: the trace shows them
        return []

    def _turn(self, response: ModelResponded) -> _Line:
        self.turns = response.call + 1
        self.input_tokens += response.input_tokens
        self.output_tokens += response.output_tokens
        cost = call_usage(response)
        self.cost_usd += cost.cost_usd
        self.unpriced_calls += cost.unpriced_calls
        tokens = f"{fmt_tokens(response.input_tokens)} in · {fmt_tokens(response.output_tokens)} out"
        summary = _answer_summary(response.parts)
        return _Line("◆", f"turn {self.turns}: {summary}", f"{tokens} · {fmt_ms(response.duration_ms)}")

    def _render(self) -> Panel:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1)
        table.add_column(ratio=1, overflow="ellipsis", no_wrap=True)
        table.add_column(justify="right", style="dim", no_wrap=True, min_width=26)
        for line in self.lines[-18:]:
            table.add_row(line.icon, Text(line.text, style=line.style), line.detail)
        elapsed = time.monotonic() - self.started
        cost = fmt_cost(Usage(cost_usd=self.cost_usd, unpriced_calls=self.unpriced_calls))
        footer = Text(
            f"{self.status} · turns {self.turns} · tokens {fmt_tokens(self.input_tokens)} in / "
            f"{fmt_tokens(self.output_tokens)} out · {cost} · {elapsed:.1f}s",
            style="bold",
        )
        return Panel(Group(table, Text(""), footer), title=safe(self.title), border_style="blue")


# -- corral runs ------------------------------------------------------------------------------------

STATUS_STYLES = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "interrupted": "magenta"}


def status_text(record: RunRecord) -> Text:
    """The status a person sees: ``interrupted`` when the run's process is gone (see ``RunRecord``)."""
    status = record.display_status
    return Text(status, style=STATUS_STYLES.get(status, "cyan"))


RUN_COLUMNS = ("run", "started", "agent", "status", "turns", "tokens", "cost", "elapsed", "task")
#: Shown, in this order, while the task column keeps TASK_MIN_WIDTH cells; the others always are.
OPTIONAL_RUN_COLUMNS = ("agent", "cost", "turns", "tokens", "elapsed")
TASK_MIN_WIDTH = 24
_NUMERIC = frozenset({"turns", "tokens", "cost", "elapsed"})
_GAP = "  "


def _run_cells(record: RunRecord, now: float) -> dict[str, Text]:
    task = record.task.strip().splitlines()
    return {
        "run": safe(record.id),
        "started": Text(fmt_when(record.created_at, now)),
        "agent": safe(record.agent),
        "status": status_text(record),
        "turns": Text(str(record.turns)),
        "tokens": Text(fmt_tokens(record.usage.total_tokens)),
        "cost": Text(fmt_cost(record.usage, short=True)),
        "elapsed": Text(_elapsed(record)),
        "task": safe(task[0] if task else ""),
    }


def _fit_columns(widths: dict[str, int], width: int) -> tuple[list[str], int]:
    """The columns that fit ``width`` with room for the task, and the task's width.

    The id, start time and status always show, whole; the task gets what is left, on one line.
    """
    task_min = min(TASK_MIN_WIDTH, widths["task"])

    def used(columns: set[str]) -> int:
        return sum(widths[c] + len(_GAP) for c in columns if c != "task")

    shown = {"run", "started", "status", "task"}
    for column in OPTIONAL_RUN_COLUMNS:
        if width - used(shown | {column}) >= task_min:
            shown.add(column)
    return [c for c in RUN_COLUMNS if c in shown], max(width - used(shown), 10)


def runs_lines(records: list[RunRecord], width: int | None = None) -> list[Text]:
    """``corral runs`` as aligned lines, a header first; the task is the first line of each run's task.

    ``width`` (a terminal's) drops the least useful columns and cuts the task with an ellipsis to
    fit; None (a pipe) shows every column and whole tasks.
    """
    now = time.time()
    rows = [{c: Text(c, style="bold") for c in RUN_COLUMNS}, *(_run_cells(r, now) for r in records)]
    widths = {c: max(cell_len(row[c].plain) for row in rows) for c in RUN_COLUMNS}
    columns, task_width = (list(RUN_COLUMNS), widths["task"]) if width is None else _fit_columns(widths, width)
    lines = []
    for row in rows:
        cells = []
        for column in columns:
            cell = row[column].copy()
            if column == "task":
                cell.truncate(task_width, overflow="ellipsis")
            elif column in _NUMERIC:
                cell.pad_left(widths[column] - cell.cell_len)
            else:
                cell.pad_right(widths[column] - cell.cell_len)
            cells.append(cell)
        line = Text(_GAP).join(cells)
        line.rstrip()
        lines.append(line)
    return lines


def print_runs(console: Console, records: list[RunRecord]) -> None:
    print_lines(console, runs_lines(records, None if plain(console) else console.width))


def run_summary(record: RunRecord) -> dict[str, Any]:
    """The JSON form of ``corral show`` and ``corral runs``: ``status`` as stored, ``interrupted`` beside it."""
    return {
        "id": record.id,
        "agent": record.agent,
        "status": record.status.value,
        "interrupted": record.interrupted,
        "task": record.task,
        "model": record.spec.get("model"),
        "parent_id": record.parent_id,
        "root_id": record.root_id,
        "continues_id": record.continues_id,
        "spec_hash": record.spec_hash,
        "executor_id": record.executor_id,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "elapsed_s": record.elapsed_s,
        "turns": record.turns,
        "usage": record.usage.model_dump(),
        "cost_usd": record.usage.cost_usd,
        "cost_known": record.usage.cost_known,
        "error": record.error,
        "error_type": record.error_type,
        "result": record.result,
        "identity": record.identity.model_dump(mode="json") if record.identity is not None else None,
    }


# -- corral show ------------------------------------------------------------------------------------

TASK_SHOWN_LINES = 5
TASK_SHOWN_CHARS = 500


def abbreviate_task(task: str, run_id: str) -> str:
    """The first lines of a long task, and how much is left out (``show --json`` has it all)."""
    head = "".join(task.splitlines(keepends=True)[:TASK_SHOWN_LINES])[:TASK_SHOWN_CHARS].rstrip()
    left = len(task.rstrip()) - len(head)
    if left <= 0:
        return task
    return f"{head}… ({left} more characters; `corral show {run_id} --json` has it all)"


def _show_fields(record: RunRecord) -> list[tuple[str, Text]]:
    status = status_text(record)
    if record.interrupted:
        status.append(clean(f" (was {record.status.value}; `corral resume {record.id}` continues it)"), style="dim")
    u = record.usage
    fields = [
        ("run", safe(record.id)),
        ("status", status),
        ("agent", safe(f"{record.agent} ({record.spec.get('model')})")),
        ("task", safe(abbreviate_task(record.task, record.id))),
        ("started", Text(datetime.fromtimestamp(record.created_at).strftime("%Y-%m-%d %H:%M:%S"))),
    ]
    if record.continues_id:
        fields.append(("continues", safe(record.continues_id)))
    if record.parent_id:
        fields.append(("parent", safe(record.parent_id)))
    if record.identity is not None:
        grants = " ".join(record.identity.grants) or "none"
        fields.append(("acting", safe(f"{record.identity.describe()} in {record.identity.team}; grants: {grants}")))
    fields += [
        ("turns", Text(str(record.turns))),
        ("tokens", Text(f"{u.input_tokens} in ({u.cache_read_tokens} cached) · {u.output_tokens} out")),
        ("cost", Text(fmt_cost(u))),
    ]
    if record.elapsed_s is not None:
        fields.append(("elapsed", Text(f"{record.elapsed_s:.1f}s")))
    if record.error:
        fields.append(("error", safe(record.error, "red")))
    return fields


def _field_lines(fields: list[tuple[str, Text]]) -> Iterator[Text]:
    """``name  value`` lines, names aligned; a value's later lines are indented under its first."""
    indent = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        for n, part in enumerate(value.split("\n")):
            yield Text.assemble((name.ljust(indent) if n == 0 else " " * indent, "bold"), part)


def patch_text(patch: str) -> Text:
    """A diff, coloured by line; every line whole and safe to print (file names can hold anything)."""
    text = Text()
    for line in patch.splitlines():
        style = ""
        if line.startswith(("+++", "---", "diff --git", "index ")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        text.append(clean(line) + "\n", style=style)
    text.rstrip()
    return text


PATCH_SECRETS_LISTED = 5


def patch_secrets_warning(result: dict[str, Any]) -> Text | None:
    """``⚠ the patch holds N likely secret(s): file:line (type) …``, or None when the scanner found none."""
    found = result.get("patch_secrets") or []
    if not found:
        return None
    where = ", ".join(
        clean(f"{f.get('file', '?')}:{f.get('line', '?')} ({f.get('type', '?')})") for f in found[:PATCH_SECRETS_LISTED]
    )
    more = f" and {len(found) - PATCH_SECRETS_LISTED} more" if len(found) > PATCH_SECRETS_LISTED else ""
    return Text(
        f"⚠ the patch holds {len(found)} likely secret(s): {where}{more} — review it before applying it",
        style="bold yellow",
    )


def _print_section(console: Console, title: str, body: Text, *, boxed: bool, style: str = "") -> None:
    """A titled block: a panel on a terminal when ``boxed``, else a title line and the body's lines whole."""
    if boxed and not plain(console):
        console.print(Panel(body, title=title, border_style=style, title_align="left"))
        return
    console.print(Text(f"{title}:", style="bold"))
    console.print(body, soft_wrap=True)


def print_show(console: Console, record: RunRecord) -> None:
    fields = _show_fields(record)
    if plain(console):
        print_lines(console, _field_lines(fields))
    else:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        for name, value in fields:
            grid.add_row(name, value)
        console.print(grid)
    result = record.result or {}
    style = STATUS_STYLES.get(record.display_status, "cyan")
    if result.get("text"):
        _print_section(console, "result", safe(result["text"]), boxed=True, style=style)
    if result.get("output") is not None:
        output = json.dumps(result["output"], indent=2, ensure_ascii=False)
        _print_section(console, "output", safe(output), boxed=True)
    if result.get("patch"):
        # Never in a panel: a panel cuts or folds the long lines of a patch.
        title = f"patch ({result.get('files_changed', 0)} files)"
        _print_section(console, title, patch_text(result["patch"]), boxed=False)
    if (warning := patch_secrets_warning(result)) is not None:
        console.print(warning, soft_wrap=True)


# -- corral trace -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTrace:
    """A run's journal and the traces of the children its programs dispatched, by child run id."""

    record: RunRecord
    events: list[EventRecord]
    children: Mapping[str, RunTrace] = field(default_factory=dict)


def trace_data(
    record: RunRecord, events: list[EventRecord], children: Mapping[str, RunTrace] | None = None
) -> dict[str, Any]:
    """The JSON form of ``corral trace``: every event, the model and tool calls they describe, and the
    children's traces (each with the ``task`` call that dispatched it)."""
    model_calls: dict[int, dict[str, Any]] = {}
    tool_calls: dict[str, dict[str, Any]] = {}
    for e in events:
        match e.event:
            case ModelRequested(call=call, model=model, ts=ts):
                model_calls[call] = {"call": call, "model": model, "requested_at": ts, "seq": e.seq}
            case ModelResponded() as r:
                model_calls.setdefault(r.call, {"call": r.call, "model": r.model}).update(
                    duration_ms=r.duration_ms,
                    attempts=r.attempts,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    cache_read_tokens=r.cache_read_tokens,
                    cache_write_tokens=r.cache_write_tokens,
                    reasoning_tokens=r.reasoning_tokens,
                    cost_usd=r.cost_usd,
                    finish_reason=r.finish_reason,
                    tool_calls=[p.get("tool_name") for p in r.parts if p.get("part_kind") == "tool-call"],
                )
            case ModelFailed(call=call, error=error, attempts=attempts):
                model_calls.setdefault(call, {"call": call}).update(error=error, attempts=attempts)
            case ToolCalled(call_id=call_id, tool=tool, args=args):
                tool_calls[e.key.rsplit(":", 1)[0]] = {"call_id": call_id, "tool": tool, "args": args}
            case ToolReturned() as r:
                tool_calls.setdefault(e.key.rsplit(":", 1)[0], {"call_id": r.call_id, "tool": r.tool}).update(
                    duration_ms=r.duration_ms, ok=r.ok, error=r.error, spilled_to=r.spilled_to, exit_code=r.exit_code
                )
            case _:
                pass
    dispatches = {e.event.child_id: e.event.call_id for e in events if isinstance(e.event, TaskDispatched)}
    return {
        "run": run_summary(record),
        "model_calls": [model_calls[k] for k in sorted(model_calls)],
        "tool_calls": list(tool_calls.values()),
        "events": [e.to_json() for e in events],
        "children": [
            {"dispatched_by": dispatches.get(child_id), **trace_data(t.record, t.events, t.children)}
            for child_id, t in (children or {}).items()
        ],
    }


def run_header(record: RunRecord) -> Text:
    """``run ID agent · status · tokens · cost``: the first line of a trace."""
    return Text.assemble(
        (f"run {clean(record.id)}", "bold"),
        f" {clean(record.agent)} · ",
        status_text(record),
        f" · {fmt_tokens(record.usage.total_tokens)} tokens · cost {fmt_cost(record.usage)}",
    )


PROGRAM_LINES_SHOWN = 40


def _program_label(program: str) -> Text:
    lines = program.strip("\n").splitlines()
    shown = lines[:PROGRAM_LINES_SHOWN]
    more = (
        f"\n… {len(lines) - len(shown)} more lines (`corral trace --json` has them)" if len(lines) > len(shown) else ""
    )
    return safe("\n".join(shown) + more, "dim")


def _task_finished_label(seq: int, finished: TaskFinished) -> Text:
    merged = {True: ", patch merged", False: ", patch NOT merged", None: ""}[finished.merged]
    words = f"{finished.status}{merged}{' (from the store)' if finished.reused else ''}"
    return Text.assemble(
        _seq(seq, "dim"),
        (words, "green" if finished.status == "succeeded" and finished.merged is not False else "red"),
        f" · {fmt_tokens(finished.input_tokens + finished.output_tokens)} tokens · {fmt_cost(finished.cost_usd)}",
        *([("\n  conflict: ", "red"), safe(finished.conflict)] if finished.conflict else []),
    )


def trace_tree(record: RunRecord, events: list[EventRecord], children: Mapping[str, RunTrace] | None = None) -> Tree:
    """The journal as a tree: each model call, with the tool calls it made (and their outcome) under it;
    a program's calls under its ``eval``, and each child run's own tree under the ``task`` that dispatched it."""
    root = Tree(run_header(record))
    turn: Tree | None = None
    tools: dict[str, Tree] = {}
    for e in events:
        match e.event:
            case ModelResponded() as response:
                turn = root.add(_model_label(e.seq, response))
            case ToolCalled() as call:  # a program's calls go under its eval
                parent = tools.get(call.parent_call_id or "") or turn or root
                tools[call.call_id] = parent.add(_tool_label(e.seq, call))
                if call.tool == "eval" and isinstance(call.args, dict) and isinstance(call.args.get("program"), str):
                    tools[call.call_id].add(_program_label(call.args["program"]))
            case TaskDispatched(call_id=call_id, child_id=child_id) if call_id in tools:
                child = (children or {}).get(child_id)
                if child is not None:
                    tools[call_id].children.append(trace_tree(child.record, child.events, child.children))
                else:
                    tools[call_id].add(Text.assemble(_seq(e.seq, "dim"), (f"child run {child_id}", "dim")))
            case TaskFinished(call_id=call_id) as finished if call_id in tools:
                tools[call_id].add(_task_finished_label(e.seq, finished))
            case ProgramLogged(call_id=call_id, text=text) if call_id in tools:
                tools[call_id].add(Text.assemble(_seq(e.seq, "dim"), ("log: ", "dim"), _one_line(text)))
            case ToolReturned(call_id=call_id) as result:
                node = tools.get(call_id)
                if node is not None:
                    node.label = Text.assemble(node.label, "  ", _mark_text(result))  # type: ignore[arg-type]
            case (
                PolicyDecided(call_id=call_id) | ApprovalRequested(call_id=call_id) | ApprovalDecided(call_id=call_id)
            ) if call_id in tools:
                tools[call_id].add(_gate_label(e.seq, e.event))
            case SecretsDetected(call_id=call_id) as found if call_id in tools:
                tools[call_id].add(Text.assemble(_seq(e.seq, "yellow"), (secrets_summary(found), "yellow")))
            case SecretsDetected() as found:
                root.add(Text.assemble(_seq(e.seq, "yellow"), (secrets_summary(found), "yellow")))
            case ModelRequested() as request:
                # The request itself is shown by its response; what it tells the model was wrong, here.
                for text in rejections(request):
                    (turn or root).add(_rejection_label(e.seq, text))
            case _:
                root.add(_event_label(e))
    return root


def _tree_lines(tree: Tree, depth: int = 0) -> Iterator[Text]:
    label = tree.label if isinstance(tree.label, Text) else Text(str(tree.label))
    for line in label.split("\n"):  # a program's lines, a conflict report: each indented with its node
        yield Text.assemble("  " * depth, line)
    for child in tree.children:
        yield from _tree_lines(child, depth + 1)


def print_trace(
    console: Console, record: RunRecord, events: list[EventRecord], children: Mapping[str, RunTrace] | None = None
) -> None:
    """The trace tree; plain, it is indented lines, each whole."""
    tree = trace_tree(record, events, children)
    if plain(console):
        print_lines(console, _tree_lines(tree))
    else:
        console.print(tree)
