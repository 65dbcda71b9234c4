"""Whole runs in-process: real pydantic-ai, real SDKs, the scripted model server, DBOS and the local sandbox."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.errors import UsageError
from corral.events import ContextCompacted, ModelResponded, ModelRetried, RunFinished, ToolReturned
from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.spec import AgentSpec
from corral.store import EventRecord, RunRecord, RunStatus, Store
from corral.tools.base import Capability, ToolContext, tool

# Whole runs (DBOS, the scripted server, a sandbox): the engine's logic is covered in ms by tests/engines.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROVIDERS = {
    "openai": ("openai:gpt-6.1-terra", "openai_base_url"),
    "openai-chat": ("openai-chat:gpt-4.1-mini", "openai_base_url"),
    "anthropic": ("anthropic:claude-sonnet-5-5", "anthropic_base_url"),
}


def spec_for(server: ScriptedServer, provider: str = "openai", **extra: Any) -> AgentSpec:
    model, url_attr = PROVIDERS[provider]
    fields: dict[str, Any] = {
        "name": "fixer",
        "model": model,
        "base_url": getattr(server, url_attr),
        "sandbox": "local",
        "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
    }
    for key, value in extra.items():
        fields[key] = {**fields[key], **value} if isinstance(fields.get(key), dict) else value
    return AgentSpec.model_validate(fields)


def script(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "script.toml"
    path.write_text(text)
    return load_script(path)


async def run_once(home: Path, spec: AgentSpec, repo: Path, task: str = "fix the failing test", **kw: Any) -> RunRecord:
    store = Store.open(home=home)
    try:
        async with Runtime(store, **kw) as runtime:
            return await runtime.run(spec, task, repo)
    finally:
        store.close()


def events_of(home: Path, run_id: str) -> list[EventRecord]:
    store = Store.open(home=home)
    try:
        return store.events(run_id)
    finally:
        store.close()


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_run_fixes_the_bug_and_journals_every_step(
    provider: str, home: Path, repo: Path, fix_script: Path
) -> None:
    with ScriptedServer(load_script(fix_script)) as server:
        record = await run_once(home, spec_for(server, provider), repo)
        requests = server.requests
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert record.result["text"] == "Fixed add() to return a + b; the tests pass."
    patch = record.result["patch"]
    assert "-    return a - b" in patch and "+    return a + b" in patch
    assert record.result["files_changed"] == 1
    # The original repository is untouched and the patch applies to it.
    assert "a - b" in (repo / "calc.py").read_text()
    subprocess.run(["git", "apply", "--check", "-"], input=patch.encode(), cwd=repo, check=True)
    assert record.turns == 6
    assert record.usage.input_tokens == 1000 + 1400 + 1800 + 2200 + 2500 + 2700
    assert record.usage.cost_usd > 0
    assert len(requests) == 6

    events = events_of(home, record.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert types.count("model.request") == types.count("model.response") == 6
    assert types.count("tool.call") == types.count("tool.result") == 5
    results = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert "FAILED" in results[1].text and "OK" in results[4].text


async def test_agents_md_joins_the_instructions(home: Path, repo: Path, fix_script: Path) -> None:
    with ScriptedServer(load_script(fix_script)) as server:
        await run_once(home, spec_for(server), repo)
        first = server.requests[0]
    assert "Keep changes minimal." in json.dumps(first.body)


async def test_structured_output_is_validated_and_returned(home: Path, repo: Path, tmp_path: Path) -> None:
    text = """
[[turns]]
output = { summary = "nothing to do", tests_pass = "yes" }
[[turns]]
output = { summary = "nothing to do", tests_pass = true }
"""
    schema = {
        "type": "object",
        "title": "report",
        "properties": {"summary": {"type": "string"}, "tests_pass": {"type": "boolean"}},
        "required": ["summary", "tests_pass"],
    }
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, output_schema=schema), repo)
        requests = server.requests
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert record.result["output"] == {"summary": "nothing to do", "tests_pass": True}
    assert len(requests) == 2  # the first output failed validation and was sent back to the model


async def test_model_that_500s_until_retries_run_out_fails_the_run_clearly(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    text = """
[[turns]]
fail = [ { status = 500, times = 100 } ]
text = "never"
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        spec = spec_for(server, retry={"max_attempts": 3, "initial_backoff_s": 0.01})
        record = await run_once(home, spec, repo)
        attempts = len(server.requests)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "failed after 3 attempt(s)" in record.error and "500" in record.error
    assert attempts == 3
    events = events_of(home, record.id)
    types = [e.type for e in events]
    assert types.count("model.retry") == 2
    assert "model.error" in types
    assert isinstance(events[-1].event, RunFinished) and events[-1].event.status == "failed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_rate_limit_is_retried_then_succeeds(home: Path, repo: Path, tmp_path: Path) -> None:
    text = """
[[turns]]
fail = [ { status = 429, retry_after = 0 }, { status = 503 } ]
text = "done"
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    retries = [e.event for e in events_of(home, record.id) if isinstance(e.event, ModelRetried)]
    assert [r.status_code for r in retries] == [429, 503]
    response = next(e.event for e in events_of(home, record.id) if isinstance(e.event, ModelResponded))
    assert response.attempts == 3


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_model_garbage_fails_the_run_with_a_clear_error(
    provider: str, home: Path, repo: Path, tmp_path: Path
) -> None:
    text = """
[[turns]]
malformed = true
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        spec = spec_for(server, provider, retry={"max_attempts": 2, "initial_backoff_s": 0.01})
        record = await run_once(home, spec, repo)
    assert record.status is RunStatus.FAILED
    assert record.error is not None and "failed after 2 attempt(s)" in record.error
    events = events_of(home, record.id)
    assert events[-1].type == "run.finished"


