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

from corral.events import BaseEvent, event_payload
from corral.store import EventRecord, RunRecord


def fmt_cost(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


def fmt_tokens(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _short_args(args: Any, limit: int = 70) -> str:
    if isinstance(args, dict):
        text = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())
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
        data = event_payload(event)
        kind = str(event.type)  # type: ignore[attr-defined]
        line: _Line | None = None
        if kind == "run.started":
            self.status = "running"
        elif kind == "run.resumed":
            line = _Line("↻", "resumed after interruption", style="yellow")
        elif kind == "sandbox.created":
            if data["isolated"]:
                line = _Line("□", f"sandbox {data['backend']} (isolated)", style="dim")
            else:
                line = _Line(
                    "!",
                    f"sandbox {data['backend']}: NOT isolated, commands run on this machine",
                    style="yellow",
                )
        elif kind == "model.request":
            self.status = f"thinking (turn {data['call'] + 1})"
        elif kind == "model.retry":
            line = _Line(
                "!",
                f"model call failed ({data['error'][:60]}); retry in {data['wait_s']:.1f}s",
                style="yellow",
            )
        elif kind == "model.response":
            self.turns = data["call"] + 1
            self.input_tokens += data["input_tokens"]
            self.output_tokens += data["output_tokens"]
            self.cost_usd += data["cost_usd"]
            texts = [p.get("content", "") for p in data["parts"] if p.get("part_kind") == "text"]
            summary = " ".join(t.strip() for t in texts if t).replace("\n", " ")
            tokens = f"{fmt_tokens(data['input_tokens'])} in · {fmt_tokens(data['output_tokens'])} out"
            detail = f"{tokens} · {fmt_ms(event.duration_ms)}"
            line = _Line("◆", f"turn {self.turns}: {summary[:90] or '(tool calls)'}", detail)
        elif kind == "model.error":
            line = _Line("✗", f"model call failed: {data['error'][:100]}", style="red")
        elif kind == "tool.call":
            self.status = f"running {data['tool']}"
            line = _Line("→", f"{data['tool']}({_short_args(data['args'])})", style="cyan")
            self._pending_tools[data["call_id"]] = len(self.lines)
        elif kind == "tool.result":
            index = self._pending_tools.pop(data["call_id"], None)
            mark = "✓" if data["ok"] else "✗"
            detail = f"{mark} {fmt_ms(event.duration_ms)}"
            if index is not None and index < len(self.lines):
                self.lines[index].detail = detail
                if not data["ok"]:
                    self.lines[index].style = "red"
        elif kind == "context.compacted":
            line = _Line(
                "≡",
                f"context compacted: {data['evicted_messages']} messages → {data['saved_to']}",
                style="dim",
            )
        elif kind == "budget.exceeded":
            line = _Line("✗", f"budget exhausted: {data['limit']}", style="red")
        elif kind == "run.finished":
            self.status = data["status"]
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
        footer = Text(
            f"{self.status} · turns {self.turns} · tokens {fmt_tokens(self.input_tokens)} in / "
            f"{fmt_tokens(self.output_tokens)} out · {fmt_cost(self.cost_usd)} · {elapsed:.1f}s",
            style="bold",
        )
        return Panel(Group(table, Text(""), footer), title=self.title, border_style="blue")


def runs_table(runs: list[RunRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("run", "agent", "status", "turns", "tokens", "cost", "elapsed", "task"):
        table.add_column(col, no_wrap=col != "task", overflow="ellipsis")
    for r in runs:
        style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(r.status.value, "cyan")
        table.add_row(
            r.id,
            r.agent,
            Text(r.status.value, style=style),
            str(r.turns),
            fmt_tokens(r.usage.total_tokens),
            fmt_cost(r.usage.cost_usd),
            f"{r.elapsed_s:.1f}s" if r.elapsed_s is not None else "-",
            r.task.splitlines()[0][:60] if r.task else "",
        )
    return table


def run_summary(record: RunRecord) -> dict[str, Any]:
    """The JSON form of ``corral show``."""
    return {
        "id": record.id,
        "agent": record.agent,
        "status": record.status.value,
        "task": record.task,
        "model": record.spec.get("model"),
        "parent_id": record.parent_id,
        "root_id": record.root_id,
        "spec_hash": record.spec_hash,
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
    style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(record.status.value, "cyan")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", record.id)
    grid.add_row("status", Text(record.status.value, style=style))
    grid.add_row("agent", f"{record.agent} ({record.spec.get('model')})")
    grid.add_row("task", record.task)
    grid.add_row("turns", str(record.turns))
    u = record.usage
    grid.add_row("tokens", f"{u.input_tokens} in ({u.cache_read_tokens} cached) · {u.output_tokens} out")
    grid.add_row("cost", fmt_cost(u.cost_usd))
    if record.elapsed_s is not None:
        grid.add_row("elapsed", f"{record.elapsed_s:.1f}s")
    if record.error:
        grid.add_row("error", Text(record.error, style="red"))
    console.print(grid)
    result = record.result or {}
    if result.get("text"):
        console.print(Panel(result["text"], title="result", border_style=style))
    if result.get("output") is not None:
        console.print(Panel(json.dumps(result["output"], indent=2), title="output"))
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
        d = e.data
        if e.type == "model.request":
            model_calls[d["call"]] = {
                "call": d["call"],
                "model": d["model"],
                "requested_at": e.ts,
                "seq": e.seq,
            }
        elif e.type == "model.response":
            model_calls.setdefault(d["call"], {"call": d["call"], "model": d["model"]}).update(
                duration_ms=e.duration_ms,
                attempts=d["attempts"],
                input_tokens=d["input_tokens"],
                output_tokens=d["output_tokens"],
                cache_read_tokens=d["cache_read_tokens"],
                cache_write_tokens=d["cache_write_tokens"],
                reasoning_tokens=d["reasoning_tokens"],
                cost_usd=d["cost_usd"],
                finish_reason=d.get("finish_reason"),
                tool_calls=[p.get("tool_name") for p in d["parts"] if p.get("part_kind") == "tool-call"],
            )
        elif e.type == "model.error":
            model_calls.setdefault(d["call"], {"call": d["call"]}).update(error=d["error"], attempts=d["attempts"])
        elif e.type == "tool.call":
            tool_calls[e.key.rsplit(":", 1)[0]] = {
                "call_id": d["call_id"],
                "tool": d["tool"],
                "args": d["args"],
            }
        elif e.type == "tool.result":
            tool_calls.setdefault(e.key.rsplit(":", 1)[0], {"call_id": d["call_id"], "tool": d["tool"]}).update(
                duration_ms=e.duration_ms, ok=d["ok"], error=d.get("error"), spilled_to=d.get("spilled_to")
            )
    return {
        "run": run_summary(record),
        "model_calls": [model_calls[k] for k in sorted(model_calls)],
        "tool_calls": list(tool_calls.values()),
        "events": [e.model_dump() for e in events],
    }


def trace_tree(record: RunRecord, events: list[EventRecord]) -> Tree:
    root = Tree(
        Text.assemble(
            (f"run {record.id}", "bold"),
            f" {record.agent} · {record.status.value} · "
            f"{fmt_tokens(record.usage.total_tokens)} tokens · {fmt_cost(record.usage.cost_usd)}",
        )
    )
    turn: Tree | None = None
    tools: dict[str, Tree] = {}
    for e in events:
        d = e.data
        if e.type == "model.response":
            turn = root.add(
                Text.assemble(
                    (f"#{e.seq} model call {d['call'] + 1}", "magenta"),
                    f"  {fmt_ms(e.duration_ms)} · {d['input_tokens']} in / {d['output_tokens']} out · "
                    f"{fmt_cost(d['cost_usd'])}" + (f" · {d['attempts']} attempts" if d["attempts"] > 1 else ""),
                )
            )
        elif e.type == "tool.call":
            parent = turn or root
            tools[d["call_id"]] = parent.add(
                Text.assemble((f"#{e.seq} {d['tool']}", "cyan"), f"({_short_args(d['args'])})")
            )
        elif e.type == "tool.result":
            node = tools.get(d["call_id"])
            mark = Text(
                f"{'✓' if d['ok'] else '✗ ' + (d.get('error') or '')} {fmt_ms(e.duration_ms)}",
                style="green" if d["ok"] else "red",
            )
            if node is not None:
                node.label = Text.assemble(node.label, "  ", mark)  # type: ignore[arg-type]
        elif e.type in ("model.request", "tool.result"):
            continue
        else:
            summary = ", ".join(f"{k}={v}" for k, v in d.items() if isinstance(v, str | int | float) and k != "task")
            root.add(
                Text.assemble((f"#{e.seq} {e.type}", "yellow" if "retry" in e.type else "dim"), f"  {summary[:100]}")
            )
    return root
