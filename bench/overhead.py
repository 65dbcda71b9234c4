"""Overhead benchmark: what corral's durability costs per turn, next to plain pydantic-ai and DBOS's own floor.

    .venv/bin/python bench/overhead.py [--turns N] [--sessions N] [--cold-starts N] [--json]

Measures, in one process and one run, the same scripted session of ``--turns`` turns (each turn: one
model call answering with one ``read_file`` tool call; then a final text answer), with pydantic-ai's
in-process ``FunctionModel`` so no HTTP is measured:

- plain pydantic-ai: an ``Agent`` with a trivial ``read_file`` tool;
- corral: the native engine inside a real ``Runtime`` (DBOS on SQLite in a temporary home, the
  ``local`` sandbox backend);
- DBOS's floor: a bare DBOS workflow on the same DBOS instance and database, taking the steps a turn
  takes (two async steps), plus the cost of one sync step, one async step and a workflow start;
- per turn: DB statements and commits on corral's store and on DBOS's database, thread hand-offs,
  and wall time inside the functions the loop goes through (the itemisation), and a cProfile of the
  loop thread over the same turns;
- cold start: a ``corral run`` process, from its start to the first request reaching a scripted
  model server, with phases taken from its journal, and ``python -X importtime`` of it.

corral's native engine runs on a pydantic-ai ``FunctionModel`` handed to it through the public seam
``Runtime(store, engines={"native": NativeEngine(model=...)})``, so no HTTP is measured. Figures are
printed as a table, or as JSON with ``--json`` (the table then goes to stderr); docs/BENCHMARKS.md
records them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import importlib
import inspect
import itertools
import json
import logging
import os
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/overhead.py`: put the project root on the path so `bench.support` imports.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")

from dbos import DBOS
from pydantic_ai import Agent, Tool
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from sqlalchemy import Engine, event

from bench.support import BenchError, Result, describe, machine_facts, percentile, progress

SCHEMA = "corral.bench.overhead/1"
TASK = "read the README, again and again"
READ_PATH = "README.md"
README_LINES = 20
SESSION_TIMEOUT_S = 120.0
TURN_OVERHEAD_RATIO_TARGET = 2.0
"""corral's per-turn overhead over plain pydantic-ai, in multiples of DBOS's floor for a turn's two steps."""
COLD_START_BASELINE_MS = 2_300.0
"""`corral run` to the first model request before issue 7's work: this script at ba07a3a on 2026-12-04 measured
2,263-2,610 ms (p50 of quick runs; imports are ~1.7 s of it)."""
COLD_START_TARGET_MS = COLD_START_BASELINE_MS / 2


# -- the scripted session ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    """Clocks read when a model call (or a floor turn) starts."""

    wall: float
    """``time.time()``: comparable with the store's and the journal's timestamps."""
    perf: float
    loop_cpu: float
    """``time.thread_time()`` of the thread that makes the call: the event loop's."""
    process_cpu: float


def stamp() -> Stamp:
    return Stamp(time.time(), time.perf_counter(), time.thread_time(), time.process_time())


@dataclass
class Session:
    """The scripted model: ``turns`` calls answer with one read_file call each, the next one with text.

    It is the ``FunctionModel`` function for every subject and stamps the clocks at each call, so the
    turns of every subject are measured the same way: from one model call to the next.
    """

    turns: int
    stamps: list[Stamp] = field(default_factory=list)
    on_call: Callable[[int], None] | None = None

    def reset(self, on_call: Callable[[int], None] | None = None) -> None:
        self.stamps, self.on_call = [], on_call

    async def respond(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        # A coroutine function, so pydantic-ai calls it on the event loop (a sync one goes to a worker thread).
        call = len(self.stamps)
        self.stamps.append(stamp())
        if self.on_call is not None:
            self.on_call(call)
        returned = sum(1 for m in messages for p in m.parts if isinstance(p, ToolReturnPart))
        if returned < self.turns:
            return ModelResponse(parts=[ToolCallPart("read_file", {"path": READ_PATH}, tool_call_id=f"call-{call}")])
        return ModelResponse(parts=[TextPart("done")])

    def model(self) -> FunctionModel:
        return FunctionModel(self.respond, model_name="bench-function-model")

    def check(self, subject: str) -> None:
        if len(self.stamps) != self.turns + 1:
            raise BenchError(f"{subject}: {len(self.stamps)} model calls, expected {self.turns + 1}")


def turn_samples(stamps: Sequence[Stamp]) -> list[dict[str, float]]:
    """One sample per turn: wall, loop-thread CPU and process CPU from one stamp to the next (ms)."""
    return [
        {
            "total": (b.perf - a.perf) * 1000,
            "loop_cpu": (b.loop_cpu - a.loop_cpu) * 1000,
            "process_cpu": (b.process_cpu - a.process_cpu) * 1000,
        }
        for a, b in itertools.pairwise(stamps)
    ]


@dataclass(frozen=True)
class Window:
    """The steady-state turns of one session (all but the first) as a perf_counter interval."""

    start: float
    end: float
    turns: int

    @classmethod
    def of(cls, stamps: Sequence[Stamp]) -> Window:
        return cls(stamps[1].perf, stamps[-1].perf, len(stamps) - 2)

    def holds(self, at: float) -> bool:
        return self.start <= at < self.end


def inside(windows: Sequence[Window], at: float) -> bool:
    return any(w.holds(at) for w in windows)


# -- plain pydantic-ai ------------------------------------------------------------------------------


def _numbered(text: str) -> str:
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(text.splitlines(), 1))


def plain_agent(session: Session, repo: Path) -> Agent[None, str]:
    async def read_file(path: str) -> str:
        """Read a text file in the repository, lines numbered."""
        with open(repo / path, encoding="utf-8") as handle:  # noqa: ASYNC230 - as corral's local sandbox reads
            return _numbered(handle.read())

    return Agent(session.model(), instructions="You read files.", tools=[Tool(read_file, takes_ctx=False)])


async def plain_session(session: Session, repo: Path, on_call: Callable[[int], None] | None = None) -> dict[str, float]:
    session.reset(on_call)
    started = time.perf_counter()
    result = await plain_agent(session, repo).run(TASK)
    if result.output != "done":
        raise BenchError(f"pydantic-ai: unexpected output {result.output!r}")
    session.check("pydantic-ai")
    return {"total": (time.perf_counter() - started) * 1000}


# -- corral -----------------------------------------------------------------------------------------


def patch_everywhere(
    original: Any, replacement: Any, *, prefix: str = "corral", skip: str | None = None
) -> Callable[[], None]:
    """Replace ``original`` by ``replacement`` in every loaded ``prefix`` module that holds it; returns undo.

    Modules import functions by name (``from corral.models.providers import build_model``), so the
    replacement must go where they are used, wherever a refactor moves them. ``skip`` names a module
    left alone (the defining one, so a recursive function's inner calls stay unwrapped).
    """
    patched: list[tuple[Any, str]] = []
    for name, module in list(sys.modules.items()):
        if module is None or name == skip or not (name == prefix or name.startswith(prefix + ".")):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)
                patched.append((module, attr))

    def undo() -> None:
        for module, attr in patched:
            setattr(module, attr, original)

    undo.patched = [f"{m.__name__}.{a}" for m, a in patched]  # type: ignore[attr-defined]
    return undo


