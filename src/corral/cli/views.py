"""What the CLI shows: the live view of a run, and the renderings behind show, trace and runs."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from corral.events import (
    BaseEvent,
    BudgetExceeded,
    ContextCompacted,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    ModelRetried,
    RunFinished,
    RunResumed,
    RunStarted,
    SandboxCreated,
    ToolCalled,
    ToolReturned,
    Usage,
    event_payload,
)
from corral.store import EventRecord, RunRecord


def fmt_cost(cost: Usage | float) -> str:
    """Dollars, or ``unknown`` when a model call had no known price (never a misleading $0.0000)."""
    if isinstance(cost, Usage):
        if not cost.cost_known:
            return "unknown" if cost.cost_usd == 0 else f"≥ {fmt_cost(cost.cost_usd)} (some calls unpriced)"
        cost = cost.cost_usd
    return f"${cost:.4f}" if cost < 1 else f"${cost:.2f}"


def fmt_tokens(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut with an ellipsis past ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _short_args(args: Any, limit: int = 70) -> str:
    if isinstance(args, dict):
        text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items())
    else:
        text = str(args)
    text = text.replace("\n", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Line:
    icon: str
    text: str
    detail: str = ""
    style: str = ""


@dataclass
class LiveRunView:
    """A rich live panel fed with a run's events as they happen (turns, tool calls, tokens, cost)."""

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

    def __enter__(self) -> LiveRunView:
        # Log records (the local sandbox's warning, say) print above the live panel, not through it.
        from rich.logging import RichHandler

        self._log_handler = RichHandler(console=self.console, show_time=False, show_path=False)
        self._saved_handlers = logging.root.handlers[:]
        logging.root.handlers = [self._log_handler]
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
        logging.root.handlers = self._saved_handlers

    def on_event(self, run_id: str, event: BaseEvent) -> None:
        if self.run_ids and run_id not in self.run_ids:
            return
        line: _Line | None = None
        match event:
            case RunStarted():
                self.status = "running"
            case RunResumed():
                line = _Line("↻", "resumed after interruption", style="yellow")
            case SandboxCreated(backend=backend, isolated=True):
                line = _Line("□", f"sandbox {backend} (isolated)", style="dim")
            case SandboxCreated(backend=backend):
                line = _Line("!", f"sandbox {backend}: NOT isolated, commands run on this machine", style="yellow")
            case ModelRequested(call=call):
                self.status = f"thinking (turn {call + 1})"
            case ModelRetried(error=error, wait_s=wait_s):
                line = _Line("!", f"retry in {wait_s:.1f}s: {_one_line(error)}", style="yellow")
            case ModelResponded() as response:
                self.turns = response.call + 1
                self.input_tokens += response.input_tokens
                self.output_tokens += response.output_tokens
                self.cost_usd += response.cost_usd
                self.unpriced_calls += response.price_source == "unknown"
                texts = [p.get("content", "") for p in response.parts if p.get("part_kind") == "text"]
                summary = " ".join(t.strip() for t in texts if t).replace("\n", " ")
                tokens = f"{fmt_tokens(response.input_tokens)} in · {fmt_tokens(response.output_tokens)} out"
                detail = f"{tokens} · {fmt_ms(response.duration_ms)}"
                line = _Line("◆", f"turn {self.turns}: {summary[:90] or '(tool calls)'}", detail)
            case ModelFailed(error=error):
                line = _Line("✗", f"model call failed: {_one_line(error)}", style="red")
            case ToolCalled(tool=tool, args=args, call_id=call_id):
                self.status = f"running {tool}"
                line = _Line("→", f"{tool}({_short_args(args)})", style="cyan")
                self._pending_tools[call_id] = len(self.lines)
            case ToolReturned(call_id=call_id, ok=ok, duration_ms=duration_ms):
                index = self._pending_tools.pop(call_id, None)
                if index is not None and index < len(self.lines):
                    self.lines[index].detail = f"{'✓' if ok else '✗'} {fmt_ms(duration_ms)}"
                    if not ok:
                        self.lines[index].style = "red"
            case ContextCompacted(evicted_messages=evicted, saved_to=saved_to):
                line = _Line("≡", f"context compacted: {evicted} messages → {saved_to}", style="dim")
            case BudgetExceeded(limit=limit):
                line = _Line("✗", f"budget exhausted: {limit}", style="red")
            case RunFinished(status=status):
                self.status = status
            case _:
                pass  # egress attempts and future events: the trace shows them
        if line is not None:
            self.lines.append(line)
            if self._live is None:
                self.console.print(
                    Text.assemble((f"{line.icon} ", "bold"), (line.text, line.style), f"  {line.detail}")
                )
        if self._live is not None:
            self._live.update(self._render())

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
        return Panel(Group(table, Text(""), footer), title=Text(self.title), border_style="blue")


STATUS_STYLES = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "interrupted": "magenta"}


def status_text(record: RunRecord) -> Text:
    """The status a person sees: ``interrupted`` when the run's process is gone (see ``RunRecord``)."""
    status = record.display_status
    return Text(status, style=STATUS_STYLES.get(status, "cyan"))


