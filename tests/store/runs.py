"""A run row with nothing but what a store test needs, and one with a whole journal."""

from __future__ import annotations

from typing import Any

from corral.events import (
    BaseEvent,
    ModelRequested,
    ModelResponded,
    RunFinished,
    RunStarted,
    ToolCalled,
    ToolReturned,
)
from corral.store import RunStatus, Store


def add_run(
    store: Store,
    run_id: str,
    *,
    executor_id: str | None = None,
    status: RunStatus = RunStatus.RUNNING,
    task: str = "t",
    agent: str = "a",
    run_dir: str = "/d",
    parent_id: str | None = None,
    continues_id: str | None = None,
    **fields: Any,
) -> None:
    """Create a run and set ``status`` and any other column (``created_at``, ``result``, ``unpriced_calls``…)."""
    root_id = store.get_run(parent_id).root_id if parent_id else run_id
    store.create_run(
        id=run_id,
        parent_id=parent_id,
        root_id=root_id,
        continues_id=continues_id,
        agent=agent,
        spec={"model": "openai:gpt-6.1-sol"},
        spec_hash="h",
        task=task,
        repo="/r",
        run_dir=run_dir,
        executor_id=executor_id,
    )
    store.update_run(run_id, status=status, **fields)


def finished_run_events(
    *,
    task: str = "t",
    answer: str = "done",
    command: str = "true",
    tool_error: str | None = None,
    cost_usd: float = 0.0,
) -> list[BaseEvent]:
    """The journal of a short run: one turn that runs ``command`` (exit 0, or failing with ``tool_error``), the end."""
    result = (
        ToolReturned(
            key="tool:0:result", call_id="c0", tool="execute", ok=False, text="", error=tool_error, duration_ms=3
        )
        if tool_error
        else ToolReturned(
            key="tool:0:result", call_id="c0", tool="execute", ok=True, text="ok", exit_code=0, duration_ms=3
        )
    )
    return [
        RunStarted(key="run.started", agent="a", task=task, model="m", engine="native", spec_hash="h", repo="/r"),
        ModelRequested(key="model:0:request", call=0, model="m", message_count=1, new_messages=[], tools=["execute"]),
        ModelResponded(
            key="model:0:response",
            call=0,
            model="m",
            parts=[{"part_kind": "text", "content": answer}, {"part_kind": "tool-call", "tool_name": "execute"}],
            input_tokens=100,
            output_tokens=7,
            cost_usd=cost_usd,
            duration_ms=12.0,
        ),
        ToolCalled(key="tool:0:call", call_id="c0", tool="execute", args={"command": command}),
        result,
        RunFinished(
            key="run.finished", status="failed" if tool_error else "succeeded", text=answer, error=tool_error, turns=1
        ),
    ]