def native_engine(session: Session) -> Any:
    """corral's native engine on ``session``'s FunctionModel instead of a client built from the spec's model string."""
    from corral.engines.native import NativeEngine

    return NativeEngine(model=session.model())


def corral_spec(turns: int) -> Any:
    from corral.spec import AgentSpec

    return AgentSpec.model_validate(
        {
            "name": "bench",
            # Never contacted: the runtime's native engine runs on a FunctionModel. A base_url: no API key needed.
            "model": "openai-chat:bench",
            "base_url": "http://127.0.0.1:9/v1",
            "sandbox": "local",
            "tools": ["read_file"],
            "budget": {"max_turns": turns + 10},
        }
    )


class RunWatcher:
    """Resolves a future when a run's ``run.finished`` event is emitted: no polling inside the measured turns."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}

    def on_event(self, run_id: str, event: Any) -> None:
        if getattr(event, "type", None) != "run.finished" or run_id not in self._waiting:
            return
        loop, future = self._waiting[run_id]
        loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

    def expect(self, run_id: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting[run_id] = (loop, future)
        return future

    def forget(self, run_id: str) -> None:
        self._waiting.pop(run_id, None)


async def corral_session(
    runtime: Any, watcher: RunWatcher, spec: Any, repo: Path, session: Session
) -> dict[str, float]:
    """One run; phases from the store's clock: submit to first model call, the turns, last call to finished."""
    record = await runtime.submit(spec, TASK, repo)
    finished = watcher.expect(record.id)
    try:
        # A run that finished before expect() is caught by wait(); the future only spares the polling.
        if not runtime.store.get_run(record.id).status.finished:
            await asyncio.wait_for(finished, SESSION_TIMEOUT_S)
        record = await runtime.wait(record.id, timeout_s=SESSION_TIMEOUT_S)
    finally:
        watcher.forget(record.id)
    if record.status.value != "succeeded":
        raise BenchError(f"corral run {record.id} {record.status.value}: {record.error}")
    session.check("corral")
    first, last = session.stamps[0].wall, session.stamps[-1].wall
    return {
        "total": (record.finished_at - record.created_at) * 1000,
        "submit_to_first_call": (first - record.created_at) * 1000,
        "turns": (last - first) * 1000,
        "last_call_to_finished": (record.finished_at - last) * 1000,
    }


# -- DBOS's floor -----------------------------------------------------------------------------------

_FLOOR_STAMPS: list[Stamp] = []


@DBOS.step(name="bench.floor_async_step")
async def _floor_async_step(turn: int, part: str) -> dict[str, Any]:
    _FLOOR_STAMPS.append(stamp())
    return {"turn": turn, "part": part}


@DBOS.workflow(name="bench.floor_turns")
async def _floor_turns(turns: int) -> int:
    """The steps corral's session takes: a model step per turn plus the last, a tool step per turn."""
    for turn in range(turns + 1):
        await _floor_async_step(turn, "model")
        if turn < turns:
            await _floor_async_step(turn, "tool")
    return turns


@DBOS.step(name="bench.floor_sync_step")
def _floor_sync_step(index: int) -> dict[str, Any]:
    _FLOOR_STAMPS.append(stamp())
    return {"index": index}


@DBOS.workflow(name="bench.floor_sync_steps")
def _floor_sync_steps(steps: int) -> int:
    for index in range(steps):
        _floor_sync_step(index)
    return steps


@DBOS.workflow(name="bench.floor_one_step")
async def _floor_one_step() -> int:
    await _floor_async_step(0, "only")
    return 1


async def floor_turns(turns: int) -> tuple[list[Stamp], list[Stamp]]:
    """Stamps at every step, and at the first step of every turn."""
    _FLOOR_STAMPS.clear()
    handle = await DBOS.start_workflow_async(_floor_turns, turns)
    await handle.get_result()
    steps = list(_FLOOR_STAMPS)
    if len(steps) != 2 * turns + 1:
        raise BenchError(f"DBOS floor: {len(steps)} steps ran, expected {2 * turns + 1}")
    return steps, steps[::2]


async def floor_sync_steps(steps: int) -> list[Stamp]:
    _FLOOR_STAMPS.clear()
    await asyncio.to_thread(_floor_sync_steps, steps)
    return list(_FLOOR_STAMPS)


async def floor_workflow_start() -> float:
    started = time.perf_counter()
    handle = await DBOS.start_workflow_async(_floor_one_step)
    await handle.get_result()
    return (time.perf_counter() - started) * 1000


# -- counting DB round trips and commits --------------------------------------------------------------