def runs_table(runs: list[RunRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("run", "agent", "status", "turns", "tokens", "cost", "elapsed", "task"):
        table.add_column(col, no_wrap=col != "task", overflow="ellipsis")
    for r in runs:
        table.add_row(
            r.id,
            Text(r.agent),
            status_text(r),
            str(r.turns),
            fmt_tokens(r.usage.total_tokens),
            fmt_cost(r.usage),
            f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else "-",
            Text(r.task.splitlines()[0][:60] if r.task else ""),
        )
    return table


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
        "spec_hash": record.spec_hash,
        "executor_id": record.executor_id,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "elapsed_s": record.elapsed_s,
        "turns": record.turns,
        "usage": record.usage.model_dump(),
        "cost_usd": record.usage.cost_usd,
        "error": record.error,
        "error_type": record.error_type,
        "result": record.result,
    }


def print_show(console: Console, record: RunRecord) -> None:
    style = STATUS_STYLES.get(record.display_status, "cyan")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", record.id)
    status = status_text(record)
    if record.interrupted:
        status.append(f" (was {record.status.value}; `corral resume {record.id}` continues it)", style="dim")
    grid.add_row("status", status)
    grid.add_row("agent", Text(f"{record.agent} ({record.spec.get('model')})"))
    grid.add_row("task", Text(record.task))
    grid.add_row("turns", str(record.turns))
    u = record.usage
    grid.add_row("tokens", f"{u.input_tokens} in ({u.cache_read_tokens} cached) · {u.output_tokens} out")
    grid.add_row("cost", fmt_cost(u))
    if record.elapsed_s is not None:
        grid.add_row("elapsed", f"{record.elapsed_s:.1f}s")
    if record.error:
        grid.add_row("error", Text(record.error, style="red"))
    console.print(grid)
    result = record.result or {}
    if result.get("text"):
        console.print(Panel(Text(result["text"]), title="result", border_style=style))
    if result.get("output") is not None:
        console.print(Panel(Text(json.dumps(result["output"], indent=2)), title="output"))
    if result.get("patch"):
        console.print(
            Panel(
                Syntax(result["patch"], "diff", word_wrap=True),
                title=f"patch ({result.get('files_changed', 0)} files)",
            )
        )


def trace_data(record: RunRecord, events: list[EventRecord]) -> dict[str, Any]:
    """The JSON form of ``corral trace``: every event, plus the model and tool calls they describe."""
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
                    duration_ms=r.duration_ms, ok=r.ok, error=r.error, spilled_to=r.spilled_to
                )
            case _:
                pass
    return {
        "run": run_summary(record),
        "model_calls": [model_calls[k] for k in sorted(model_calls)],
        "tool_calls": list(tool_calls.values()),
        "events": [e.to_json() for e in events],
    }


def trace_tree(record: RunRecord, events: list[EventRecord]) -> Tree:
    root = Tree(
        Text.assemble(
            (f"run {record.id}", "bold"),
            f" {record.agent} · ",
            status_text(record),
            f" · {fmt_tokens(record.usage.total_tokens)} tokens · {fmt_cost(record.usage)}",
        )
    )
    turn: Tree | None = None
    tools: dict[str, Tree] = {}
    for e in events:
        match e.event:
            case ModelResponded() as r:
                turn = root.add(
                    Text.assemble(
                        (f"#{e.seq} model call {r.call + 1}", "magenta"),
                        f"  {fmt_ms(r.duration_ms)} · {r.input_tokens} in / {r.output_tokens} out · "
                        f"{fmt_cost(r.cost_usd)}" + (f" · {r.attempts} attempts" if r.attempts > 1 else ""),
                    )
                )
            case ToolCalled(call_id=call_id, tool=tool, args=args):
                tools[call_id] = (turn or root).add(
                    Text.assemble((f"#{e.seq} {tool}", "cyan"), f"({_short_args(args)})")
                )
            case ToolReturned(call_id=call_id, ok=ok, error=error, text=text, duration_ms=duration_ms):
                node = tools.get(call_id)
                # A failed call shows its error class and what the model was told (the message).
                why = f"{error or 'error'}: {_one_line(text)}" if text else (error or "error")
                mark = Text(
                    f"✓ {fmt_ms(duration_ms)}" if ok else f"✗ {why} {fmt_ms(duration_ms)}",
                    style="green" if ok else "red",
                )
                if node is not None:
                    node.label = Text.assemble(node.label, "  ", mark)  # type: ignore[arg-type]
            case ModelRequested():
                pass  # shown by its response
            case other:
                fields = event_payload(other)
                summary = ", ".join(
                    f"{k}={v}" for k, v in fields.items() if isinstance(v, str | int | float) and k != "task"
                )
                style = "yellow" if isinstance(other, ModelRetried | ModelFailed | BudgetExceeded) else "dim"
                # Errors are shown whole: their end is usually the part that says what went wrong.
                limit = 500 if isinstance(other, ModelRetried | ModelFailed) else 100
                root.add(Text.assemble((f"#{e.seq} {e.type}", style), f"  {_one_line(summary, limit)}"))
    return root
