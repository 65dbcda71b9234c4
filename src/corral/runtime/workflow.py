"""The only module that imports DBOS: the run workflow, its durable steps, and DBOS's lifecycle.

A run is one DBOS workflow (``corral.run``). Its model calls, tool calls and sandbox creation are
async DBOS steps, all *preemptible*: cancelling the workflow (from any process) cancels the step in
flight within DBOS's poll interval, so ``corral cancel`` stops a running command, not just the next one.

DBOS registers workflows and steps as module-level functions, while a step's body is a closure
that lives only in the process executing the run; the two tables below are the module-level state
this forces on us. A replayed (already completed) step returns its recorded result without
looking its body up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from dbos import DBOS, DBOSClient, EnqueueOptions, SetWorkflowID
from dbos._error import DBOSWorkflowCancelledError, DBOSWorkflowConflictIDError  # not re-exported by dbos 3.4

from corral.errors import RuntimeStateError, UsageError
from corral.spec import MAX_TREE_DEPTH

T = TypeVar("T")

#: Bump when the sequence of steps a run workflow takes changes, so old runs are not replayed by new code.
WORKFLOW_VERSION = "corral-run-1"

NOTIFICATION_POLL_S = 0.05
"""DBOS's notification listener's poll on SQLite (on PostgreSQL it LISTENs): how soon a decision sent to
a waiting run is seen, and how long stopping DBOS waits for the listener to notice (one small query
20 times a second while a process runs; 0.2 s cost every command and test 150 ms more to exit)."""

# token -> step body, for steps in flight in this process.
_STEP_BODIES: dict[str, Callable[..., Awaitable[Any]]] = {}
# What the run workflow executes in this process: set by launch(), cleared by destroy().
_EXECUTE: Callable[[str], Awaitable[dict[str, Any]]] | None = None


@DBOS.step(name="corral.model_call", preemptible=True)
async def _model_call_step(token: str) -> Any:
    return await _STEP_BODIES[token]()


@DBOS.step(name="corral.tool_call", preemptible=True)
async def _tool_call_step(token: str) -> Any:
    return await _STEP_BODIES[token](f"{DBOS.workflow_id}:{DBOS.step_id}")


@DBOS.step(name="corral.sandbox", preemptible=True)
async def _sandbox_step(token: str) -> Any:
    return await _STEP_BODIES[token]()


_RUN_WORKFLOW = "corral.run"


@DBOS.workflow(name=_RUN_WORKFLOW)
async def _run_workflow(run_id: str) -> dict[str, Any]:
    if _EXECUTE is None:
        raise RuntimeStateError("a corral run workflow started without a launched Runtime in this process")
    return await _EXECUTE(run_id)


# Tokens only need to be unique within this process (uuid4 would cost an os.urandom per step).
_TOKENS = itertools.count()


async def _in_step(step: Callable[[str], Awaitable[Any]], body: Callable[..., Awaitable[T]]) -> T:
    token = str(next(_TOKENS))
    _STEP_BODIES[token] = body
    try:
        return await step(token)
    finally:
        _STEP_BODIES.pop(token, None)


class DbosSteps:
    """The engines' :class:`~corral.engines.base.Steps`, backed by DBOS steps."""

    async def model_call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await _in_step(_model_call_step, fn)

    async def tool_call(self, fn: Callable[[str], Awaitable[T]]) -> T:
        return await _in_step(_tool_call_step, fn)


