"""The Runtime: submits, executes, resumes and cancels runs; each run is one durable workflow."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import secrets as _random
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# pydantic-ai prints a promotional banner on first use unless told not to; corral has its own views.
os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")

from corral import events as ev
from corral.engines.base import (
    ChildRequest,
    ChildResult,
    Conversation,
    Engine,
    EngineContext,
    EngineResult,
    LocalSteps,
    Steps,
    get_engine,
)
from corral.engines.external import ExternalEngine, HookPolicy
from corral.errors import (
    BudgetExceededError,
    CorralError,
    RunTimeoutError,
    SandboxError,
    SpecError,
    StoreError,
    UsageError,
)
from corral.events import Usage
from corral.orchestration.interpreter import INTERPRETER
from corral.orchestration.programs import EVAL_TOOL
from corral.policy import rule_of_two
from corral.policy.budgets import BudgetClock, ChildrenSpend
from corral.policy.decide import Action, Decision
from corral.runtime import approvals, external, recovery, workflow
from corral.runtime.children import child_run_id, runs_light
from corral.runtime.sandboxing import START_DIRNAME, LazySandbox, open_sandbox, patch_conflict, prepare_start
from corral.sandbox.base import Sandbox, close_backends, get_backend, mark_run_ended
from corral.sandbox.patching import check_patch
from corral.sandbox.view import ReadOnlyView
from corral.sandbox.workspace import remove_tree
from corral.secrets.redact import REDACTOR
from corral.secrets.scanner import SCANNER
from corral.spec import AgentSpec, unknown_tools
from corral.store import RunRecord, RunStatus, Store
from corral.store.db import usage_columns
from corral.store.identity import check_identity
from corral.store.records import ApprovalRecord, Identity
from corral.tools.base import ToolDef
from corral.tools.builtin import BUILTIN_TOOLS

log = logging.getLogger("corral.runtime")

PATCH_FILE = "patch.diff"
CONTEXT_FILE = "context.txt"
"""A run's long input, in its run directory (redacted like everything corral writes)."""
#: Written (atomically) once a run's outcome is decided, before its sandbox goes: a process killed
#: while ending the run leaves it behind, and the replay finishes the run from it.
OUTCOME_FILE = "outcome.json"
_DIFF_TIMEOUT_S = 60.0
_CANCEL_WAIT_S = 30.0
# A run's usage is written to its row at most this often while it runs (for `corral runs`), and
# always when it ends; the journal's model.response events hold every call's usage anyway.
_USAGE_WRITE_EVERY_S = 1.0
#: How often a workflow waiting on light children looks for a cancel (DBOS cannot deliver one to them).
CANCEL_WATCH_S = 1.0

Listener = Callable[[str, ev.BaseEvent], None]


def new_run_id() -> str:
    """Sortable by creation time, unique without coordination: 12 chars of time, 8 of randomness."""
    stamp = int(time.time() * 1000).to_bytes(6, "big") + _random.token_bytes(5)
    return base64.b32encode(stamp).decode().lower().rstrip("=")


@dataclass
class _Outcome:
    """How a run ended, filled in as the run unwinds."""

    status: RunStatus = RunStatus.FAILED
    usage: tuple[Usage, int] | None = None
    """The run's usage and model-call count, as the engine last reported them (None: none yet)."""
    text: str | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    notes: list[str] = field(default_factory=list)
    children: ChildrenSpend = field(default_factory=ChildrenSpend)
    """What the run's children spent (their subtrees included)."""