async def test_a_crashing_tool_is_reported_to_the_model_and_the_run_goes_on(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    class Args(__import__("pydantic").BaseModel):
        n: int

    @tool(name="explode", capabilities=[Capability.READS_WORKSPACE])
    async def explode(ctx: ToolContext, args: Args) -> str:
        """Always crashes."""
        raise RuntimeError(f"kaboom {args.n}")

    text = """
[[turns]]
[[turns.tool_calls]]
name = "explode"
args = { n = 7 }
[[turns]]
text = "the tool crashed; giving up politely"
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        spec = spec_for(server, tools=("read_file", "explode"))
        record = await run_once(home, spec, repo, tools=[explode])
        second = server.requests[1]
    assert record.status is RunStatus.SUCCEEDED, record.error
    result = next(e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned))
    assert result.ok is False
    assert "kaboom 7" in result.text
    assert "kaboom 7" in json.dumps(second.body)  # the model was told


async def test_path_escape_attempts_are_refused_and_the_run_continues(home: Path, repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret file")
    text = f"""
[[turns]]
[[turns.tool_calls]]
name = "read_file"
args = {{ path = "../outside.txt" }}
[[turns.tool_calls]]
name = "read_file"
args = {{ path = "{outside}" }}
[[turns.tool_calls]]
name = "write_file"
args = {{ path = "../../evil.txt", content = "x" }}
[[turns]]
text = "could not escape"
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server), repo)
        second = json.dumps(server.requests[1].body)
    assert record.status is RunStatus.SUCCEEDED, record.error
    results = [e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned)]
    assert len(results) == 3 and not any(r.ok for r in results)
    assert "host secret file" not in second
    assert not (tmp_path / "evil.txt").exists() and not (home / "evil.txt").exists()


async def test_turn_budget_stops_the_run(home: Path, repo: Path, fix_script: Path) -> None:
    with ScriptedServer(load_script(fix_script)) as server:
        record = await run_once(home, spec_for(server, budget={"max_turns": 2}), repo)
        sent = len(server.requests)
    assert record.status is RunStatus.FAILED
    assert record.error_type == "BudgetExceededError"
    assert sent == 2
    types = [e.type for e in events_of(home, record.id)]
    assert "budget.exceeded" in types and types[-1] == "run.finished"


async def test_large_tool_output_is_saved_to_the_workspace_with_a_pointer(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    text = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "seq 1 20000" }
[[turns]]
text = "saw it"
"""
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, sandbox={"backend": "local", "output_limit": 2000}), repo)
        second = json.dumps(server.requests[1].body)
    assert record.status is RunStatus.SUCCEEDED, record.error
    result = next(e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned))
    # The command's whole output went to its output file as it ran; the model got head, tail and the path.
    assert result.spilled_to is not None and result.spilled_to.startswith(".corral/output/")
    assert f"saved to {result.spilled_to}" in second
    assert len(second) < 20_000
    assert record.result is not None and ".corral" not in record.result["patch"]


async def test_history_is_compacted_near_the_context_limit(home: Path, repo: Path, tmp_path: Path) -> None:
    turns = "".join(
        f"""
[[turns]]
[[turns.tool_calls]]
name = "read_file"
args = {{ path = "calc.py" }}
[turns.usage]
input_tokens = {4000 + 1000 * i}
output_tokens = 20
"""
        for i in range(6)
    )
    text = turns + '\n[[turns]]\ntext = "done"\n'
    spec_kw = {"context": {"window_tokens": 8000, "compact_at": 0.8, "keep_recent_messages": 2}}
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, **spec_kw), repo)
        bodies = [r.body for r in server.requests]
    assert record.status is RunStatus.SUCCEEDED, record.error
    compactions = [e.event for e in events_of(home, record.id) if isinstance(e.event, ContextCompacted)]
    assert compactions, "expected at least one compaction"
    assert compactions[0].saved_to.startswith(".corral/history/")
    # The request after the compaction is shorter than the one before it and carries the pointer.
    sizes = [len(json.dumps(b)) for b in bodies]
    after = next(i for i, b in enumerate(bodies) if ".corral/history/" in json.dumps(b))
    assert sizes[after] < sizes[after - 1]


async def test_unknown_backend_and_empty_task_are_usage_errors(home: Path, repo: Path) -> None:
    store = Store.open(home=home)
    try:
        async with Runtime(store) as runtime:
            with pytest.raises(UsageError):
                await runtime.submit(AgentSpec(name="a", model="openai:gpt-6.1-sol", sandbox="local"), "  ", repo)
            from corral.errors import SandboxError

            with pytest.raises(SandboxError, match="local"):
                await runtime.submit(AgentSpec(name="a", model="openai:gpt-6.1-sol", sandbox="nope"), "t", repo)
    finally:
        store.close()


@pytest.mark.parametrize("provider", list(PROVIDERS))
async def test_a_run_without_tools_is_one_direct_model_call_on_every_wire(
    provider: str, home: Path, repo: Path, tmp_path: Path
) -> None:
    """No tools and no schema: one model call (pydantic-ai's direct request), metered and journaled like any."""
    text = "[[turns]]\ntext = 'The answer is 42.'\n"
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, provider, tools=[]), repo, task="what is six times seven?")
        sent = server.requests
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert record.result is not None and record.result["text"] == "The answer is 42."
    events = [e.event for e in events_of(home, record.id)]
    assert [e.type for e in events].count("model.response") == 1 == len(sent) and record.usage.input_tokens > 0
    assert record.usage.cost_usd > 0 and record.turns == 1
    body = str(sent[0].body)
    assert "what is six times seven?" in body and "careful software engineer" in body  # task and instructions