def thread_label() -> str:
    name = threading.current_thread().name
    if name == "MainThread":
        return "loop"
    if name == "corral-journal":
        return "journal"
    if name.startswith("asyncio_"):
        return "to_thread"
    return re.sub(r"[-_\d]+$", "", name) or name


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE)\s+(?:[\"`]?\w+[\"`]?\.)?[\"`]?(\w+)", re.IGNORECASE)


def statement_kind(sql: str) -> str:
    """``VERB table`` of a statement, e.g. ``INSERT corral_events``."""
    verb = (sql.split(None, 1) or ["?"])[0].upper()
    table = _TABLE.search(sql)
    return f"{verb} {table.group(1)}" if table else verb


def database_label(conn: Any) -> str:
    database = conn.engine.url.database or ""
    name = Path(database).name
    return {"corral.db": "corral", "dbos.db": "dbos"}.get(name, name or conn.engine.url.get_backend_name())


@dataclass(frozen=True)
class Statement:
    db: str
    kind: str
    thread: str
    start: float
    end: float


@dataclass(frozen=True)
class Commit:
    db: str
    thread: str
    at: float


class DbCounter:
    """Every statement (timed) and commit on every SQLAlchemy engine of the process, while listening."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []
        self.commits: list[Commit] = []

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info["bench_started"].pop()
        self.statements.append(
            Statement(database_label(conn), statement_kind(statement), thread_label(), started, time.perf_counter())
        )

    def _commit(self, conn: Any) -> None:
        self.commits.append(Commit(database_label(conn), thread_label(), time.perf_counter()))

    @contextlib.contextmanager
    def listening(self) -> Iterator[DbCounter]:
        self.statements, self.commits = [], []
        hooks = [
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("commit", self._commit),
        ]
        for name, hook in hooks:
            event.listen(Engine, name, hook)
        try:
            yield self
        finally:
            for name, hook in hooks:
                event.remove(Engine, name, hook)

    def per_turn(self, windows: Sequence[Window]) -> dict[str, Any]:
        turns = sum(w.turns for w in windows)
        statements = [s for s in self.statements if inside(windows, s.start)]
        commits = [c for c in self.commits if inside(windows, c.at)]
        by_kind: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for s in statements:
            by_kind[(s.db, s.thread, s.kind)].append((s.end - s.start) * 1000)
        commit_counts: dict[tuple[str, str], int] = defaultdict(int)
        for c in commits:
            commit_counts[(c.db, c.thread)] += 1
        dbs = sorted({s.db for s in statements} | {c.db for c in commits})
        return {
            "turns": turns,
            "statements_per_turn": round(len(statements) / turns, 2),
            "commits_per_turn": round(len(commits) / turns, 2),
            "by_db": {
                db: {
                    "statements_per_turn": round(sum(1 for s in statements if s.db == db) / turns, 2),
                    "statement_ms_per_turn": round(
                        sum((s.end - s.start) * 1000 for s in statements if s.db == db) / turns, 3
                    ),
                    "commits_per_turn": round(sum(1 for c in commits if c.db == db) / turns, 2),
                }
                for db in dbs
            },
            "statements": [
                {
                    "db": db,
                    "thread": thread,
                    "kind": kind,
                    "per_turn": round(len(ms) / turns, 2),
                    "ms_per_turn": round(sum(ms) / turns, 3),
                }
                for (db, thread, kind), ms in sorted(by_kind.items(), key=lambda item: -len(item[1]))
            ],
            "commits": [
                {"db": db, "thread": thread, "per_turn": round(n / turns, 2)}
                for (db, thread), n in sorted(commit_counts.items(), key=lambda item: -item[1])
            ],
        }


# -- itemising: wall time inside the functions a turn goes through ---------------------------------------


@dataclass(frozen=True)
class Span:
    label: str
    thread: str
    start: float
    end: float


class Probes:
    """Wall time spent inside chosen functions (inclusive: a probe's time contains its children's)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.missing: dict[str, str] = {}
        self.order: list[tuple[int, str]] = []
        self._undo: list[Callable[[], None]] = []

    @contextlib.contextmanager
    def span(self, label: str) -> Iterator[None]:
        thread, started = thread_label(), time.perf_counter()
        try:
            yield
        finally:
            self.spans.append(Span(label, thread, started, time.perf_counter()))

    def declare(self, depth: int, label: str) -> str:
        self.order.append((depth, label))
        return label

    def timed(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                with self.span(label):
                    return await fn(*args, **kwargs)

            return timed_async

        @functools.wraps(fn)
        def timed_sync(*args: Any, **kwargs: Any) -> Any:
            with self.span(label):
                return fn(*args, **kwargs)

        return timed_sync

    def on_attribute(self, depth: int, label: str, owner: str, attr: str) -> None:
        """Time ``owner.attr`` (``owner`` is ``module`` or ``module:Class``, or ``module:object``)."""
        self.declare(depth, label)
        try:
            module_name, _, qualname = owner.partition(":")
            target: Any = importlib.import_module(module_name)
            for part in filter(None, qualname.split(".")):
                target = getattr(target, part)
            original = getattr(target, attr)
        except (ImportError, AttributeError) as exc:
            self.missing[label] = f"{owner}.{attr}: {type(exc).__name__}: {exc}"
            return
        own = attr in vars(target)  # else inherited (a method) or looked up on the class (an instance's method)
        setattr(target, attr, self.timed(original, label))
        self._undo.append(lambda: setattr(target, attr, original) if own else delattr(target, attr))

    def on_function(self, depth: int, label: str, module_name: str, attr: str) -> None:
        """Time a module-level function where other corral modules imported it by name (calls from within
        its own module, recursion included, stay untimed)."""
        self.declare(depth, label)
        try:
            original = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            self.missing[label] = f"{module_name}.{attr}: {type(exc).__name__}: {exc}"
            return
        timed = self.timed(original, label)
        self._undo.append(patch_everywhere(original, timed, prefix=module_name.split(".")[0], skip=module_name))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def per_turn(self, windows: Sequence[Window]) -> list[dict[str, Any]]:
        turns = sum(w.turns for w in windows)
        found: dict[str, list[Span]] = defaultdict(list)
        for span in self.spans:
            if inside(windows, span.start):
                found[span.label].append(span)
        rows = []
        for depth, label in self.order:
            spans = found.get(label, [])
            threads = sorted({s.thread for s in spans})
            rows.append(
                {
                    "label": label,
                    "depth": depth,
                    "calls_per_turn": round(len(spans) / turns, 2),
                    "ms_per_turn": round(sum(s.end - s.start for s in spans) * 1000 / turns, 3),
                    "ms_per_call_p50": round(percentile([(s.end - s.start) * 1000 for s in spans], 0.5), 3)
                    if spans
                    else None,
                    "threads": threads,
                    **({"missing": self.missing[label]} if label in self.missing else {}),
                }
            )
        return rows


class _TimedSteps:
    """The engine's Steps, timed: the whole durable step, and the body the engine hands it."""

    def __init__(self, inner: Any, probes: Probes) -> None:
        self._inner, self._probes = inner, probes

    async def model_call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        async def body() -> Any:
            with self._probes.span(BODY_MODEL):
                return await fn()

        with self._probes.span(STEP_MODEL):
            return await self._inner.model_call(body)

    async def tool_call(self, fn: Callable[[str], Awaitable[Any]]) -> Any:
        async def body(key: str) -> Any:
            with self._probes.span(BODY_TOOL):
                return await fn(key)

        with self._probes.span(STEP_TOOL):
            return await self._inner.tool_call(body)


STEP_MODEL = "Steps.model_call: the durable model step"
BODY_MODEL = "model step body (budget, model, pricing, dump + redact)"
STEP_TOOL = "Steps.tool_call: the durable tool step"
BODY_TOOL = "tool step body (run_tool)"
EMIT = "EngineContext.emit (journal append + listeners)"
EMIT_ONE = "emit "
ON_USAGE = "EngineContext.on_usage (store.set_usage)"
EMITTED_PER_TURN = ("model.request", "model.response", "tool.call", "tool.result")


def _timed_emit(emit: Callable[[Any], None], probes: Probes) -> Callable[[Any], None]:
    def timed_emit(event: Any) -> None:
        with probes.span(EMIT), probes.span(f"{EMIT_ONE}{getattr(event, 'type', '?')}"):
            emit(event)

    return timed_emit


def _to_thread_probe(probes: Probes) -> Callable[[], None]:
    """Time each ``asyncio.to_thread`` hand-off: the hop into a worker, the body, the hop back to the loop."""
    original = asyncio.to_thread

    async def to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        submitted = time.perf_counter()
        marks: dict[str, float] = {}

        def run() -> Any:
            marks["start"] = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                marks["end"] = time.perf_counter()

        try:
            return await original(run)
        finally:
            resumed = time.perf_counter()
            if "start" in marks:
                probes.spans.append(Span(HOP_IN, "loop", submitted, marks["start"]))
                probes.spans.append(Span(HOP_BODY, "to_thread", marks["start"], marks["end"]))
                probes.spans.append(Span(HOP_BACK, "loop", marks["end"], resumed))

    asyncio.to_thread = to_thread  # type: ignore[assignment]
    return lambda: setattr(asyncio, "to_thread", original)


HOP_IN = "asyncio.to_thread: hop to a worker thread"
HOP_BODY = "asyncio.to_thread: body in the worker (DBOS checkpoint reads/writes)"
HOP_BACK = "asyncio.to_thread: hop back to the loop"


@contextlib.contextmanager
def probing() -> Iterator[Probes]:
    """Install every probe of the itemisation; a probe whose target moved is reported missing, not fatal."""
    from corral.engines.base import EngineContext

    probes = Probes()
    original_init = EngineContext.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.steps = _TimedSteps(self.steps, probes)
        self.emit = _timed_emit(self.emit, probes)
        self.on_usage = probes.timed(self.on_usage, ON_USAGE)

    EngineContext.__init__ = init  # type: ignore[method-assign]
    probes._undo.append(lambda: setattr(EngineContext, "__init__", original_init))
    native = "corral.engines.native"
    probes.on_attribute(0, "DurableModel.request (corral's WrapperModel, whole)", native + ":DurableModel", "request")
    probes.declare(1, STEP_MODEL)
    probes.declare(2, BODY_MODEL)
    probes.on_attribute(
        3, "FunctionModel.request (the model itself)", "pydantic_ai.models.function:FunctionModel", "request"
    )
    probes.on_function(3, "price_call", "corral.models.pricing", "price_call")
    probes.on_attribute(
        1,
        "ModelMessagesTypeAdapter.dump_python (request/response to JSON)",
        "pydantic_ai.messages:ModelMessagesTypeAdapter",
        "dump_python",
    )
    probes.on_attribute(
        1,
        "ModelMessagesTypeAdapter.validate_python (step result back to messages)",
        "pydantic_ai.messages:ModelMessagesTypeAdapter",
        "validate_python",
    )
    probes.on_function(
        1, "redact_data (step payloads, called from corral.runtime/engines)", "corral.secrets.redact", "redact_data"
    )
    probes.declare(0, STEP_TOOL)
    probes.declare(1, BODY_TOOL)
    probes.on_function(2, "run_tool", "corral.tools.base", "run_tool")
    probes.on_attribute(3, "Sandbox.read_file", "corral.sandbox.base:Sandbox", "read_file")
    probes.declare(0, EMIT)
    for event_type in EMITTED_PER_TURN:
        probes.declare(1, EMIT_ONE + event_type)
    probes.on_attribute(1, "Journal.append", "corral.store.journal:Journal", "append")
    probes.on_function(2, "event_payload (model_dump of the event)", "corral.events", "event_payload")
    probes.declare(0, ON_USAGE)
    probes.on_attribute(0, "Store.update_run", "corral.store:Store", "update_run")
    probes.on_attribute(0, "Store.get_run", "corral.store:Store", "get_run")
    probes.on_attribute(0, "Journal._write_batch (writer thread)", "corral.store.journal:Journal", "_write_batch")
    probes.on_attribute(
        0,
        "DBOS check_operation_execution (step replay check)",
        "dbos._sys_db:SystemDatabase",
        "check_operation_execution",
    )
    probes.on_attribute(
        0, "DBOS record_operation_result (step checkpoint)", "dbos._sys_db:SystemDatabase", "record_operation_result"
    )
    probes.on_function(1, "DBOS serialize_value (the step's output)", "dbos._serialization", "serialize_value")
    probes.on_attribute(
        0, "SQLite commit (DefaultDialect.do_commit)", "sqlalchemy.engine.default:DefaultDialect", "do_commit"
    )
    for label in (HOP_IN, HOP_BODY, HOP_BACK):
        probes.declare(0, label)
    probes._undo.append(_to_thread_probe(probes))
    try:
        yield probes
    finally:
        probes.undo()


# -- profiling the loop thread over the steady-state turns ------------------------------------------------


class WindowProfiler:
    """cProfile of the thread making model calls, from the second model call to the last (worker threads unseen)."""

    def __init__(self, turns: int) -> None:
        self.turns = turns
        self.profile = cProfile.Profile()

    def on_call(self, call: int) -> None:
        if call == 1:
            self.profile.enable()
        elif call == self.turns:
            self.profile.disable()

    def summary(self, top: int) -> dict[str, Any]:
        turns = self.turns - 1
        stats: dict[Any, Any] = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        groups: dict[str, float] = defaultdict(float)
        functions = []
        for (filename, line, name), (_, ncalls, tottime, cumtime, _) in stats.items():
            group = code_group(filename, name)
            groups[group] += tottime
            functions.append(
                {
                    "function": f"{short_path(filename)}:{line}({name})" if filename != "~" else name,
                    "group": group,
                    "calls_per_turn": round(ncalls / turns, 2),
                    "tottime_ms_per_turn": round(tottime * 1000 / turns, 3),
                    "cumtime_ms_per_turn": round(cumtime * 1000 / turns, 3),
                }
            )
        total = sum(groups.values())
        return {
            "turns": turns,
            "total_ms_per_turn": round(total * 1000 / turns, 3),
            "groups": [
                {"group": g, "ms_per_turn": round(t * 1000 / turns, 3), "share": round(t / total, 3) if total else 0}
                for g, t in sorted(groups.items(), key=lambda item: -item[1])
            ],
            "by_tottime": sorted(functions, key=lambda f: -f["tottime_ms_per_turn"])[:top],
            "by_cumtime_corral": sorted(
                (f for f in functions if f["group"].startswith("corral")), key=lambda f: -f["cumtime_ms_per_turn"]
            )[:top],
        }


_WAITS = ("poll' of 'select.epoll", "select' of 'select", "acquire' of '_thread.lock", "_thread.RLock")


def code_group(filename: str, name: str) -> str:
    """Which library a profiled function belongs to; waits of the loop are a group of their own."""
    if filename == "~":
        if any(wait in name for wait in _WAITS):
            return "waiting (epoll / locks: the loop idle or blocked)"
        if "sqlite3" in name:
            return "sqlite3 (C)"
        return "builtins (C)"
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/src/corral/" in path:
        return "corral." + path.split("/src/corral/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/bench/" in path:
        return "bench (probes, session)"
    match = re.search(r"/python3\.\d+/([^/]+)", path)
    return "stdlib." + match.group(1).removesuffix(".py") if match else path


def short_path(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/src/", "/lib/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- cold start -------------------------------------------------------------------------------------------


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / READ_PATH).write_text("".join(f"line {n} of a small file the session reads\n" for n in range(README_LINES)))
    return root


def write_config(project: Path, base_url: str) -> None:
    (project / "corral.toml").write_text(
        f"""[agents.bench]
model = "openai-chat:bench"
base_url = "{base_url}"
sandbox = "local"
tools = ["read_file"]
"""
    )


def corral_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return {**env, "CORRAL_HOME": str(home), "COLUMNS": "120", "PYDANTIC_AI_NO_BANNER": "1"}


def cold_start_trial(
    project: Path, repo: Path, home: Path, server: Any, *, python_options: Sequence[str] = ()
) -> dict[str, Any]:
    """`corral run` in a new process: phases up to the first model request, from the process's own journal."""
    from corral.store import Store

    before = len(server.requests)
    argv = [sys.executable, *python_options, "-m", "corral", "run", "bench", TASK]
    spawned = time.time()
    proc = subprocess.run(
        [*argv, "--repo", str(repo), "--json"],
        cwd=project,
        env=corral_env(home),
        capture_output=True,
        text=True,
        timeout=SESSION_TIMEOUT_S,
        check=False,
    )
    exited = time.time()
    if proc.returncode != 0:
        raise BenchError(f"corral run exited {proc.returncode}: {proc.stderr.strip()[-600:]}")
    requests = server.requests[before:]
    if not requests:
        raise BenchError("corral run finished without a request reaching the scripted model server")
    run_id = json.loads(proc.stdout.splitlines()[-1])["run_id"]  # --json: events, then the result line
    store = Store.open(home=home)
    try:
        record = store.get_run(run_id)
        ts = {e.type: e.ts for e in store.events(run_id)}
    finally:
        store.close()
    first = requests[0].ts
    phases = {
        "total": (first - spawned) * 1000,
        "to_submit": (record.created_at - spawned) * 1000,
        "submit_to_run_started": (ts["run.started"] - record.created_at) * 1000,
        "sandbox_create": (ts["sandbox.created"] - ts["run.started"]) * 1000,
        "sandbox_to_request": (first - ts["sandbox.created"]) * 1000,
        "request_to_exit": (exited - first) * 1000,
    }
    return {"phases": phases, "stderr": proc.stderr}


_STARTUP_GROUPS = ("corral", "dbos", "alembic", "sqlalchemy", "pydantic_ai", "genai_prices")


def cold_start_profile(path: Path, top: int) -> dict[str, Any]:
    """Where a profiled `corral run` spends its time (cumulative, so nested entries overlap; cProfile slows
    everything down, so read the shares, not the milliseconds)."""
    stats: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = []
    imports_s = 0.0
    for (filename, line, name), (_, ncalls, _, cumtime, _) in stats.items():
        if name == "_find_and_load":
            imports_s = max(imports_s, cumtime)
        if code_group(filename, name).startswith(_STARTUP_GROUPS):
            rows.append(
                {"function": f"{short_path(filename)}:{line}({name})", "calls": ncalls, "cumtime_ms": cumtime * 1000}
            )
    rows.sort(key=lambda row: -row["cumtime_ms"])
    for row in rows:
        row["cumtime_ms"] = round(row["cumtime_ms"], 1)
    total = max((v[3] for v in stats.values()), default=0.0)
    return {"total_ms": round(total * 1000, 1), "imports_ms": round(imports_s * 1000, 1), "by_cumtime": rows[: top * 2]}


def python_floor_ms(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
    return (time.perf_counter() - started) * 1000


@dataclass(frozen=True)
class Import:
    name: str
    depth: int
    self_us: int
    cumulative_us: int


def parse_importtime(stderr: str) -> list[Import]:
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, self_us, cumulative_us, name = (part for part in re.split(r"import time:|\|", line))
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        found.append(Import(name.strip(), depth, int(self_us), int(cumulative_us)))
    return found


def import_summary(imports: list[Import], top: int) -> dict[str, Any]:
    """Total import time, the packages costing most (inclusive), and the modules costing most themselves."""

    def root(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "corral" else parts[0]

    packages: dict[str, int] = defaultdict(int)
    via: dict[str, str] = {}
    for index, item in enumerate(imports):
        if item.cumulative_us > packages[root(item.name)]:
            packages[root(item.name)] = item.cumulative_us
            via[root(item.name)] = " < ".join(importers(imports, index, 4))
    return {
        "modules": len(imports),
        "total_ms": round(sum(i.self_us for i in imports) / 1000, 1),
        "packages_inclusive": [
            {"package": name, "cumulative_ms": round(us / 1000, 1), "imported_by": via[name]}
            for name, us in sorted(packages.items(), key=lambda item: -item[1])[:top]
        ],
        "modules_self": [
            {"module": i.name, "self_ms": round(i.self_us / 1000, 1), "cumulative_ms": round(i.cumulative_us / 1000, 1)}
            for i in sorted(imports, key=lambda i: -i.self_us)[:top]
        ],
    }


def importers(imports: list[Import], index: int, levels: int) -> list[str]:
    """Who imported ``imports[index]``: -X importtime prints a module after its imports, one level deeper."""
    found, depth = [], imports[index].depth
    for item in imports[index + 1 :]:
        if item.depth < depth:
            found.append(item.name)
            depth = item.depth
            if len(found) == levels:
                break
    return found


def importtime_of(code: str) -> list[Import]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return parse_importtime(proc.stderr)


def measure_cold_start(args: argparse.Namespace, tmp: Path) -> tuple[list[Result], dict[str, Any]]:
    from corral.models.scripted import ScriptedServer, Turn

    rows = {
        "run": Result("coldstart/corral_run", "`corral run` process start to the first model request"),
        "python": Result("coldstart/python_floor", "floor: `python -c pass`"),
        "cli": Result("coldstart/import_corral_cli", '`python -c "import corral.cli"`'),
        "runtime": Result("coldstart/import_corral_runtime", '`python -c "import corral.runtime"`'),
    }
    imports: dict[str, Any] = {}
    project = tmp / "coldstart"
    repo = make_repo(project / "repo")
    home = project / "home"
    with ScriptedServer([Turn(text="done")]) as server:
        write_config(project, server.openai_base_url)
        progress(f"{rows['run'].id} ({args.cold_starts} + 1 warm-up)")
        try:
            cold_start_trial(project, repo, home, server)  # warm-up: creates the store, fills the page cache
            for _ in range(args.cold_starts):
                rows["run"].add(cold_start_trial(project, repo, home, server)["phases"])
            progress("importtime of `corral run`")
            traced = cold_start_trial(project, repo, home, server, python_options=["-X", "importtime"])
            imports["corral_run"] = import_summary(parse_importtime(traced["stderr"]), args.top)
            progress("cProfile of `corral run`")
            profile_path = project / "corral-run.prof"
            cold_start_trial(project, repo, home, server, python_options=["-m", "cProfile", "-o", str(profile_path)])
            imports["corral_run_profile"] = cold_start_profile(profile_path, args.top)
        except (BenchError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            fail(rows["run"], exc)
    for key, code in (("python", "pass"), ("cli", "import corral.cli"), ("runtime", "import corral.runtime")):
        progress(rows[key].id)
        try:
            python_floor_ms(code)
            for _ in range(args.cold_starts):
                rows[key].add({"total": python_floor_ms(code)})
        except (OSError, subprocess.SubprocessError) as exc:
            fail(rows[key], exc)
    try:
        imports["corral_cli"] = import_summary(importtime_of("import corral.cli"), args.top)
    except (OSError, subprocess.SubprocessError) as exc:
        imports["corral_cli"] = {"error": describe(exc)}
    return list(rows.values()), imports


def fail(row: Result, exc: BaseException) -> None:
    """A row whose very first trial fails could not run here at all; a later failure is a failure."""
    row.status, row.reason = ("failed" if row.phases else "unavailable"), describe(exc)
    row.phases.clear()


# -- the in-process measurements ---------------------------------------------------------------------------


@dataclass
class InProcess:
    rows: dict[str, Result]
    counts: dict[str, Any] = field(default_factory=dict)
    itemised: list[dict[str, Any]] = field(default_factory=list)
    itemised_turn_ms: float | None = None
    itemised_floor: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    seam: list[str] = field(default_factory=list)


def in_process_rows() -> dict[str, Result]:
    rows = [
        Result("turn/pydantic_ai", "plain pydantic-ai Agent, FunctionModel + trivial read_file tool"),
        Result("turn/corral", "corral native engine in a Runtime (DBOS on SQLite, local sandbox)"),
        Result("turn/dbos_floor", "DBOS floor: a workflow taking a turn's steps (2 async steps)"),
        Result("step/dbos_async", "DBOS: one async step in an async workflow"),
        Result("step/dbos_sync", "DBOS: one sync step in a sync workflow"),
        Result("workflow/dbos_one_step", "DBOS: start_workflow_async + one async step + get_result"),
        Result("session/pydantic_ai", "plain pydantic-ai: the whole session"),
        Result("session/corral", "corral: submit to finished (store clock)"),
        Result("session/dbos_floor", "DBOS floor: the whole workflow"),
    ]
    return {row.id: row for row in rows}


async def guarded(row: Result, trial: Callable[[], Awaitable[Any]]) -> Any:
    """Run one trial for ``row``; a row that failed once is not tried again."""
    if row.status != "ok":
        return None
    try:
        return await trial()
    except Exception as exc:  # any failure is recorded in the row and the run goes on
        fail(row, exc)
        return None


async def measure_in_process(args: argparse.Namespace, tmp: Path) -> InProcess:
    from corral.runtime import Runtime
    from corral.store import Store

    out = InProcess(in_process_rows())
    rows = out.rows
    repo = make_repo(tmp / "repo")
    session = Session(args.turns)
    spec = corral_spec(args.turns)
    store = Store.open(home=tmp / "home")
    try:
        out.seam = ["Runtime(engines={'native': NativeEngine(model=FunctionModel)})"]
        async with Runtime(store, engines={"native": native_engine(session)}) as runtime:
            watcher = RunWatcher()
            runtime.subscribe(watcher.on_event)
            await _timed_sessions(args, rows, runtime, watcher, spec, repo, session)
            await _dbos_floors(args, rows)
            await _instrumented(args, out, runtime, watcher, spec, repo, session)
    finally:
        store.close()
    return out


async def _timed_sessions(
    args: argparse.Namespace,
    rows: dict[str, Result],
    runtime: Any,
    watcher: RunWatcher,
    spec: Any,
    repo: Path,
    session: Session,
) -> None:
    """The three subjects interleaved, session by session, so a noisy moment hits all of them."""
    for index in range(args.warmup + args.sessions):
        recorded = index >= args.warmup
        progress(f"session {index + 1}/{args.warmup + args.sessions}{'' if recorded else ' (warm-up)'}")

        async def plain(recorded: bool = recorded) -> None:
            phases = await plain_session(session, repo)
            if recorded:
                rows["session/pydantic_ai"].add(phases)
                for sample in turn_samples(session.stamps):
                    rows["turn/pydantic_ai"].add(sample)

        async def corral(recorded: bool = recorded) -> None:
            session.reset()
            phases = await corral_session(runtime, watcher, spec, repo, session)
            if recorded:
                rows["session/corral"].add(phases)
                for sample in turn_samples(session.stamps):
                    rows["turn/corral"].add(sample)

        async def floor(recorded: bool = recorded) -> None:
            started = time.perf_counter()
            steps, turns = await floor_turns(args.turns)
            if recorded:
                rows["session/dbos_floor"].add({"total": (time.perf_counter() - started) * 1000})
                for sample in turn_samples(turns):
                    rows["turn/dbos_floor"].add(sample)
                for sample in turn_samples(steps):
                    rows["step/dbos_async"].add(sample)

        await guarded(rows["turn/pydantic_ai"], plain)
        await guarded(rows["turn/corral"], corral)
        await guarded(rows["turn/dbos_floor"], floor)
    for key, subject in (("session/pydantic_ai", "turn/pydantic_ai"), ("session/corral", "turn/corral")):
        if rows[subject].status != "ok":
            rows[key].status, rows[key].reason = rows[subject].status, rows[subject].reason
    if rows["turn/dbos_floor"].status != "ok":
        for key in ("session/dbos_floor", "step/dbos_async"):
            rows[key].status, rows[key].reason = rows["turn/dbos_floor"].status, rows["turn/dbos_floor"].reason


async def _dbos_floors(args: argparse.Namespace, rows: dict[str, Result]) -> None:
    progress("DBOS floors: sync steps, workflow starts")
    for index in range(args.warmup + args.sessions):

        async def sync_steps(index: int = index) -> None:
            stamps = await floor_sync_steps(2 * args.turns + 1)
            if index >= args.warmup:
                for sample in turn_samples(stamps):
                    rows["step/dbos_sync"].add(sample)

        await guarded(rows["step/dbos_sync"], sync_steps)
    for index in range(args.warmup + args.sessions * 5):

        async def start(index: int = index) -> None:
            ms = await floor_workflow_start()
            if index >= args.warmup:
                rows["workflow/dbos_one_step"].add({"total": ms})

        await guarded(rows["workflow/dbos_one_step"], start)


async def _instrumented(
    args: argparse.Namespace,
    out: InProcess,
    runtime: Any,
    watcher: RunWatcher,
    spec: Any,
    repo: Path,
    session: Session,
) -> None:
    """Counted and probed sessions (not timed: probes cost a little), then one profiled session per subject."""
    if out.rows["turn/corral"].status != "ok":
        return
    counter = DbCounter()
    progress(f"corral: {args.instrumented} counted and probed session(s)")
    windows: list[Window] = []
    with counter.listening(), probing() as probes:
        for _ in range(args.instrumented):
            session.reset()
            await corral_session(runtime, watcher, spec, repo, session)
            windows.append(Window.of(session.stamps))
    out.counts["corral"] = counter.per_turn(windows)
    out.itemised = probes.per_turn(windows)
    out.itemised_turn_ms = round(sum(w.end - w.start for w in windows) * 1000 / sum(w.turns for w in windows), 3)
    if out.rows["turn/dbos_floor"].status == "ok":
        progress("DBOS floor: a counted and probed session")
        with counter.listening(), probing() as probes:
            _, turns = await floor_turns(args.turns)
        out.counts["dbos_floor"] = counter.per_turn([Window.of(turns)])
        out.itemised_floor = [row for row in probes.per_turn([Window.of(turns)]) if row["calls_per_turn"]]
    progress("profiling the loop thread: corral, then plain pydantic-ai")
    profiler = WindowProfiler(args.turns)
    session.reset(on_call=profiler.on_call)
    await corral_session(runtime, watcher, spec, repo, session)
    out.profiles["corral"] = profiler.summary(args.top)
    profiler = WindowProfiler(args.turns)
    await plain_session(session, repo, on_call=profiler.on_call)
    out.profiles["pydantic_ai"] = profiler.summary(args.top)


# -- report -----------------------------------------------------------------------------------------------


def _p50(rows: dict[str, Result], row_id: str) -> float | None:
    row = rows.get(row_id)
    return row.p50() if row is not None else None


def _mean(rows: dict[str, Result], row_id: str) -> float | None:
    row = rows.get(row_id)
    total = row.phases.get("total") if row is not None and row.status == "ok" else None
    return sum(total) / len(total) if total else None


def overhead(rows: dict[str, Result]) -> dict[str, Any]:
    """corral's per-turn cost over plain pydantic-ai, against DBOS's floor for the same two steps."""
    found: dict[str, Any] = {}
    for stat, pick in (("p50", _p50), ("mean", _mean)):
        plain, corral, floor = (pick(rows, f"turn/{s}") for s in ("pydantic_ai", "corral", "dbos_floor"))
        if plain is None or corral is None:
            continue
        extra = corral - plain
        found[stat] = {
            "pydantic_ai_ms": round(plain, 3),
            "corral_ms": round(corral, 3),
            "overhead_ms": round(extra, 3),
            "dbos_floor_ms": round(floor, 3) if floor is not None else None,
            "overhead_x_floor": round(extra / floor, 2) if floor else None,
        }
    return found


def budget(itemised: list[dict[str, Any]], probed_turn_ms: float | None, plain_turn_ms: float | None) -> dict[str, Any]:
    """The itemisation folded into disjoint items (ms per turn); what no probe covers is the remainder."""
    ms = {row["label"]: row["ms_per_turn"] for row in itemised if "missing" not in row}

    def get(label: str) -> float:
        return ms.get(label, 0.0)

    durable = "DurableModel.request (corral's WrapperModel, whole)"
    items = [
        ("DBOS model step: checkpoint read + write around the body", get(STEP_MODEL) - get(BODY_MODEL)),
        ("DBOS tool step: checkpoint read + write around the body", get(STEP_TOOL) - get(BODY_TOOL)),
        (
            "model step body without the model: budget, pricing, dump + redact the response",
            get(BODY_MODEL) - get("FunctionModel.request (the model itself)"),
        ),
        ("tool step body: run_tool (validate, sandbox read, redact, fit)", get(BODY_TOOL)),
        ("journal: emit 4 events (model_dump, redaction, queue hand-off)", get(EMIT)),
        ("store.set_usage after each model call (UPDATE + commit on the loop)", get(ON_USAGE)),
        (
            "journal writer thread: its batches (CPU on another thread; the GIL serialises it with the turn)",
            get("Journal._write_batch (writer thread)"),
        ),
        (
            "DurableModel.request outside its step, emits and usage: dump new messages, validate response",
            get(durable)
            - get(STEP_MODEL)
            - get(EMIT_ONE + "model.request")
            - get(EMIT_ONE + "model.response")
            - get(ON_USAGE),
        ),
    ]
    result: dict[str, Any] = {"items": [{"item": name, "ms_per_turn": round(v, 3)} for name, v in items]}
    if probed_turn_ms is not None and plain_turn_ms is not None:
        extra = probed_turn_ms - plain_turn_ms
        result["probed_turn_ms"] = probed_turn_ms
        result["plain_turn_ms"] = round(plain_turn_ms, 3)
        result["overhead_ms"] = round(extra, 3)
        result["unattributed_ms"] = round(extra - sum(v for _, v in items), 3)
    return result


def targets(rows: dict[str, Result], found_overhead: dict[str, Any]) -> list[dict[str, Any]]:
    p50 = found_overhead.get("p50", {})
    ratio = p50.get("overhead_x_floor")
    cold = _p50(rows, "coldstart/corral_run")
    return [
        {
            "id": "target/turn_overhead_vs_dbos_floor",
            "description": (
                f"corral's per-turn overhead over plain pydantic-ai (p50) <= {TURN_OVERHEAD_RATIO_TARGET:g}x "
                "DBOS's floor for a turn's 2 async steps (p50)"
            ),
            "measured": ratio,
            "limit": TURN_OVERHEAD_RATIO_TARGET,
            "met": ratio <= TURN_OVERHEAD_RATIO_TARGET if ratio is not None else None,
            "reason": None if ratio is not None else rows["turn/corral"].reason or rows["turn/dbos_floor"].reason,
        },
        {
            "id": "target/cold_start",
            "description": (
                f"`corral run` to the first model request (p50) <= {COLD_START_TARGET_MS:g} ms "
                f"(half the {COLD_START_BASELINE_MS:g} ms before issue 7)"
            ),
            "measured": round(cold, 1) if cold is not None else None,
            "limit": COLD_START_TARGET_MS,
            "met": cold <= COLD_START_TARGET_MS if cold is not None else None,
            "reason": None if cold is not None else getattr(rows.get("coldstart/corral_run"), "reason", "not measured"),
        },
    ]


def render_table(report: dict[str, Any], results: list[Result]) -> str:
    machine, parameters = report["machine"], report["parameters"]
    lines = [
        f"corral overhead benchmark, {report['date']}: {machine['cpu_model']} ({machine['usable_cores']} cores), "
        f"{machine['memory_gib']} GiB, {machine['os']}, Linux {machine['kernel']}, "
        f"{machine['tmpdir_filesystem']['type']} at {machine['tmpdir']}, Python {machine['python']}, "
        f"commit {machine['corral_commit']}, load {machine['loadavg_1m']}",
        f"{parameters['turns']} turns per session, {parameters['sessions']} timed sessions "
        f"(+{parameters['warmup']} warm-up), {parameters['instrumented']} probed; "
        f"{parameters['cold_starts']} cold starts",
        f"model seam: build_model replaced in {', '.join(report['model_seam']) or '(nothing)'}",
        "",
        f"  {'':66} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}  phases (p50 ms)",
    ]
    for row in results:
        lines += _render_row(row)
    lines += ["", "per-turn overhead (corral - plain pydantic-ai) against DBOS's floor for the same 2 steps"]
    for stat, o in report["overhead"].items():
        lines.append(
            f"  {stat:>4}: pydantic-ai {o['pydantic_ai_ms']:.2f}, corral {o['corral_ms']:.2f}, overhead "
            f"{o['overhead_ms']:.2f} ms = {o['overhead_x_floor']}x the floor ({o['dbos_floor_ms']} ms)"
        )
    for subject, counts in report["counts"].items():
        lines += ["", f"DB per turn, {subject} (steady-state turns, all threads)"]
        lines.append(
            f"  {counts['statements_per_turn']} statements, {counts['commits_per_turn']} commits per turn; "
            + "; ".join(
                f"{db}: {c['statements_per_turn']} statements ({c['statement_ms_per_turn']:.2f} ms), "
                f"{c['commits_per_turn']} commits"
                for db, c in counts["by_db"].items()
            )
        )
        for s in counts["statements"]:
            lines.append(
                f"    {s['db']:7} {s['thread']:10} {s['kind']:40} {s['per_turn']:>6} /turn {s['ms_per_turn']:>7.3f} ms"
            )
        for c in counts["commits"]:
            lines.append(f"    {c['db']:7} {c['thread']:10} {'COMMIT':40} {c['per_turn']:>6} /turn")
    if report["itemised"]:
        lines += [
            "",
            f"itemised: wall ms per turn inside each function (inclusive; probed turns {report['probed_turn_ms']} ms)",
            f"  {'':78} {'calls':>6} {'ms/turn':>8} {'ms/call':>8}  threads",
        ]
        for row in report["itemised"]:
            label = "  " * row["depth"] + row["label"]
            if "missing" in row:
                lines.append(f"  {label:78} not found: {row['missing']}")
                continue
            per_call = f"{row['ms_per_call_p50']:.3f}" if row["ms_per_call_p50"] is not None else "-"
            lines.append(
                f"  {label:78} {row['calls_per_turn']:>6} {row['ms_per_turn']:>8.3f} {per_call:>8}  "
                f"{','.join(row['threads'])}"
            )
        lines += ["", "itemised, DBOS floor (same probes; only those it passes through)"]
        for row in report["itemised_dbos_floor"]:
            per_call = f"{row['ms_per_call_p50']:.3f}" if row["ms_per_call_p50"] is not None else "-"
            label = "  " * row["depth"] + row["label"]
            lines.append(
                f"  {label:78} {row['calls_per_turn']:>6} {row['ms_per_turn']:>8.3f} {per_call:>8}  "
                f"{','.join(row['threads'])}"
            )
        b = report["budget"]
        lines += ["", "budget: the overhead per turn in disjoint items (probed sessions)"]
        for item in b["items"]:
            lines.append(f"  {item['item']:92} {item['ms_per_turn']:>7.3f}")
        if "overhead_ms" in b:
            lines.append(
                f"  {'unattributed (pydantic-ai work for corral agent, GIL hand-offs, probes)':92} "
                f"{b['unattributed_ms']:>7.3f}"
            )
            lines.append(f"  {'= probed turn - plain turn':92} {b['overhead_ms']:>7.3f}")
    for subject, profile in report["profiles"].items():
        lines += ["", f"cProfile of the loop thread, {subject}: {profile['total_ms_per_turn']} ms per turn (profiled)"]
        for g in profile["groups"][:12]:
            lines.append(f"    {g['group']:70} {g['ms_per_turn']:>8.3f} ms {g['share'] * 100:>5.1f}%")
        if subject == "corral":
            lines.append("  top functions by own time (ms per turn, profiled)")
            for f in profile["by_tottime"][:20]:
                lines.append(f"    {f['function'][:96]:96} {f['calls_per_turn']:>6} {f['tottime_ms_per_turn']:>7.3f}")
            lines.append("  corral functions by inclusive time")
            for f in profile["by_cumtime_corral"][:15]:
                lines.append(f"    {f['function'][:96]:96} {f['calls_per_turn']:>6} {f['cumtime_ms_per_turn']:>7.3f}")
    for name, summary in report["imports"].items():
        if name == "corral_run_profile":
            lines += [
                "",
                f"cProfile of one `corral run` (profiled: {summary['total_ms']} ms, of it imports "
                f"{summary['imports_ms']} ms); cumulative ms",
            ]
            lines += [f"    {r['function'][:96]:96} {r['cumtime_ms']:>9}" for r in summary["by_cumtime"]]
            continue
        if "error" in summary:
            lines += ["", f"imports of {name}: {summary['error']}"]
            continue
        lines += ["", f"imports of {name}: {summary['modules']} modules, {summary['total_ms']} ms (-X importtime)"]
        for package in summary["packages_inclusive"]:
            lines.append(f"    {package['package']:28} {package['cumulative_ms']:>8} ms  < {package['imported_by']}")
        lines.append("  most own time: " + ", ".join(f"{m['module']} {m['self_ms']}" for m in summary["modules_self"]))
    lines += ["", "targets"]
    for target in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "pending"}[target["met"]]
        measured = target["measured"] if target["measured"] is not None else target["reason"]
        lines.append(f"  {target['description']}: {measured} -> {verdict}")
    return "\n".join(lines)


def _render_row(row: Result) -> list[str]:
    if row.status != "ok":
        return [f"  {row.label[:66]:66} {row.status}: {row.reason}"]
    total = row.phases["total"]
    p50, p90, mean = percentile(total, 0.5), percentile(total, 0.9), sum(total) / len(total)
    phases = ", ".join(f"{name} {percentile(ms, 0.5):.2f}" for name, ms in row.phases.items() if name != "total")
    return [f"  {row.label[:66]:66} {len(total):>5} {p50:>8.2f} {p90:>8.2f} {mean:>8.2f}  {phases}"]


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=40, help="turns per session, one read_file each (default 40)")
    parser.add_argument("--sessions", type=int, default=10, help="timed sessions per subject (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed sessions first (default 2)")
    parser.add_argument("--instrumented", type=int, default=3, help="counted + probed corral sessions (default 3)")
    parser.add_argument("--cold-starts", type=int, default=5, help="timed `corral run` processes (default 5)")
    parser.add_argument("--top", type=int, default=15, help="rows in the profile and import tables (default 15)")
    parser.add_argument(
        "--tmpdir", type=Path, default=Path(tempfile.gettempdir()), help="where the stores and repos go"
    )
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start rows (quick experiments)")
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval for this process, in seconds (an experiment; default: Python's, 0.005)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    args = parser.parse_args(argv)
    if args.turns < 2 or args.sessions < 1 or args.instrumented < 1 or args.cold_starts < 1 or args.warmup < 0:
        parser.error("--turns must be at least 2; --sessions, --instrumented, --cold-starts at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("corral").setLevel(logging.ERROR)  # the local backend warns once per sandbox
    started_at = datetime.now(UTC)
    machine = machine_facts(args.tmpdir)  # before the run loads the machine (loadavg)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    with tempfile.TemporaryDirectory(prefix="corral-bench-overhead-", dir=args.tmpdir) as tmp:
        measured = asyncio.run(measure_in_process(args, Path(tmp)))
        cold_rows, imports = ([], {}) if args.no_cold_start else measure_cold_start(args, Path(tmp))
    results = [*measured.rows.values(), *cold_rows]
    by_id = {row.id: row for row in results}
    found_overhead = overhead(by_id)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "command": " ".join(["bench/overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "parameters": {
            "turns": args.turns,
            "sessions": args.sessions,
            "warmup": args.warmup,
            "instrumented": args.instrumented,
            "cold_starts": 0 if args.no_cold_start else args.cold_starts,
            "switch_interval_s": sys.getswitchinterval(),
        },
        "model_seam": measured.seam,
        "results": [row.to_json() for row in results],
        "overhead": found_overhead,
        "counts": measured.counts,
        "itemised": measured.itemised,
        "probed_turn_ms": measured.itemised_turn_ms,
        "itemised_dbos_floor": measured.itemised_floor,
        "budget": budget(measured.itemised, measured.itemised_turn_ms, _mean(by_id, "turn/pydantic_ai")),
        "profiles": measured.profiles,
        "imports": imports,
        "targets": targets(by_id, found_overhead),
    }
    table = render_table(report, results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
