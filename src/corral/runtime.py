"""The runtime: submits, executes, resumes and cancels runs; each run is one durable DBOS workflow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import secrets as _random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from dbos import DBOS
from pydantic import SecretStr

# pydantic-ai prints a promotional banner on first use unless told not to; corral has its own views.
os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")

from corral import events as ev
from corral.engines.base import EngineContext, EngineResult
from corral.errors import (
    BudgetExceededError,
    CorralError,
    SandboxError,
    SpecError,
    UsageError,
)
from corral.events import BaseEvent, Usage
from corral.sandbox.base import (
    EgressEvent,
    Limits,
    NetworkProfile,
    Sandbox,
    SandboxRequest,
    ScopedSecret,
    get_backend,
)
from corral.secrets.redact import REDACTOR, redact_data
from corral.spec import AgentSpec, unknown_tools
from corral.store import RunRecord, RunStatus, Store
from corral.tools.base import ToolDef
from corral.tools.builtin import BUILTIN_TOOLS

log = logging.getLogger("corral.runtime")

T = TypeVar("T")

#: Bump when the sequence of steps a run workflow takes changes, so old runs are not replayed by new code.
WORKFLOW_VERSION = "corral-run-1"

_STALE_HEARTBEAT_S = 30.0
_HEARTBEAT_EVERY_S = 5.0

# Step bodies are closures that live only in this process; a step receives the token of its closure.
# A replayed (already completed) step returns its recorded result without looking the token up.
_STEP_BODIES: dict[str, Callable[..., Awaitable[Any]]] = {}
_ACTIVE: Runtime | None = None


def new_run_id() -> str:
    """Sortable by creation time, unique without coordination: 12 chars of time, 8 of randomness."""
    stamp = int(time.time() * 1000).to_bytes(6, "big") + _random.token_bytes(5)
    return base64.b32encode(stamp).decode().lower().rstrip("=")


@DBOS.step(name="corral.model_call")
async def _model_call_step(token: str) -> Any:
    return await _STEP_BODIES[token]()


@DBOS.step(name="corral.tool_call")
async def _tool_call_step(token: str) -> Any:
    return await _STEP_BODIES[token](f"{DBOS.workflow_id}:{DBOS.step_id}")


@DBOS.step(name="corral.sandbox")
async def _sandbox_step(token: str) -> Any:
    return await _STEP_BODIES[token]()


@DBOS.workflow(name="corral.run")
async def _run_workflow(run_id: str) -> dict[str, Any]:
    if _ACTIVE is None:
        raise RuntimeError("a corral run workflow started without a launched Runtime in this process")
    return await _ACTIVE._execute(run_id)


async def _in_step(step: Callable[[str], Awaitable[Any]], body: Callable[..., Awaitable[T]]) -> T:
    token = uuid.uuid4().hex
    _STEP_BODIES[token] = body
    try:
        return await step(token)
    finally:
        _STEP_BODIES.pop(token, None)


class _DbosSteps:
    """The engine's :class:`~corral.engines.base.Steps`, backed by DBOS steps."""

    async def model_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await _in_step(_model_call_step, fn)

    async def tool_call(self, fn: Callable[[str], Awaitable[T]]) -> T:
        return await _in_step(_tool_call_step, fn)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runtime:
    """One per process: owns the store, the DBOS instance, and the runs this process executes.

    Use as ``async with Runtime(store) as rt: record = await rt.run(spec, task, repo)``.
    """

    def __init__(self, store: Store, *, tools: Iterable[ToolDef] = ()) -> None:
        self.store = store
        self.tools: dict[str, ToolDef] = {**BUILTIN_TOOLS, **{t.name: t for t in tools}}
        self.executor_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._launched = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, BaseEvent], None]] = []
        store.journal.set_redactor(REDACTOR.data)

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        self.launch()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.shutdown()

    def launch(self) -> None:
        global _ACTIVE
        if _ACTIVE is not None and _ACTIVE is not self:
            raise UsageError("another corral Runtime is already running in this process")
        dbos_level = "WARNING" if log.isEnabledFor(logging.DEBUG) else "ERROR"
        DBOS(
            config={
                "name": "corral",
                "system_database_url": self.store.dbos_url(),
                "executor_id": self.executor_id,
                "application_version": WORKFLOW_VERSION,
                "log_level": dbos_level,
            }
        )
        _ACTIVE = self
        DBOS.launch()
        self.store.register_executor(self.executor_id, socket.gethostname(), os.getpid())
        self._launched = True

    def shutdown(self) -> None:
        global _ACTIVE
        if not self._launched:
            return
        self._launched = False
        try:
            self.store.journal.flush()
            self.store.unregister_executor(self.executor_id)
        finally:
            DBOS.destroy(destroy_registry=False)
            _ACTIVE = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_EVERY_S)
            try:
                self.store.heartbeat(self.executor_id)
            except Exception:
                log.exception("executor heartbeat failed")

    def subscribe(self, listener: Callable[[str, BaseEvent], None]) -> None:
        """Receive every event this process emits, as it is emitted (for live views)."""
        self._listeners.append(listener)

    # -- submitting and waiting -------------------------------------------------------------------

    def check_spec(self, spec: AgentSpec) -> None:
        unknown = unknown_tools(spec.tools, tuple(self.tools))
        if unknown:
            raise SpecError(f"agent '{spec.name}': field 'tools': unknown tool(s) {', '.join(unknown)}")
        get_backend(spec.sandbox.backend)  # fails early, naming the available backends
        from corral.models.providers import api_key_for, resolve_target

        api_key_for(resolve_target(spec.model, base_url=spec.base_url, api_key_env=spec.api_key_env))

    async def submit(self, spec: AgentSpec, task: str, repo: Path, *, parent_id: str | None = None) -> RunRecord:
        """Record a run and start its workflow in this process; returns at once."""
        self.check_spec(spec)
        repo = repo.expanduser().resolve()  # noqa: ASYNC240 - path arithmetic and one stat
        if not repo.is_dir():
            raise UsageError(f"repository {repo} is not a directory")
        if not task.strip():
            raise UsageError("the task is empty")
        run_id = new_run_id()
        parent = self.store.get_run(parent_id) if parent_id else None
        record = self.store.create_run(
            id=run_id,
            parent_id=parent_id,
            root_id=parent.root_id if parent else run_id,
            agent=spec.name,
            spec=spec.model_dump(mode="json"),
            spec_hash=spec.content_hash(),
            task=REDACTOR(task),
            repo=str(repo),
            run_dir=str(self.store.runs_dir / run_id),
            executor_id=self.executor_id,
        )
        await self._start(run_id)
        return record

    async def _start(self, run_id: str) -> None:
        from dbos import SetWorkflowID

        with SetWorkflowID(run_id):
            await DBOS.start_workflow_async(_run_workflow, run_id)

    async def wait(self, run_id: str, *, timeout_s: float | None = None, poll_s: float = 0.1) -> RunRecord:
        """Wait until the run has finished (whichever process executes it)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.store.get_run(run_id)
            if record.status.finished:
                self.store.journal.flush()
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout_s}s")
            await asyncio.sleep(poll_s)

    async def run(self, spec: AgentSpec, task: str, repo: Path) -> RunRecord:
        record = await self.submit(spec, task, repo)
        return await self.wait(record.id)

    # -- recovery and cancellation ----------------------------------------------------------------

    def _dead_executors(self) -> set[str]:
        host, now = socket.gethostname(), time.time()
        dead = set()
        for ex in self.store.executors():
            if ex.id == self.executor_id:
                continue
            gone = not _pid_alive(ex.pid) if ex.host == host else now - ex.heartbeat_at > _STALE_HEARTBEAT_S
            if gone:
                dead.add(ex.id)
        return dead

    def interrupted_runs(self) -> list[RunRecord]:
        """Unfinished runs whose executing process is gone."""
        dead = self._dead_executors()
        live = {ex.id for ex in self.store.executors()} - dead
        unfinished = [
            r
            for status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING_APPROVAL)
            for r in self.store.list_runs(limit=10_000, status=status)
        ]
        return [r for r in unfinished if r.executor_id is None or r.executor_id not in live]

    async def resume(self, run_id: str | None = None) -> list[str]:
        """Continue interrupted runs (all of them, or one) in this process; returns their ids."""
        if run_id is not None:
            record = self.store.get_run(run_id)
            if record.status.finished:
                raise UsageError(
                    f"run {record.id} already {record.status.value}; only interrupted runs can be resumed",
                    hint="start a new run with `corral run`",
                )
            if record.id not in {r.id for r in self.interrupted_runs()}:
                raise UsageError(f"run {record.id} is being executed by {record.executor_id}; it is not interrupted")
            candidates = [record]
        else:
            candidates = self.interrupted_runs()
        for record in candidates:
            status = await DBOS.get_workflow_status_async(record.id)
            if status is None:
                await self._start(record.id)
            else:
                await DBOS.resume_workflow_async(record.id)
            self.store.update_run(record.id, executor_id=self.executor_id)
        for dead in self._dead_executors():
            if not any(r.executor_id == dead for r in self.interrupted_runs()):
                self.store.unregister_executor(dead)
        return [r.id for r in candidates]

    def cancel(self, run_id: str) -> RunRecord:
        """Stop a run wherever it executes: it ends at its next step with status ``cancelled``."""
        from dbos import DBOSClient

        record = self.store.get_run(run_id)
        if record.status.finished:
            raise UsageError(f"run {record.id} already {record.status.value}")
        client = DBOSClient(system_database_url=self.store.dbos_url())
        try:
            client.cancel_workflow(record.id)
        finally:
            client.destroy()
        self._finish(record.id, RunStatus.CANCELLED, error="cancelled by user", error_type="Cancelled")
        return self.store.get_run(record.id)

    # -- executing one run (inside its workflow) --------------------------------------------------

    def _emit(self, run_id: str, event: BaseEvent) -> None:
        self.store.journal.append(run_id, event)
        for listener in self._listeners:
            try:
                listener(run_id, event)
            except Exception:
                log.exception("event listener failed")

    def _finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        record = self.store.get_run(run_id)
        if record.status.finished:
            return
        self.store.update_run(
            run_id, status=status, result=result, error=error, error_type=error_type, finished_at=time.time()
        )
        self._emit(
            run_id,
            ev.RunFinished(
                key="run.finished",
                status=status.value,
                text=(result or {}).get("text"),
                output=(result or {}).get("output"),
                patch_files=(result or {}).get("files_changed", 0),
                error=error,
                error_type=error_type,
                turns=record.turns,
                input_tokens=record.usage.input_tokens,
                output_tokens=record.usage.output_tokens,
                cost_usd=record.usage.cost_usd,
            ),
        )
        self.store.journal.flush()

    def _load_secrets(self, record: RunRecord, spec: AgentSpec) -> tuple[dict[str, str], tuple[ScopedSecret, ...]]:
        """The sandbox's secret variables, and the host-scoped secrets its egress proxy may swap in.

        A secret without hosts is passed to commands as it is; a secret scoped to hosts is passed only
        as a placeholder that is stable for the run (so a resumed run's commands see the same one).
        """
        missing = [name for name in spec.secrets if not os.environ.get(name)]
        if missing:
            raise SpecError(
                f"agent '{spec.name}': secret(s) {', '.join(missing)} not set in the environment",
                hint="export them before starting (or resuming) the run",
            )
        env: dict[str, str] = {}
        scoped: list[ScopedSecret] = []
        for name, scope in spec.secrets.items():
            value = os.environ[name]
            REDACTOR.add(name, value)
            if not scope.hosts:
                env[name] = value
                continue
            digest = hashlib.sha256(f"{record.id}:{name}".encode()).hexdigest()[:20]
            token = f"corral-placeholder-{name}-{digest}"
            scoped.append(ScopedSecret(name=name, value=SecretStr(value), hosts=scope.hosts, placeholder=token))
            env[name] = token
        return env, tuple(scoped)

    def _egress_sink(self, run_id: str) -> Callable[[EgressEvent], None]:
        loop = asyncio.get_running_loop()

        def on_egress(attempt: EgressEvent) -> None:  # called from the proxy's thread or task
            event = ev.EgressAttempted(
                key=f"egress:{uuid.uuid4().hex}",
                host=attempt.host,
                port=attempt.port,
                allowed=attempt.allowed,
                reason=attempt.reason,
                method=attempt.method,
                path=attempt.path,
                bytes_sent=attempt.bytes_sent,
                bytes_received=attempt.bytes_received,
                secrets_used=list(attempt.secrets_used),
            )
            loop.call_soon_threadsafe(self._emit, run_id, event)

        return on_egress

    def _sandbox_request(self, record: RunRecord, spec: AgentSpec) -> SandboxRequest:
        env, scoped = self._load_secrets(record, spec)
        profile = spec.sandbox
        if profile.network.mode == "host":
            log.warning("run %s: network 'host': commands can reach any address this machine can", record.id)
        return SandboxRequest(
            repo=Path(record.repo),
            run_dir=Path(record.run_dir),
            env=env,
            network=NetworkProfile(mode=profile.network.mode, allow=profile.network.allow),
            limits=Limits(memory_mb=profile.memory_mb, pids=profile.pids, cpu_s=profile.cpu_s, disk_mb=profile.disk_mb),
            secrets=scoped,
            on_egress=self._egress_sink(record.id),
        )

    async def _open_sandbox(self, record: RunRecord, spec: AgentSpec) -> Sandbox:
        backend = get_backend(spec.sandbox.backend)
        request = self._sandbox_request(record, spec)
        created: list[Sandbox] = []

        async def create() -> dict[str, Any]:
            created.append(await backend.create(request))
            return created[0].state()  # no environment in it: secrets are re-read on resume

        state = await _in_step(_sandbox_step, create)
        if created:
            sandbox = created[0]
        else:  # the step completed in an earlier process: re-open what it made
            try:
                sandbox = await backend.attach(
                    {**state, "env": request.env, "secrets": request.secrets, "on_egress": request.on_egress}
                )
            except SandboxError as err:
                raise SandboxError(f"the workspace of run {record.id} is gone: {err.message}") from None
        self._emit(
            record.id,
            ev.SandboxCreated(
                key="sandbox.created",
                backend=backend.name,
                workspace=str(sandbox.workspace),
                isolated=backend.isolated,
            ),
        )
        return sandbox

    async def _execute(self, run_id: str) -> dict[str, Any]:
        record = self.store.get_run(run_id)
        if record.status.finished:
            return {"status": record.status.value}
        spec = AgentSpec.model_validate(record.spec)
        resumed = record.started_at is not None
        started_at = record.started_at or time.time()
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
            ),
        )
        if resumed:
            self._emit(run_id, ev.RunResumed(key=f"run.resumed:{self.executor_id}", executor_id=self.executor_id))
        sandbox: Sandbox | None = None
        status, result, error, error_type = RunStatus.FAILED, None, None, None
        cancelled = None
        try:
            sandbox = await self._open_sandbox(record, spec)
            outcome = await self._run_engine(record, spec, sandbox, started_at)
            patch = REDACTOR(await sandbox.diff())
            # Inline: DBOS owns the loop's default executor (a small write, not worth a thread anyway).
            Path(record.run_dir, "patch.diff").write_text(patch)  # noqa: ASYNC240
            files = sum(1 for line in patch.splitlines() if line.startswith("diff --git "))
            payload = {"text": outcome.text, "output": outcome.output, "patch": patch, "files_changed": files}
            status, result = RunStatus.SUCCEEDED, redact_data(payload, REDACTOR)
        except BudgetExceededError as err:
            self._emit(
                run_id,
                ev.BudgetExceeded(
                    key="budget.exceeded",
                    limit=err.limit,
                    value=err.value,
                    maximum=err.maximum,
                ),
            )
            error, error_type = err.message, type(err).__name__
        except CorralError as err:
            error, error_type = REDACTOR(str(err)), type(err).__name__
        except Exception as err:
            if type(err).__name__ == "DBOSWorkflowCancelledError":
                status, error, error_type, cancelled = RunStatus.CANCELLED, "cancelled", "Cancelled", err
            else:
                log.exception("run %s failed", run_id)
                error, error_type = REDACTOR(f"{type(err).__name__}: {err}"), type(err).__name__
        # The sandbox goes before the status changes: whoever waits for the run must not see it
        # finished while its processes and files are still being removed.
        if sandbox is not None:
            try:
                await sandbox.destroy()
            except Exception:
                log.exception("destroying the sandbox of run %s failed", run_id)
        self._finish(run_id, status, result=result, error=error, error_type=error_type)
        if cancelled is not None:
            raise cancelled
        return {"status": self.store.get_run(run_id).status.value}

    async def _run_engine(
        self, record: RunRecord, spec: AgentSpec, sandbox: Sandbox, started_at: float
    ) -> EngineResult:
        from corral.engines.native import NativeEngine

        def on_usage(usage: Usage, turns: int) -> None:
            self.store.set_usage(record.id, usage, turns)

        ctx = EngineContext(
            run_id=record.id,
            spec=spec,
            task=record.task,
            sandbox=sandbox,
            steps=_DbosSteps(),
            emit=lambda event: self._emit(record.id, event),
            redact=REDACTOR,
            tools=self.tools,
            started_at=started_at,
            on_usage=on_usage,
        )
        return await NativeEngine().run(ctx)
