"""What a follow-up's model is told about the end of the run it continues, and how a long conversation goes on."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedRequest, ScriptedServer, ScriptUsage, ToolCall, Turn
from corral.runtime import Runtime
from corral.store import RunStatus, Store
from tests.runtime.test_continue import run_chain, spec_for, texts
from tests.runtime.test_run_endings import wait_until
from tests.sandbox.host import processes_with

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def store(home: Path) -> Store:
    opened = Store.open(home=home)
    yield opened  # type: ignore[misc]
    opened.close()


async def test_calls_a_cancelled_run_left_unanswered_get_their_result_or_a_note(store: Store, repo: Path) -> None:
    token = f"96.{secrets.randbelow(10**6):06d}"
    write = ToolCall(name="write_file", args={"path": "progress.txt", "content": "half of the work\n"})
    sleep = ToolCall(name="execute", args={"command": f"sleep {token}", "timeout": 120})

    def policy(request: ScriptedRequest) -> Turn:
        return Turn(tool_calls=[write, sleep]) if request.position == 0 else Turn(text="picking up")

    with ScriptedServer(policy=policy) as server:
        async with Runtime(store) as runtime:
            parent = await runtime.submit(spec_for(server), "slow work", repo)
            await wait_until(lambda: processes_with(token) != [])
            parent = await runtime.cancel(parent.id)
            assert parent.status is RunStatus.CANCELLED
            child = await runtime.wait(
                (await runtime.submit(spec_for(server), "go on", repo, continue_from=parent.id)).id
            )
        assert child.status is RunStatus.SUCCEEDED, child.error
        follow_up = next(r for r in server.requests if r.position == 1).body or {}
    replies = [m["content"] for m in follow_up["messages"] if m.get("role") == "tool"]
    # The write returned before the cancel (the journal has its result); the command never did.
    assert replies[0].startswith("wrote ")
    assert replies[1] == "[corral] Not run: the run ended (cancelled) before this call was answered."


async def test_a_long_continued_conversation_is_compacted_at_once_and_the_new_task_stays(
    store: Store, repo: Path
) -> None:
    full = ScriptUsage(input_tokens=9000)  # of a 10000-token window: every call is near the limit

    def policy(request: ScriptedRequest) -> Turn:
        if request.last_tool_results:
            return Turn(text="done", usage=full)
        return Turn(tool_calls=[ToolCall(name="write_file", args={"path": "f.txt", "content": "x\n"})], usage=full)

    with ScriptedServer(policy=policy) as server:
        (first,) = await run_chain(store, spec_for(server), repo, "the first task")
        small = spec_for(server, context={"window_tokens": 10_000, "compact_at": 0.5, "keep_recent_messages": 2})
        async with Runtime(store) as runtime:
            submitted = await runtime.submit(small, "the follow-up task", repo, continue_from=first.id)
            child = await runtime.wait(submitted.id, timeout_s=60)
        last = server.requests[-1].body or {}
    assert child.status is RunStatus.SUCCEEDED, child.error
    compacted = [e.key for e in store.events(child.id) if e.type == "context.compacted"]
    assert compacted[0] == "compact:0"  # before its first call: the conversation it continues was near the limit
    assert "the follow-up task" in texts(last)  # evicted with its turn by a later compaction, but kept
