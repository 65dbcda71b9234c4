"""Durable approvals in one process: a run waits on ``ask``, a decision from another store handle (as from
another process) lets it go on within a second, a denial reaches the model as the reason, a timeout denies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from corral.errors import UsageError
from corral.events import ApprovalDecided, ApprovalRequested, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.runtime import Runtime
from corral.runtime import approvals as approvals_module
from corral.store import RunStatus, Store
from corral.store.records import ApprovalStatus
from tests.e2e.test_runs import script, spec_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPT = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo pushed >> pushes.txt" }

[[turns]]
text = "done"
"""

ASK = {"rules": [{"name": "pushes", "tool": "execute", "args": {"command": "echo pushed*"}, "decision": "ask",
                  "reason": "a push leaves the sandbox"}]}  # fmt: skip


async def pending(store: Store, within_s: float = 30) -> Any:
    deadline = time.monotonic() + within_s
    while not (found := store.approvals()):
        assert time.monotonic() < deadline, "no approval request appeared"
        await asyncio.sleep(0.05)
    return found[0]


@pytest.mark.parametrize("approve", [True, False])
async def test_a_waiting_run_goes_on_within_a_second_of_the_decision(
    home: Path, repo: Path, tmp_path: Path, approve: bool
) -> None:
    store = Store.open(home=home)
    other = Store.open(home=home)  # a second handle: what `corral approve` in another process opens
    try:
        with ScriptedServer(script(tmp_path, SCRIPT)) as server:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server, policy=ASK), "push it", repo)
                request = await pending(store)
                assert store.get_run(record.id).status is RunStatus.WAITING_APPROVAL
                assert (request.tool, request.rule, request.arguments) == (
                    "execute",
                    "pushes",
                    {"command": "echo pushed >> pushes.txt"},
                )
                decided = approvals_module.decide(other, request.id, approve=approve, reason="not today", by="ana")
                done = await runtime.wait(record.id, timeout_s=60)
        events = [e.event for e in store.events(record.id)]
    finally:
        other.close()
        store.close()
    assert done.status is RunStatus.SUCCEEDED, done.error
    asked = next(e for e in events if isinstance(e, ApprovalRequested))
    settled = next(e for e in events if isinstance(e, ApprovalDecided))
    result = next(e for e in events if isinstance(e, ToolReturned))
    assert (asked.approval_id, settled.approval_id) == (request.id, request.id)
    assert settled.outcome == ("approved" if approve else "denied") and settled.by == "ana"
    assert decided.decided_at is not None
    # Measured, not slept: from the decision to the tool's result (or refusal) in the journal.
    assert result.ts + (result.duration_ms or 0) / 1000 - decided.decided_at < 1.0
    if approve:
        assert result.ok and "pushes.txt" in (done.result or {})["patch"]
    else:
        assert not result.ok and result.text == "denied by policy (rule pushes): denied by ana: not today"
        assert "pushes.txt" not in (done.result or {})["patch"]


async def test_no_decision_before_the_timeout_is_a_denial_journaled_as_expired(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    store = Store.open(home=home)
    try:
        with ScriptedServer(script(tmp_path, SCRIPT)) as server:
            async with Runtime(store) as runtime:
                policy = {**ASK, "approval_timeout_s": 1}
                done = await runtime.run(spec_for(server, policy=policy), "push it", repo)
                request = store.approvals(status=None)[0]
                with pytest.raises(UsageError, match="already expired"):
                    runtime.decide(request.id, True)
        events = [e.event for e in store.events(done.id)]
    finally:
        store.close()
    assert done.status is RunStatus.SUCCEEDED, done.error
    assert request.status is ApprovalStatus.EXPIRED and request.decided_by == "timeout"
    settled = next(e for e in events if isinstance(e, ApprovalDecided))
    assert settled.outcome == "expired"
    result = next(e for e in events if isinstance(e, ToolReturned))
    assert not result.ok and "nobody approved it before" in result.text


async def test_cancelling_a_waiting_run_ends_it_and_its_request_can_no_longer_be_decided(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    store = Store.open(home=home)
    try:
        with ScriptedServer(script(tmp_path, SCRIPT)) as server:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server, policy=ASK), "push it", repo)
                request = await pending(store)
                started = time.monotonic()
                cancelled = await runtime.cancel(record.id, wait_s=30)
                took = time.monotonic() - started
                with pytest.raises(UsageError, match="nothing changed"):
                    runtime.decide(request.id, True)
                assert runtime.approvals() == []
    finally:
        store.close()
    assert cancelled.status is RunStatus.CANCELLED
    assert took < 5