class Runtime:
    """One per process: owns the DBOS instance and the runs this process executes.

    Use as ``async with Runtime(store) as rt: record = await rt.run(spec, task, repo)``.
    """

    def __init__(
        self,
        store: Store,
        *,
        tools: Iterable[ToolDef] = (),
        engines: Mapping[str, Engine] | None = None,
        run_queues: Sequence[str] = (),
        concurrency: int = 4,
        global_concurrency: int | None = None,
    ) -> None:
        """``run_queues``: this process is a worker of those queues (``corral worker``): it runs what is
        submitted to them, ``concurrency`` runs at once, at most ``global_concurrency`` over all their
        workers (both are the queue's, shared by its workers: the last worker to start sets them)."""
        self.store = store
        self.run_queues = tuple(workflow.check_queue_name(q) for q in run_queues)
        self._concurrency = concurrency
        self._global_concurrency = global_concurrency
        self.tools: dict[str, ToolDef] = {**BUILTIN_TOOLS, **{t.name: t for t in tools}}
        #: Engines by name that take precedence over the installed ones (an engine on an in-process model).
        self.engines: dict[str, Engine] = dict(engines or {})
        self.executor_id = recovery.new_executor_id()
        self._launched = False
        self._heartbeat: recovery.Heartbeat | None = None
        self._listeners: list[Listener] = []
        self._stopping = False  # shutting down: runs in flight are interrupted, not ended
        self._ended: dict[str, asyncio.Event] = {}  # runs someone here waits for (children), set as they end
        self._slots: dict[str, asyncio.Semaphore] = {}  # per parent run: its children running at once
        self._merging: dict[str, asyncio.Lock] = {}  # per parent run: one child's patch merged at a time
        self._ended_here: dict[str, RunRecord] = {}  # light children as they ended, for their parent to read
        self._workflow_tasks: dict[str, asyncio.Task[Any]] = {}  # run workflows executing here, by id
        self._watchers: dict[str, tuple[asyncio.Task[None], int]] = {}  # per workflow: cancel watcher, users
        self._cancelled_here: set[str] = set()  # workflows whose cancel a watcher delivered
        self._views: dict[str, ReadOnlyView] = {}  # per run executing here: the view its light children read
        self._gateways = external.Gateways()  # the model gateway of external engines, started on first use
        self._dbos_ready = False  # DBOS's tables made or migrated by this process (``enqueue``)
        store.journal.set_redactor(REDACTOR.data)

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        self.launch()
        try:
            self._heartbeat = await recovery.Heartbeat(
                self.store, self.executor_id, queues=list(self.run_queues) or None
            ).__aenter__()
        except BaseException:
            self.shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._heartbeat is not None:
                await self._heartbeat.__aexit__(None, None, None)
                self._heartbeat = None
        finally:
            try:
                try:
                    await self._gateways.close()
                finally:
                    await close_backends()  # prepared sandboxes (``sandbox.pool``) and pooled releases under way
            finally:
                self.shutdown()

    def launch(self) -> None:
        self._stopping = False
        workflow.launch(
            system_database_url=self.store.dbos_url(),
            executor_id=self.executor_id,
            execute=self._execute,
            run_queues=self.run_queues,
        )
        try:
            for queue in self.run_queues:
                workflow.register_run_queue(
                    queue, worker_concurrency=self._concurrency, global_concurrency=self._global_concurrency
                )
            self.store.register_executor(
                self.executor_id, socket.gethostname(), os.getpid(), queues=list(self.run_queues) or None
            )
        except BaseException:
            workflow.destroy()
            raise
        self._launched = True

    def shutdown(self) -> None:
        if not self._launched:
            return
        self._launched = False
        self._stopping = True
        try:
            self.store.journal.flush()
            self.store.unregister_executor(self.executor_id)
        finally:
            try:
                workflow.destroy()
            finally:
                # Scripted models this process served for its runs (imported late: the providers
                # module brings the model SDKs, which commands like `corral cancel` never need).
                from corral.models.providers import close_served_models

                try:
                    close_served_models()
                finally:
                    INTERPRETER.close()  # the program interpreter's worker processes, if any started

    def subscribe(self, listener: Listener) -> None:
        """Receive every event this process emits, as it is emitted (for live views)."""
        self._listeners.append(listener)

    # -- submitting and waiting -------------------------------------------------------------------

    def check_spec(self, spec: AgentSpec, *, environment: bool = True) -> None:
        """Fail before anything is recorded if the run could not start (unknown tool, engine, backend, key).

        ``environment``: also check the secrets and the model's API key in this process's environment
        (not for a run submitted to workers, whose environment has them).
        """
        unknown = unknown_tools(spec.tools, tuple(self.tools))
        if unknown:
            raise SpecError(f"agent '{spec.name}': field 'tools': unknown tool(s) {', '.join(unknown)}")
        self._engine(spec.engine)
        get_backend(spec.sandbox.backend)
        check = rule_of_two.assess(spec, self.tools)
        if check.verdict == "refused":
            raise SpecError(
                f"agent '{spec.name}' breaks the Rule of Two: it processes untrusted input, holds sensitive "
                "data and acts outside, and policy lets its outbound actions run without a person",
                hint=f"`corral check {spec.name}` says why; {check.advice()}",
            )
        if not environment:
            return
        missing = [name for name in spec.secrets if not os.environ.get(name)]
        if missing:  # like a missing API key: a usage error, before anything is recorded
            raise SpecError(
                f"agent '{spec.name}': secret(s) {', '.join(missing)} not set in the environment",
                hint="export them before starting the run",
            )
        from corral.models.providers import api_key_for, resolve_target

        api_key_for(resolve_target(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env))

    async def submit(
        self,
        spec: AgentSpec,
        task: str,
        repo: Path,
        *,
        parent_id: str | None = None,
        continue_from: str | None = None,
        context: str | None = None,
    ) -> RunRecord:
        """Record a run and start its workflow in this process; returns at once.

        ``context`` is a long input kept out of the prompt (a file, a listing, a document): the
        agent's programs read it as ``context`` and the model sees its size and first lines. It
        needs the ``eval`` tool.

        ``continue_from`` names a finished run this one follows up (``corral continue``): the new
        run is its child, its conversation goes on from where that run's ended, and its workspace
        starts from ``repo`` plus the patches of that run and of the runs it continued. Its own
        patch holds only its own changes (it applies on top of theirs).
        """
        self.check_spec(spec)
        record = await self._record(spec, task, repo, parent_id=parent_id, continue_from=continue_from, context=context)
        await workflow.start(record.id)
        return record

    async def enqueue(
        self,
        spec: AgentSpec,
        task: str,
        repo: Path,
        *,
        queue: str = workflow.RUN_QUEUE,
        continue_from: str | None = None,
        context: str | None = None,
        team_id: str | None = None,
        submitted_by: str | None = None,
        identity: Identity | None = None,
    ) -> RunRecord:
        """Record a run and put it on the run queue ``queue`` for ``corral worker``s; returns at once.
        ``team_id`` and ``submitted_by``: whose it is (the API's caller); ``identity``: who it acts as
        (its secrets must be among the identity's grants).

        Needs no launched runtime (a submitting CLI, the API server). On Postgres, where the store and
        DBOS share a database, the run's row and its queued workflow are committed in one
        transaction; on SQLite (two files) the row first, and a run that could not be queued is
        recorded as failed, saying why.
        """
        workflow.check_queue_name(queue)
        self.check_spec(spec, environment=False)
        if identity is not None:
            check_identity(identity, spec.all_secrets(), spec.name)
        dbos_url = self.store.dbos_url()
        if not self._dbos_ready:
            await asyncio.to_thread(workflow.migrate, dbos_url)  # a worker may never have opened this database
            self._dbos_ready = True
        shared = dbos_url == self.store.url
        record = await self._record(
            spec,
            task,
            repo,
            continue_from=continue_from,
            context=context,
            queue=queue,
            owner={
                "team_id": team_id,
                "submitted_by": submitted_by,
                "identity": _as_json(identity),
            },
            also=(lambda conn, run_id: workflow.enqueue_run(dbos_url, run_id, queue, connection=conn))
            if shared
            else None,
        )
        if not shared:
            try:
                await asyncio.to_thread(workflow.enqueue_run, dbos_url, record.id, queue)
            except Exception as err:
                reason = f"the run could not be queued on {queue!r}: {type(err).__name__}: {err}"
                self._finish(record.id, _Outcome(error=reason, error_type="QueueError"), {})
                raise StoreError(reason) from err
        return record

    async def _record(
        self,
        spec: AgentSpec,
        task: str,
        repo: Path,
        *,
        parent_id: str | None = None,
        continue_from: str | None = None,
        context: str | None = None,
        queue: str | None = None,
        owner: Mapping[str, Any] | None = None,
        also: Callable[[Any, str], None] | None = None,
    ) -> RunRecord:
        """Check the task and the repository and record the run: run by this process, or ``queue``d
        (``also(connection, run_id)`` then runs in the transaction that writes its row)."""
        try:
            repo = repo.expanduser().resolve()  # noqa: ASYNC240 - path arithmetic and one stat
            is_dir = repo.is_dir()
        except (OSError, ValueError) as err:  # a name the file system cannot hold (a NUL, a lone surrogate)
            raise UsageError(f"repository {str(repo)!r} cannot be a path here: {err}") from None
        if not is_dir:
            raise UsageError(f"repository {repo} is not a directory")
        if not task.strip():
            raise UsageError("the task is empty")
        if context is not None and EVAL_TOOL not in spec.tools:
            raise UsageError(
                f"agent '{spec.name}' cannot read a long input: programs read it, and its tools lack eval",
                hint='add "eval" to the agent\'s tools',
            )
        continues: RunRecord | None = None
        if continue_from is not None:
            continues = self.store.get_run(continue_from)
            if not continues.status.finished:
                raise UsageError(
                    f"run {continues.id} has not finished ({continues.display_status}); "
                    "only a finished run can be continued"
                )
            parent_id = continues.id
            await _check_start(repo, self._patches_before(continues.id))
        run_id = new_run_id()
        parent = self.store.get_run(parent_id) if parent_id else None
        run_dir = Path(self.store.runs_dir / run_id)
        if context is not None:  # before the workflow can start: the run reads it (again, when it resumes)
            run_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - one local write
            (run_dir / CONTEXT_FILE).write_text(REDACTOR(context), encoding="utf-8")
        return self.store.create_run(
            id=run_id,
            parent_id=parent_id,
            continues_id=continues.id if continues else None,
            root_id=parent.root_id if parent else run_id,
            agent=spec.name,
            spec=spec.model_dump(mode="json"),
            spec_hash=spec.content_hash(),
            task=REDACTOR(task),
            repo=str(repo),
            run_dir=str(run_dir),
            executor_id=None if queue else self.executor_id,
            queue=queue,
            also=None if also is None else lambda conn: also(conn, run_id),
            **(owner or {}),
        )

    async def wait(self, run_id: str, *, timeout_s: float | None = None, poll_s: float = 0.1) -> RunRecord:
        """Wait until the run has finished (whichever process executes it)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.store.get_run(run_id)
            if record.status.finished:
                self.store.journal.flush()
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise RunTimeoutError(run_id, timeout_s or 0.0)
            await asyncio.sleep(poll_s)

    async def run(self, spec: AgentSpec, task: str, repo: Path) -> RunRecord:
        record = await self.submit(spec, task, repo)
        return await self.wait(record.id)

    # -- recovery and cancellation ----------------------------------------------------------------

    def interrupted_runs(self) -> list[RunRecord]:
        """Unfinished runs whose executing process is gone."""
        return self.store.interrupted_runs(exclude_executor=self.executor_id)

    async def resume(self, run_id: str | None = None) -> list[str]:
        """Continue interrupted runs (all of them, or one) in this process; returns their ids."""
        interrupted = self.interrupted_runs()
        if run_id is not None:
            record = self.store.get_run(run_id)
            if record.status.finished:
                raise UsageError(
                    f"run {record.id} already {record.status.value}; only interrupted runs can be resumed",
                    hint="start a new run with `corral run`",
                )
            if record.id not in {r.id for r in interrupted}:
                raise UsageError(f"run {record.id} is being executed by {record.executor_id}; it is not interrupted")
            parent = record.dispatched_by
            if parent is not None:
                raise UsageError(
                    f"run {record.id} is a subagent of run {parent}: it resumes with it",
                    hint=f"`corral resume {record.root_id}`",
                )
            candidates = [record]
        else:
            # A dispatched child resumes with its parent, which finds it again by its id; a run submitted
            # to a queue, with that queue's workers (unless named).
            candidates = [r for r in interrupted if r.dispatched_by is None and r.queue is None]
        for record in candidates:
            self.store.update_run(record.id, executor_id=self.executor_id)
            await workflow.resume(record.id)
        recovery.forget_dead_executors(self.store, exclude=self.executor_id)
        return [r.id for r in candidates]

    def recover_workers(self) -> list[str]:
        """A worker's housekeeping: put the workflows of gone workers of its queues back on their queues
        (DBOS's executor recovery; any worker of the queue then takes each, once), then forget those
        workers. Safe from every worker at once. Returns the executors recovered."""
        gone = recovery.dead_workers(self.store, self.run_queues, exclude=self.executor_id)
        if not gone:
            return []
        recovered = workflow.recover_executors(gone)
        log.info("recovered %d workflow(s) of gone executor(s) %s", recovered, ", ".join(gone))
        for executor_id in gone:
            self.store.unregister_executor(executor_id)
        return gone

    # -- approvals --------------------------------------------------------------------------------

    def approvals(self) -> list[ApprovalRecord]:
        """The pending approval requests of this store's runs, oldest first."""
        return self.store.approvals()

    def decide(self, approval_id: str, approve: bool, reason: str | None = None, by: str = "") -> ApprovalRecord:
        """Approve or deny a pending request; the run waiting on it continues (within a second if it runs)."""
        return approvals.decide(self.store, approval_id, approve=approve, reason=reason, by=by or approvals.who_am_i())

    async def _ask(self, spec: AgentSpec, action: Action, decision: Decision, call_id: str) -> Decision:
        return await approvals.ask_person(
            self.store,
            lambda event: self._emit(action.run_id, event),
            action=action,
            decision=decision,
            call_id=call_id,
            timeout_s=spec.policy.approval_timeout_s,
        )

    async def cancel(self, run_id: str, *, wait_s: float = _CANCEL_WAIT_S) -> RunRecord:
        """Stop a run wherever it executes; returns its record once it has ended (or ``wait_s`` passed).

        The executing process notices within about a second, stops the step in flight (a running
        command is killed), keeps the patch of the work done so far, removes the sandbox and records
        the run ``cancelled``. A run whose process is gone is ended here.
        """
        record = self.store.get_run(run_id)
        if record.status.finished:
            raise UsageError(f"run {record.id} already {record.status.value}")
        sandbox_state = workflow.request_cancel(self.store.dbos_url(), record.id)
        approvals.withdraw(self.store, record.id)  # a run waiting on a person wakes up to its cancel
        if record.waiting_in_queue or record.id in {r.id for r in self.interrupted_runs()}:
            # Gone from its queue (DBOS's cancel), or its executor is gone: nobody else will end it.
            await self._end_abandoned(record, sandbox_state)
            await self._end_abandoned_children(record.id)
            return self.store.get_run(record.id)
        with contextlib.suppress(RunTimeoutError):
            return await self.wait(record.id, timeout_s=wait_s)
        return self.store.get_run(record.id)

    async def _end_abandoned_children(self, run_id: str) -> None:
        """The unfinished runs dispatched under a cancelled run whose process is gone end cancelled too
        (a live process cancels its children itself, as their parent's program stops)."""
        for child in self.store.run_trees([run_id])[1:]:
            if child.status.finished or not child.interrupted:
                continue
            state = None
            if not runs_light(AgentSpec.model_validate(child.spec), self.tools):  # it has a workflow
                state = workflow.request_cancel(self.store.dbos_url(), child.id)
            approvals.withdraw(self.store, child.id)
            await self._end_abandoned(child, state)

    async def _end_abandoned(self, record: RunRecord, sandbox_state: dict[str, Any] | None) -> None:
        """Finish a cancelled run whose executor is gone: keep its patch, remove its sandbox."""
        decided = _read_outcome(Path(record.run_dir))
        if decided is not None:  # it had ended before the cancel; its process died recording that
            self._finish(record.id, *decided)
            return
        outcome = _Outcome(RunStatus.CANCELLED, error="cancelled by user", error_type="Cancelled")
        sandbox: Sandbox | None = None
        if sandbox_state is not None:
            # Reading the diff and removing the sandbox need no secrets and no network.
            try:
                backend = get_backend(AgentSpec.model_validate(record.spec).sandbox.backend)
                sandbox = await backend.attach({**sandbox_state, "env": {}, "secrets": (), "on_egress": None})
            except Exception as err:
                outcome.notes.append(f"the sandbox could not be re-opened to keep its patch: {err}")
        await self._conclude(record, sandbox, outcome)

    # -- follow-up runs ---------------------------------------------------------------------------

    def _chain(self, run_id: str | None) -> list[RunRecord]:
        """``run_id`` and the runs it continues, the first run first; [] for None."""
        chain: list[RunRecord] = []
        while run_id is not None:
            record = self.store.get_run(run_id)
            chain.append(record)
            run_id = record.continues_id
        return chain[::-1]

    def _patches_before(self, run_id: str | None) -> list[tuple[str, str]]:
        """(run id, patch) of ``run_id`` and the runs it continues, in the order they apply."""
        return [(record.id, run_patch(record)) for record in self._chain(run_id)]

    def _conversation_before(self, run_id: str | None) -> Conversation | None:
        """The conversation of ``run_id`` and the runs it continues, from their journals; None for None."""
        chain = self._chain(run_id)
        if not chain:
            return None
        messages: list[dict[str, Any]] = []
        input_tokens = 0
        tool_results: dict[str, ev.ToolReturned] = {}
        for record in chain:
            for entry in self.store.events(record.id):
                match entry.event:
                    case ev.ModelRequested(new_messages=new_messages):
                        messages.extend(new_messages)
                    case ev.ModelResponded(parts=parts, finish_reason=reason, input_tokens=tokens):
                        messages.append({"kind": "response", "parts": parts, "finish_reason": reason})
                        input_tokens = tokens
                    case ev.ToolReturned(call_id=call_id):
                        tool_results[call_id] = entry.event
                    case _:
                        pass
        return Conversation(
            runs=tuple(record.id for record in chain),
            messages=tuple(messages),
            ended=chain[-1].status.value,
            input_tokens=input_tokens,
            tool_results=tool_results,
        )

    # -- executing one run (inside its workflow) --------------------------------------------------

    def _emit(self, run_id: str, event: ev.BaseEvent) -> None:
        self.store.journal.append(run_id, event)
        for listener in self._listeners:
            try:
                listener(run_id, event)
            except Exception:
                log.exception("event listener failed")

    async def _execute(
        self,
        run_id: str,
        *,
        view: Sandbox | None = None,
        depth: int | None = None,
        record: RunRecord | None = None,
        fresh: bool = False,
        workflow_id: str | None = None,
        spec: AgentSpec | None = None,
    ) -> dict[str, Any]:
        """Execute a run to its end: its workflow's body, or (``view`` given) a light child inside its parent.

        A light child reads its parent's workspace through ``view``: no sandbox of its own, and its
        model and tool calls are plain calls (the parent finds its result in the store if the process
        dies after it ended, and runs it again if before).
        """
        if view is None:  # this is the run's own workflow: its task, for a cancel DBOS cannot deliver
            workflow_id = run_id
            task = asyncio.current_task()
            if task is not None:
                self._workflow_tasks[run_id] = task
        try:
            return await self._execute_run(
                run_id,
                view=view,
                depth=depth,
                record=record,
                fresh=fresh,
                workflow_id=workflow_id or run_id,
                known_spec=spec,
            )
        finally:
            if view is None:
                self._workflow_tasks.pop(run_id, None)
                self._cancelled_here.discard(run_id)

    async def _execute_run(
        self,
        run_id: str,
        *,
        view: Sandbox | None,
        depth: int | None,
        record: RunRecord | None,
        fresh: bool,
        workflow_id: str,
        known_spec: AgentSpec | None = None,
    ) -> dict[str, Any]:
        if record is None:
            record = self.store.get_run(run_id)
        if record.status.finished:
            return {"status": record.status.value}
        if depth is None:
            depth = self._depth(record)
        # A fresh light child's spec is the one its parent just made (the row holds its dump).
        spec = known_spec if known_spec is not None else AgentSpec.model_validate(record.spec)
        resumed = record.started_at is not None and not fresh
        started_at = record.started_at or time.time()
        if not fresh:  # a fresh light child's row was made running, by this executor
            self.store.update_run(run_id, status=RunStatus.RUNNING, started_at=started_at, executor_id=self.executor_id)
        self._emit(
            run_id,
            ev.RunStarted(
                key="run.started",
                ts=started_at,
                agent=spec.name,
                task=record.task,
                model=spec.model,
                engine=spec.engine,
                spec_hash=record.spec_hash,
                repo=record.repo,
                parent_id=record.parent_id,
                identity=_as_json(record.identity),
            ),
        )
        check = rule_of_two.assess(spec, self.tools)
        if check.verdict in ("gated", "acknowledged"):  # all three: say on every run how it is held in check
            self._emit(run_id, ev.RuleOfTwoHeld(key="rule_of_two", verdict=check.verdict, ungated=list(check.ungated)))
        if resumed:
            self._emit(run_id, ev.RunResumed(key=f"run.resumed:{self.executor_id}", executor_id=self.executor_id))
        decided = None if view is not None else _read_outcome(Path(record.run_dir))
        if decided is not None:  # the run had ended when its process died: only the record is missing
            self._finish(record.id, *decided)
            return {"status": decided[0].status.value}
        outcome = _Outcome()
        budget = BudgetClock(spec.budget, started_at, outcome.children)
        sandbox: Sandbox | None = None
        try:
            engine = self._engine(spec.engine)
            extras: dict[str, Any] = {}
            if engine.external and view is None:  # its CLI, and its one way out: the model gateway
                extras = {"mounts": engine.sandbox_mounts(), "routes": external.routes(await self._gateways.get())}
            opener = functools.partial(
                open_sandbox,
                record,
                spec,
                REDACTOR,
                lambda event: self._emit(run_id, event),
                start_patches=self._patches_before(record.continues_id),
                notes=outcome.notes,
                **extras,
            )
            if view is not None:
                sandbox = view
            elif record.dispatched_by is not None:  # a writing child: its copy is made on first write or command
                sandbox = LazySandbox(Path(record.repo), opener)
            else:
                sandbox = await opener()
            steps: Steps = workflow.DbosSteps() if view is None else LocalSteps(run_id)
            result = await self._run_engine(
                record,
                spec,
                sandbox,
                budget,
                outcome,
                steps=steps,
                depth=depth,
                resumed=resumed,
                workflow_id=workflow_id,
            )
            outcome.status, outcome.text, outcome.output = RunStatus.SUCCEEDED, result.text, result.output
        except BudgetExceededError as err:
            self._emit(
                run_id, ev.BudgetExceeded(key="budget.exceeded", limit=err.limit, value=err.value, maximum=err.maximum)
            )
            outcome.error, outcome.error_type = err.message, type(err).__name__
        except CorralError as err:
            outcome.error, outcome.error_type = REDACTOR(err.message), type(err).__name__
        except Exception as err:
            log.exception("run %s failed", run_id)
            outcome.error, outcome.error_type = REDACTOR(f"{type(err).__name__}: {err}"), type(err).__name__
        except BaseException as exc:
            # A light child is cancelled with its parent's program (a limit, a cancel); it is only
            # interrupted when the whole process stops, and then runs again when its parent resumes.
            if view is not None or run_id in self._cancelled_here:
                cancelled = not self._stopping
            else:
                cancelled = await workflow.was_cancelled(self.store.dbos_url(), run_id, exc)
            if not cancelled:
                # The process is going away (Ctrl-C, shutdown): the run is interrupted, not ended.
                # Its sandbox's files stay for `corral resume`; its processes, mounts and cgroups go now.
                if sandbox is not None:
                    await asyncio.shield(_suspend(sandbox, run_id))
                raise
            outcome.status, outcome.error, outcome.error_type = RunStatus.CANCELLED, "cancelled by user", "Cancelled"
            await asyncio.shield(self._conclude(record, sandbox, outcome))
            raise
        await asyncio.shield(self._conclude(record, sandbox, outcome))
        return {"status": outcome.status.value}

    def _engine(self, name: str) -> Engine:
        return self.engines[name] if name in self.engines else get_engine(name)

    def _depth(self, record: RunRecord) -> int:
        """How many dispatches above ``record`` its tree has (a follow-up run is not a dispatch)."""
        depth = 0
        while record.dispatched_by is not None:
            depth += 1
            record = self.store.get_run(record.parent_id or "")
        return depth

    async def _run_engine(
        self,
        record: RunRecord,
        spec: AgentSpec,
        sandbox: Sandbox,
        budget: BudgetClock,
        outcome: _Outcome,
        *,
        steps: Steps,
        depth: int,
        resumed: bool,
        workflow_id: str,
    ) -> EngineResult:
        engine = self._engine(spec.engine)
        written_at = 0.0 if record.dispatched_by is None else time.monotonic()  # a child's: when it ends

        def on_usage(usage: Usage, turns: int) -> None:
            nonlocal written_at
            outcome.usage = (usage, turns)
            now = time.monotonic()
            if now - written_at >= _USAGE_WRITE_EVERY_S:
                self.store.set_usage(record.id, usage, turns)
                written_at = now

        ctx = EngineContext(
            run_id=record.id,
            spec=spec,
            task=record.task,
            sandbox=sandbox,
            steps=steps,
            emit=lambda event: self._emit(record.id, event),
            redact=REDACTOR,
            tools=self.tools,
            budget=budget,
            on_usage=on_usage,
            history=self._conversation_before(record.continues_id),
            ask=functools.partial(self._ask, spec),
            context=None if isinstance(sandbox, ReadOnlyView) else _read_context(record),
            depth=depth,
        )
        # A run that never ran before has no children yet: its dispatches need not look for them.
        ctx.dispatch = functools.partial(
            self._dispatch, record, spec, sandbox, budget, depth, outcome, resumed, workflow_id
        )
        async with contextlib.AsyncExitStack() as stack:
            if engine.external:  # its model calls go through the gateway, with a key for this run only
                gateway = await self._gateways.get()
                emit = ctx.emit
                permit = HookPolicy(engine, ctx) if isinstance(engine, ExternalEngine) else None
                # A resumed run's calls are numbered after the ones its journal holds, its budget counts them.
                spent = external.spent_before(e.event for e in self.store.events(record.id)) if resumed else None
                access = external.model_access(gateway, record.id, spec, budget, emit, on_usage, permit, spent)
                ctx.models = await stack.enter_async_context(access)
            remaining = budget.remaining_s()

            def running() -> Awaitable[EngineResult]:
                if not engine.external:  # its waits are DBOS steps, which a cancel preempts
                    return engine.run(ctx)
                # A CLI session is one long wait of no step: it stops when the run is cancelled, too.
                return workflow.preemptible(self.store.dbos_url(), workflow_id, engine.run(ctx))

            if remaining is None:
                return await running()
            try:
                # The deadline bounds everything the engine waits for: model calls, commands, retries.
                async with asyncio.timeout(remaining):
                    return await running()
            except TimeoutError:
                if budget.remaining_s() == 0.0:
                    raise budget.wall_time_exceeded() from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover - the block returns or raises

    # -- children: the runs programs dispatch with task() -------------------------------------------

    async def _dispatch(
        self,
        parent: RunRecord,
        parent_spec: AgentSpec,
        sandbox: Sandbox,
        budget: BudgetClock,
        depth: int,
        outcome: _Outcome,
        resumed: bool,
        workflow_id: str,
        request: ChildRequest,
    ) -> ChildResult:
        """Run the child ``request`` asks for to its end (see ``runtime/children.py``), or find it ended.

        A child that ended before (the parent is being resumed) is not run again: its result comes
        from the store. One that was interrupted runs again (light) or resumes (workflow).
        """
        child_id = child_run_id(parent.id, request.call_id)
        light = runs_light(request.spec, self.tools)
        self._emit(
            parent.id,
            ev.TaskDispatched(
                key=f"task:{request.call_id}:dispatch",
                call_id=request.call_id,
                child_id=child_id,
                agent=request.spec.name,
                label=request.label,
                mode="light" if light else "workflow",
            ),
        )
        # Only a resumed run can find a child it started before (a new run's dispatches skip the look).
        existing = self.store.find_run(child_id) if resumed else None
        if existing is not None and existing.status.finished:
            return await self._child_ended(parent, sandbox, budget, request.call_id, existing, reused=True)
        if existing is not None:  # started before this run resumed: is its process gone?
            existing = self.store.get_run(child_id)
        slots = self._slots.setdefault(parent.id, asyncio.Semaphore(parent_spec.programs.max_concurrent))
        async with slots:
            record, spec = existing, None
            if not light:  # a writing child copies this run's workspace, which must be this run's own
                await sandbox.open()
            if record is None:
                own = outcome.usage[0] if outcome.usage else Usage()
                # The tree's limits hold in every subtree: what the child has left to spend, and how
                # deep it may go (a subagent type's own max_depth cannot take it deeper).
                depth_limit = min(request.spec.programs.max_depth, parent_spec.programs.max_depth)
                spec = request.spec.model_copy(
                    update={
                        "budget": budget.share(request.spec.budget, own),
                        "programs": request.spec.programs.model_copy(update={"max_depth": depth_limit}),
                    }
                )
                fresh = {"status": RunStatus.RUNNING.value, "started_at": time.time()} if light else {}
                record = self.store.create_run(
                    **fresh,
                    defer=light,  # a light child's row goes with its journal's group commit
                    id=child_id,
                    parent_id=parent.id,
                    root_id=parent.root_id,
                    agent=spec.name,
                    spec=spec.model_dump(mode="json"),
                    spec_hash=spec.content_hash(),
                    task=REDACTOR(request.task),
                    repo=str(sandbox.workspace),
                    run_dir=str(self.store.runs_dir / child_id),
                    executor_id=self.executor_id,
                    queue=parent.queue,  # the tree's: its workers take the child's workflow
                    # Whose the tree is and who it acts as: the same for every run in it.
                    team_id=parent.team_id,
                    submitted_by=parent.submitted_by,
                    identity=_as_json(parent.identity),
                )
            if light:
                view = sandbox if isinstance(sandbox, ReadOnlyView) else self._view_of(parent.id, sandbox)
                async with self._watching(workflow_id):
                    await self._execute(
                        child_id,
                        view=view,
                        depth=depth + 1,
                        record=record,
                        fresh=existing is None,
                        workflow_id=workflow_id,
                        spec=spec,
                    )
            else:
                await self._run_child_workflow(child_id, depth + 1, existing, parent.queue)
        ended = self._ended_here.pop(child_id, None) or self.store.find_run(child_id)
        assert ended is not None  # made above, and runs are only removed by `corral rm` of a whole tree
        return await self._child_ended(parent, sandbox, budget, request.call_id, ended)

    def _view_of(self, run_id: str, sandbox: Sandbox) -> ReadOnlyView:
        """The read-only view of a run's workspace its light children share (one per run, made once)."""
        if isinstance(sandbox, LazySandbox):  # what it reads now: its parent's workspace, or its own copy
            sandbox = sandbox.reader()
            if isinstance(sandbox, ReadOnlyView):
                return sandbox
        view = self._views.get(run_id)
        if view is None or view.source is not sandbox:
            view = self._views[run_id] = ReadOnlyView(sandbox)
        return view

    @contextlib.asynccontextmanager
    async def _watching(self, workflow_id: str) -> AsyncIterator[None]:
        """While light children run, watch their workflow for a cancel.

        DBOS delivers a cancel at a step boundary or by preempting the step in flight; a workflow that
        only waits on light children (which take no steps) would not hear of it until they all end. One
        watcher per workflow reads its status each second and cancels its task.
        """
        watcher, users = self._watchers.get(workflow_id, (None, 0))
        if watcher is None:
            watcher = asyncio.create_task(self._watch_for_cancel(workflow_id))
        self._watchers[workflow_id] = (watcher, users + 1)
        try:
            yield
        finally:
            watcher, users = self._watchers[workflow_id]
            if users == 1:
                del self._watchers[workflow_id]
                watcher.cancel()
            else:
                self._watchers[workflow_id] = (watcher, users - 1)

    async def _watch_for_cancel(self, workflow_id: str) -> None:
        while True:
            await asyncio.sleep(CANCEL_WATCH_S)
            try:
                found = await workflow.status(self.store.dbos_url(), workflow_id)
            except Exception:  # a failed read is not a cancel; the next one may answer, but say so
                log.warning("run %s: looking for a cancel failed; trying again", workflow_id, exc_info=True)
                continue
            if found == "CANCELLED":
                task = self._workflow_tasks.get(workflow_id)
                if task is not None:
                    self._cancelled_here.add(workflow_id)  # its task's CancelledError is this cancel
                    task.cancel()
                return

    async def _run_child_workflow(
        self, child_id: str, depth: int, existing: RunRecord | None, tree_queue: str | None
    ) -> None:
        """Queue (or resume) the child's workflow and wait for it to end; if the wait is cancelled by
        its parent (a limit, a cancel) rather than by this process stopping, the child is cancelled too."""
        ended = self._ended.setdefault(child_id, asyncio.Event())
        try:
            if existing is None:
                await workflow.enqueue_child(child_id, depth, tree_queue)
            elif existing.interrupted:  # its process died with its parent's: this process takes it on
                self.store.update_run(child_id, executor_id=self.executor_id)
                await workflow.resume(child_id)
            while not self.store.get_run(child_id).status.finished:
                with contextlib.suppress(TimeoutError):  # another process may run it: look again each second
                    async with asyncio.timeout(1.0):
                        await ended.wait()
        except BaseException:
            if not self._stopping and not self.store.get_run(child_id).status.finished:
                await asyncio.shield(asyncio.to_thread(workflow.request_cancel, self.store.dbos_url(), child_id))
            raise
        finally:
            self._ended.pop(child_id, None)

    async def _child_ended(
        self,
        parent: RunRecord,
        sandbox: Sandbox,
        budget: BudgetClock,
        call_id: str,
        child: RunRecord,
        *,
        reused: bool = False,
    ) -> ChildResult:
        """What the program gets from an ended child; a writer's patch is merged into the parent's workspace."""
        result = child.result or {}
        patch = str(result.get("patch") or "")
        files = int(result.get("files_changed") or 0)
        merged: bool | None = None
        conflict: str | None = None
        if patch and child.status is RunStatus.SUCCEEDED:
            async with self._merging.setdefault(parent.id, asyncio.Lock()):
                report = await sandbox.apply_patch(patch)
            merged = report.applies or report.already_applied  # already there: merged before the parent resumed
            if not merged:
                conflict = REDACTOR("; ".join(report.problems[:5]) or "git apply failed")
        spent = Usage.model_validate(result["tree_usage"]) if result.get("tree_usage") else child.usage
        budget.children.add(spent)
        self._emit(
            parent.id,
            ev.TaskFinished(
                key=f"task:{call_id}:finished",
                call_id=call_id,
                child_id=child.id,
                status=child.status.value,
                reused=reused,
                patch_files=files,
                merged=merged,
                conflict=conflict,
                input_tokens=spent.input_tokens,
                output_tokens=spent.output_tokens,
                cost_usd=spent.cost_usd,
            ),
        )
        return ChildResult(
            run_id=child.id,
            status=child.status.value,
            text=result.get("text"),
            output=result.get("output"),
            error=child.error,
            patch_files=files,
            conflict=conflict,
        )

    async def _conclude(self, record: RunRecord, sandbox: Sandbox | None, outcome: _Outcome) -> None:
        """End a run on every path: keep its patch, remove its sandbox, then record the outcome.

        The sandbox goes before the status changes: whoever waits for the run must not see it
        finished while its processes and files are still being removed.
        """
        patch = ""
        if sandbox is not None:
            try:
                patch = REDACTOR(await asyncio.wait_for(sandbox.diff(), _DIFF_TIMEOUT_S))
                if sandbox.left_out:  # a virtualenv, node_modules: say what the patch does not hold
                    outcome.notes.append(REDACTOR(sandbox.left_out))
            except Exception as err:
                log.exception("run %s: reading the workspace's changes failed", record.id)
                outcome.notes.append(f"the patch could not be read: {type(err).__name__}: {err}")
        files = sum(1 for line in patch.splitlines() if line.startswith("diff --git "))
        result = REDACTOR.data(
            {
                "text": outcome.text,
                "output": outcome.output,
                "patch": patch,
                "files_changed": files,
                "partial": outcome.status is not RunStatus.SUCCEEDED,
                "notes": outcome.notes,
            }
        )
        if outcome.children.usage != Usage():  # what the run and its children spent: its parent's share
            own = outcome.usage[0] if outcome.usage else Usage()
            result["tree_usage"] = (own + outcome.children.usage).model_dump()
        if record.spec.get("scan_secrets", True):
            try:
                self._scan_result(record.id, result)
            except Exception as err:  # never let an unscanned answer through; keep the patch, flagged
                log.exception("run %s: the secret scan of its result failed", record.id)
                unscanned = {"type": "not scanned (the scan failed)", "line": 0, "file": "(the whole patch)"}
                result.update(text=None, output=None, patch_secrets=[unscanned])
                result["notes"].append(
                    f"the secret scan failed ({type(err).__name__}): the final text and output were withheld "
                    "and the patch is unscanned"
                )
        run_dir = Path(record.run_dir)
        light = isinstance(sandbox, ReadOnlyView)
        if light:
            # A light child owns no sandbox and leaves no files: its row is its record, and if the process
            # dies before the row is written its parent runs it again.
            sandbox = None
        else:
            run_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - small local writes
            (run_dir / PATCH_FILE).write_text(patch)
            _write_outcome(run_dir, outcome, result)
            # From here the run can never resume: if this process dies before destroy() completes, the
            # sweep removes what is left, and a replay finishes the run from its outcome file.
            mark_run_ended(run_dir)
        if sandbox is not None:
            try:
                await sandbox.destroy()
            except Exception:
                log.exception("destroying the sandbox of run %s failed", record.id)
                result["notes"].append("the sandbox could not be removed; `corral sandbox prune` retries")
            else:
                await _remove_start(run_dir)
        for table in (self._views, self._slots, self._merging):  # what its children shared
            table.pop(record.id, None)
        self._finish(record.id, outcome, result, record=record, defer=light)

    def _scan_result(self, run_id: str, result: dict[str, Any]) -> None:
        """Secrets nobody registered: replaced in the final text and typed output, flagged in the patch.

        The patch is the agent's work as it stands, so it is never changed: its findings are kept in
        ``patch_secrets`` for ``corral run``, ``corral show`` and whoever applies it to see.
        """
        if result["text"]:
            scanned = SCANNER.scan(result["text"])
            result["text"] = scanned.text
            if scanned.findings:
                findings = [f.to_json() for f in scanned.findings]
                self._emit(run_id, ev.SecretsDetected(key="secrets:result", where="result", findings=findings))
        if result["output"] is not None:
            result["output"], found = SCANNER.scan_data(result["output"])
            if found:
                self._emit(run_id, ev.SecretsDetected(key="secrets:output", where="output", findings=found))
        patch_secrets = [f.to_json() for f in SCANNER.scan_patch(result["patch"])]
        result["patch_secrets"] = patch_secrets
        if patch_secrets:
            self._emit(run_id, ev.SecretsDetected(key="secrets:patch", where="patch", findings=patch_secrets))

    def _finish(
        self,
        run_id: str,
        outcome: _Outcome,
        result: dict[str, Any],
        *,
        record: RunRecord | None = None,
        defer: bool = False,
    ) -> None:
        """Record how the run ended: its row (status, result, usage) and the closing ``run.finished`` event.

        ``record`` is the run as its execution here read it (unfinished: this executor owns it); without
        it the row is read again, and a run recorded finished meanwhile is left as it is.
        """
        if record is None:
            record = self.store.find_run(run_id)
            if record is None or record.status.finished:
                return
        finished_at = time.time()
        usage, turns = outcome.usage or (record.usage, record.turns)
        self.store.update_run(  # one write: the outcome, and the usage it ended with
            run_id,
            defer=defer,  # a light child's row goes with its journal (its parent reads its end in memory)
            status=outcome.status,
            result=result,
            error=outcome.error,
            error_type=outcome.error_type,
            finished_at=finished_at,
            **usage_columns(usage, turns),
        )
        self._emit(
            run_id,
            ev.RunFinished(
                key="run.finished",
                status=outcome.status.value,
                text=result.get("text"),
                output=result.get("output"),
                patch_files=result.get("files_changed", 0),
                error=outcome.error,
                error_type=outcome.error_type,
                turns=turns,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=usage.cost_usd,
            ),
        )
        if record.dispatched_by is None:  # a root's journal is whole once it is seen finished
            self.store.journal.flush()
        if defer:  # its row is not committed yet: its parent, in this process, reads its end from here
            self._ended_here[run_id] = record.model_copy(
                update={
                    "status": outcome.status,
                    "result": result,
                    "error": outcome.error,
                    "error_type": outcome.error_type,
                    "finished_at": finished_at,
                    "usage": usage,
                    "turns": turns,
                }
            )
        ended = self._ended.get(run_id)
        if ended is not None:  # a parent in this process waits for this child
            ended.set()


async def _remove_start(run_dir: Path) -> None:
    """A follow-up's starting tree (see ``prepare_start``) is not needed once its sandbox is gone."""
    start = run_dir / START_DIRNAME
    if start.exists():
        await remove_tree(start)


def _read_context(record: RunRecord) -> str | None:
    """The run's long input (``submit(context=...)``), None when it has none."""
    try:
        return (Path(record.run_dir) / CONTEXT_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def run_patch(record: RunRecord) -> str:
    """The patch a run left: its result's, else ``patch.diff`` in its run directory; "" when none."""
    patch = (record.result or {}).get("patch")
    if patch:
        return str(patch)
    try:
        return (Path(record.run_dir) / PATCH_FILE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return ""


async def _check_start(repo: Path, patches: list[tuple[str, str]]) -> None:
    """Refuse a follow-up now (not once it runs) if its starting patches conflict with ``repo``."""
    applicable = [(run_id, patch) for run_id, patch in patches if patch]
    if len(applicable) == 1:  # one patch: ask git about the repository itself, no copy needed
        ((run_id, patch),) = applicable
        report = await check_patch(repo, patch)
        if report.applies or report.already_applied:
            return
        conflict = patch_conflict(run_id, repo, report.problems)
        raise UsageError(conflict.message, hint=conflict.hint)
    with tempfile.TemporaryDirectory(prefix="corral-start-check-") as scratch:
        try:
            await prepare_start(repo, Path(scratch), patches, notes=[])
        except SandboxError as err:
            raise UsageError(err.message, hint=err.hint) from None


def _write_outcome(run_dir: Path, outcome: _Outcome, result: dict[str, Any]) -> None:
    usage = None if outcome.usage is None else {"usage": outcome.usage[0].model_dump(), "turns": outcome.usage[1]}
    data = {
        "status": outcome.status.value,
        "result": result,
        "error": outcome.error,
        "error_type": outcome.error_type,
        "usage": usage,
    }
    partial = run_dir / f".{OUTCOME_FILE}.tmp"
    partial.write_text(json.dumps(data))
    partial.replace(run_dir / OUTCOME_FILE)


async def _suspend(sandbox: Sandbox, run_id: str) -> None:
    try:
        await sandbox.suspend()
    except Exception:  # the process is stopping: say so, `corral sandbox prune` or a resume tidies up
        log.exception("run %s: releasing its sandbox's mounts and processes failed", run_id)


def _read_outcome(run_dir: Path) -> tuple[_Outcome, dict[str, Any]] | None:
    try:
        data = json.loads((run_dir / OUTCOME_FILE).read_text())
    except FileNotFoundError:
        return None
    usage = None if data["usage"] is None else (Usage(**data["usage"]["usage"]), data["usage"]["turns"])
    outcome = _Outcome(RunStatus(data["status"]), usage=usage, error=data["error"], error_type=data["error_type"])
    return outcome, data["result"]


def _as_json(identity: Identity | None) -> dict[str, Any] | None:
    """An identity as a run row and ``run.started`` hold it."""
    return identity.model_dump(mode="json") if identity is not None else None