async def sandbox_step(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` (creating a run's sandbox) as a durable step of the current run.

    Never from inside another step: DBOS would run it as a plain call, unrecorded, and a resumed run
    would make the sandbox again over the one holding its work.
    """
    if DBOS.step_id is not None:
        raise RuntimeStateError("a sandbox is made in a durable step of its own, not inside another step")
    return await _in_step(_sandbox_step, fn)


async def was_cancelled(system_database_url: str, run_id: str, exc: BaseException) -> bool:
    """Whether ``exc``, raised inside the run's workflow, means the run was cancelled.

    DBOS says so directly (at a step boundary, or by preempting a step), or indirectly: a step
    that completes after the cancel cannot record its result and DBOS reports that the execution
    no longer owns the workflow; then the workflow's status tells a cancel from a takeover by
    another executor (which will finish the run itself). Concurrent tool calls run in task groups,
    so the signal may arrive wrapped in an exception group.
    """
    if _contains(exc, DBOSWorkflowCancelledError):
        return True
    if _contains(exc, DBOSWorkflowConflictIDError):
        return await status(system_database_url, run_id) == "CANCELLED"
    return False


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is a ``kind``, or an exception group holding one."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kind)[0] is not None
    return isinstance(exc, kind)


async def status(system_database_url: str, run_id: str) -> str | None:
    """The workflow's status read with a client: inside a workflow, DBOS would make the read a step."""

    def read() -> str | None:
        client = DBOSClient(system_database_url=system_database_url)
        try:
            found = client.list_workflows(workflow_ids=[run_id], load_input=False, load_output=False)
            return found[0].status if found else None
        finally:
            client.destroy()

    return await asyncio.to_thread(read)


CANCEL_POLL_S = 0.5
"""How often ``preemptible`` reads whether the run was cancelled."""


async def preemptible(system_database_url: str, workflow_id: str, work: Awaitable[T]) -> T:
    """``work``, stopped within about half a second when the run's workflow is cancelled from any
    process: for a long wait that is no DBOS step (an external engine's CLI session), which DBOS
    would not preempt. Raises DBOS's cancel error then, as a preempted step does."""

    def cancelled(client: DBOSClient) -> bool:
        found = client.list_workflows(workflow_ids=[workflow_id], load_input=False, load_output=False)
        return bool(found) and found[0].status == "CANCELLED"

    async def until_cancelled() -> None:
        client = await asyncio.to_thread(DBOSClient, system_database_url=system_database_url)
        try:
            # Another process cancels it, in the database: there is no event here to wait on.
            while not await asyncio.to_thread(cancelled, client):  # noqa: ASYNC110
                await asyncio.sleep(CANCEL_POLL_S)
        finally:
            await asyncio.to_thread(client.destroy)

    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(until_cancelled(), name=f"corral-cancel-watch-{workflow_id}")
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        watcher.result()  # a watcher that failed says why
        raise DBOSWorkflowCancelledError(f"workflow {workflow_id} was cancelled")
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending


def launch(
    *,
    system_database_url: str,
    executor_id: str,
    execute: Callable[[str], Awaitable[dict[str, Any]]],
    run_queues: Sequence[str] = (),
) -> None:
    """Start DBOS in this process; run workflows call ``execute(run_id)``. It takes workflows from
    ``listened_queues(run_queues)`` only: a ``corral run`` process never runs what was submitted to workers."""
    global _EXECUTE
    if _EXECUTE is not None:
        raise RuntimeStateError("another corral Runtime is already running in this process")
    dbos_level = "WARNING" if logging.getLogger("corral").isEnabledFor(logging.DEBUG) else "ERROR"
    DBOS(
        config={
            "name": "corral",
            "system_database_url": system_database_url,
            "executor_id": executor_id,
            "application_version": WORKFLOW_VERSION,
            "log_level": dbos_level,
            # DBOS's listener polls the database for notifications and is joined at shutdown, so
            # its interval is how long every corral command waits to exit (1 s by default).
            "notification_listener_polling_interval_sec": NOTIFICATION_POLL_S,
        }
    )
    _EXECUTE = execute
    try:
        DBOS.listen_queues(listened_queues(run_queues))
        DBOS.launch()
    except BaseException:
        _EXECUTE = None
        DBOS.destroy(destroy_registry=False)
        raise


def destroy() -> None:
    """Stop DBOS in this process (workflows still running are interrupted, to be resumed later)."""
    global _EXECUTE
    try:
        DBOS.destroy(destroy_registry=False)
    finally:
        _EXECUTE = None
        _QUEUES.clear()


async def start(run_id: str) -> None:
    """Start the run workflow of ``run_id`` in this process (the run id is the workflow id)."""
    with SetWorkflowID(run_id):
        await DBOS.start_workflow_async(_run_workflow, run_id)


async def resume(run_id: str) -> None:
    """Continue an interrupted run's workflow in this process, or start it if it never began."""
    if await DBOS.get_workflow_status_async(run_id) is None:
        await start(run_id)
    else:
        await DBOS.resume_workflow_async(run_id)


RUN_QUEUE = "corral.runs"
"""The queue ``corral run --submit`` and the API put runs on by default, which ``corral worker`` serves."""
QUEUE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")

CHILD_QUEUE = "corral.children.depth-{depth}"
"""The queue of the children at one depth of their trees: children wait for their own children, so
one queue per depth keeps a full queue of parents from starving the children they wait for. A tree
submitted to a run queue has its own (``<queue>.children.depth-N``), which its workers serve."""
#: Children with their own workflow (and sandbox) running at once, per depth, over every process of the store.
CHILD_CONCURRENCY_ENV = "CORRAL_CHILD_CONCURRENCY"
DEFAULT_CHILD_CONCURRENCY = 16
_QUEUE_POLL_S = 0.05
_QUEUES: dict[str, Any] = {}


def check_queue_name(name: str) -> str:
    """``name`` if it can name a run queue (lowercase letters, digits, ``.``, ``_``, ``-``; up to 48)."""
    if not QUEUE_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} cannot name a run queue",
            hint="lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, up to 48 characters",
        )
    return name


def child_queue(tree_queue: str | None, depth: int) -> str:
    """The queue of the children at ``depth`` of a tree run by the process that started it (``tree_queue``
    None), or submitted to ``tree_queue``."""
    base = CHILD_QUEUE.format(depth=depth)
    return base if tree_queue is None else f"{tree_queue}.children.depth-{depth}"


def listened_queues(run_queues: Sequence[str] = ()) -> list[str]:
    """The queues a process takes workflows from: with no run queue (``corral run``), the children of the
    trees it starts; a worker, its run queues and their trees' children. Never another kind's."""
    if not run_queues:
        return [child_queue(None, depth) for depth in range(1, MAX_TREE_DEPTH + 1)]
    return [
        name
        for queue in run_queues
        for name in (queue, *(child_queue(queue, depth) for depth in range(1, MAX_TREE_DEPTH + 1)))
    ]


def child_concurrency() -> int:
    """The global limit of children running at once per depth (``CORRAL_CHILD_CONCURRENCY``, default 16)."""
    value = os.environ.get(CHILD_CONCURRENCY_ENV, "")
    try:
        return max(1, int(value)) if value else DEFAULT_CHILD_CONCURRENCY
    except ValueError:
        raise UsageError(f"{CHILD_CONCURRENCY_ENV} must be a whole number, got {value!r}") from None


def _child_queue(tree_queue: str | None, depth: int) -> Any:
    name = child_queue(tree_queue, depth)
    queue = _QUEUES.get(name)
    if queue is None:
        queue = DBOS.register_queue(
            name,
            global_concurrency=child_concurrency(),
            polling_interval_sec=_QUEUE_POLL_S,
            on_conflict="always_update",
        )
        _QUEUES[name] = queue
    return queue


def register_run_queue(name: str, *, worker_concurrency: int, global_concurrency: int | None) -> None:
    """Create or update the run queue ``name`` (in the database: every worker of the queue shares its limits).

    DBOS refuses its synchronous ``register_queue`` on a thread running an event loop: it runs on a
    thread of its own here, as the child queues' registration does.
    """

    def register() -> Any:
        return DBOS.register_queue(
            name,
            worker_concurrency=worker_concurrency,
            global_concurrency=global_concurrency,
            polling_interval_sec=_QUEUE_POLL_S,
            on_conflict="always_update",
        )

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="corral-queue") as pool:
        _QUEUES[name] = pool.submit(register).result()


async def enqueue_child(run_id: str, depth: int, tree_queue: str | None = None) -> None:
    """Queue the workflow of child run ``run_id`` (its id is the workflow id; queueing it again is a no-op).

    The child is a workflow of its own, not a DBOS child workflow of its parent: its parent finds it
    again by its id (made from the dispatching call's), not by the position of a step in its own
    history, which concurrent dispatches do not keep from one execution to the next.
    """

    def enqueue() -> None:  # in a thread that does not carry the parent workflow's context
        with SetWorkflowID(run_id):
            _child_queue(tree_queue, depth).enqueue(_run_workflow, run_id)

    await asyncio.get_running_loop().run_in_executor(None, enqueue)


def migrate(system_database_url: str) -> None:
    """Create or migrate DBOS's tables (a process that only enqueues never launches DBOS, which would)."""
    DBOS.migrate(system_database_url)


def enqueue_run(system_database_url: str, run_id: str, queue: str, *, connection: Any = None) -> None:
    """Put run ``run_id``'s workflow on the run queue ``queue``, from any process (DBOS need not run here).

    ``connection``: a transaction on the system database that also writes the run's row, so the row
    and its workflow are committed together (the store and DBOS share one Postgres database).
    """
    options: EnqueueOptions = {
        "workflow_name": _RUN_WORKFLOW,
        "queue_name": queue,
        "workflow_id": run_id,
        "app_version": WORKFLOW_VERSION,
    }
    client = DBOSClient(system_database_url=system_database_url)
    try:
        if connection is not None:
            client.enqueue_in_transaction(connection, options, run_id)
        else:
            client.enqueue(options, run_id)
    finally:
        client.destroy()


def recover_executors(executor_ids: Sequence[str]) -> int:
    """Put the unfinished workflows of executors that are gone back on their queues (DBOS's executor
    recovery): each is taken by exactly one process listening to its queue. Safe to repeat, from any
    number of processes at once. The number of workflows recovered."""
    if not executor_ids:
        return 0
    return len(DBOS._recover_pending_workflows(list(executor_ids)))


def _decision_topic(approval_id: str) -> str:
    return f"corral.approval:{approval_id}"


async def wait_for_decision(approval_id: str, timeout_s: float) -> dict[str, Any] | None:
    """Inside a run's workflow: wait for the decision sent to it for ``approval_id``; None after ``timeout_s``.

    DBOS's ``recv`` is durable: the message waits in the database if nobody listens (the process
    died), a resumed run receives it at once, and a completed wait replays its recorded answer.
    """
    return await DBOS.recv_async(topic=_decision_topic(approval_id), timeout_seconds=timeout_s)


def send_decision(system_database_url: str, run_id: str, approval_id: str, decision: dict[str, Any]) -> None:
    """From any process: deliver a decision to the run waiting on ``approval_id`` (at most once per approval)."""
    client = DBOSClient(system_database_url=system_database_url)
    try:
        client.send(run_id, decision, topic=_decision_topic(approval_id), idempotency_key=f"decision:{approval_id}")
    finally:
        client.destroy()


def request_cancel(system_database_url: str, run_id: str) -> dict[str, Any] | None:
    """Mark the run's workflow cancelled, from any process; its executor stops within a second.

    Returns what the run's sandbox step recorded (the sandbox's state), or None if it never
    completed: whoever ends a run whose executor is gone needs it to re-open and remove the sandbox.
    """
    client = DBOSClient(system_database_url=system_database_url)
    try:
        client.cancel_workflow(run_id)
        for step in client.list_workflow_steps(run_id):
            if step["function_name"] == "corral.sandbox" and step["error"] is None:
                output = step["output"]
                return output if isinstance(output, dict) else None
        return None
    finally:
        client.destroy()
