"""The native engine on LocalSteps and an in-process FunctionModel: retries, budgets, compaction, cancel, in ms."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from corral import events as ev
from corral.engines.base import EngineContext, LocalSteps, available_engines, get_engine
from corral.engines.native import NativeEngine
from corral.errors import BudgetExceededError, ModelCallError, UnknownEngineError
from corral.policy.budgets import BudgetClock
from corral.sandbox import Sandbox, SandboxRequest, get_backend
from corral.spec import AgentSpec
from corral.tools.builtin import BUILTIN_TOOLS

pytestmark = pytest.mark.anyio


def spec(**fields: Any) -> AgentSpec:
    base: dict[str, Any] = {
        "name": "unit",
        "model": "openai:gpt-6.1-terra",
        "sandbox": "local",
        "retry": {"initial_backoff_s": 0.001, "max_backoff_s": 0.002},
    }
    return AgentSpec.model_validate({**base, **fields})


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("hello\n")
    box = await get_backend("local").create(SandboxRequest(repo=repo, run_dir=tmp_path / "run"))
    try:
        yield box
    finally:
        await box.destroy()


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.BaseEvent] = []

    def __call__(self, event: ev.BaseEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[ev.BaseEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def context(agent: AgentSpec, sandbox: Sandbox, recorder: Recorder, steps: LocalSteps | None = None) -> EngineContext:
    return EngineContext(
        run_id="unit",
        spec=agent,
        task="do the thing",
        sandbox=sandbox,
        steps=steps or LocalSteps(),
        emit=recorder,
        redact=lambda text: text,
        tools=BUILTIN_TOOLS,
        budget=BudgetClock(agent.budget, time.time()),
    )


def read_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Call read_file once, then answer with what came back."""
    calls = sum(1 for m in messages if isinstance(m, ModelResponse))
    if calls == 0:
        return ModelResponse(parts=[ToolCallPart("read_file", {"path": "notes.txt"})])
    return ModelResponse(parts=[TextPart("done")])


async def test_a_session_emits_one_typed_event_per_step(sandbox: Sandbox) -> None:
    recorder, steps = Recorder(), LocalSteps()
    result = await NativeEngine(model=FunctionModel(read_then_answer)).run(context(spec(), sandbox, recorder, steps))
    assert result.text == "done" and result.turns == 2
    assert (steps.model_calls, steps.tool_calls) == (2, 1)
    kinds = [type(e) for e in recorder.events]
    assert kinds == [
        ev.ModelRequested,
        ev.ModelResponded,
        ev.ToolCalled,
        ev.ToolReturned,
        ev.ModelRequested,
        ev.ModelResponded,
    ]
    (returned,) = recorder.of(ev.ToolReturned)
    assert returned.ok and "hello" in returned.text
    assert len({e.key for e in recorder.events}) == len(recorder.events)  # keys are unique within a run


async def test_retryable_model_errors_are_retried_and_journaled(sandbox: Sandbox) -> None:
    failures = iter([503, 429])

    def flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        status = next(failures, None)
        if status is not None:
            raise ModelHTTPError(status, "gpt-6.1-terra", body={"error": "upstream boom"})
        return ModelResponse(parts=[TextPart("done")])

    recorder = Recorder()
    result = await NativeEngine(model=FunctionModel(flaky)).run(context(spec(), sandbox, recorder))
    assert result.text == "done"
    assert [(r.attempt, r.status_code) for r in recorder.of(ev.ModelRetried)] == [(1, 503), (2, 429)]
    assert recorder.of(ev.ModelResponded)[0].attempts == 3


async def test_a_rejected_request_is_not_retried_and_fails_with_typed_context(sandbox: Sandbox) -> None:
    def rejected(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise ModelHTTPError(400, "gpt-6.1-terra", body={"error": "bad request"})

    recorder = Recorder()
    with pytest.raises(ModelCallError) as caught:
        await NativeEngine(model=FunctionModel(rejected)).run(context(spec(), sandbox, recorder))
    assert caught.value.attempts == 1 and caught.value.cause_type == "ModelHTTPError"
    (failed,) = recorder.of(ev.ModelFailed)
    assert failed.attempts == 1 and "bad request" in failed.error


async def test_the_turn_budget_stops_the_loop_before_the_next_model_call(sandbox: Sandbox) -> None:
    def forever(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("glob", {"pattern": "*"})])

    steps = LocalSteps()
    with pytest.raises(BudgetExceededError) as caught:
        await NativeEngine(model=FunctionModel(forever)).run(
            context(spec(budget={"max_turns": 3}), sandbox, Recorder(), steps)
        )
    assert (caught.value.limit, caught.value.value, caught.value.maximum) == ("max_turns", 4.0, 3.0)
    assert steps.model_calls == 4  # the fourth step raised before calling the model


async def test_the_cost_budget_counts_priced_usage(sandbox: Sandbox) -> None:
    def expensive(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(
            parts=[ToolCallPart("glob", {"pattern": "*"})], usage=RequestUsage(input_tokens=100_000, output_tokens=0)
        )

    prices = {"openai:gpt-6.1-terra": {"input_mtok": 1.0, "output_mtok": 1.0}}
    agent = spec(budget={"max_cost_usd": 0.05}, prices=prices)
    with pytest.raises(BudgetExceededError) as caught:
        await NativeEngine(model=FunctionModel(expensive)).run(context(agent, sandbox, Recorder()))
    assert caught.value.limit == "max_cost_usd"
    assert caught.value.value == pytest.approx(0.1)  # 0.1 USD per call: stopped before the second call


async def test_history_is_compacted_near_the_context_window(sandbox: Sandbox) -> None:
    counter = iter(range(100))

    def chatty(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls = next(counter)  # the history shrinks when compacted, so count calls here
        if calls >= 12:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(
            parts=[ToolCallPart("read_file", {"path": "notes.txt"})],
            usage=RequestUsage(input_tokens=1000 * (calls + 1), output_tokens=10),
        )

    recorder = Recorder()
    agent = spec(context={"window_tokens": 5000, "compact_at": 0.8, "keep_recent_messages": 4})
    result = await NativeEngine(model=FunctionModel(chatty)).run(context(agent, sandbox, recorder))
    assert result.text == "done"
    compactions = recorder.of(ev.ContextCompacted)
    assert compactions, "no compaction although the window filled up"
    saved = (await sandbox.read_file(compactions[0].saved_to)).decode()
    assert "notes.txt" in saved


async def test_cancelling_the_engine_mid_command_kills_the_command(sandbox: Sandbox) -> None:
    token = "97.123457"

    def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[ToolCallPart("execute", {"command": f"sleep {token}"})])

    task = asyncio.create_task(NativeEngine(model=FunctionModel(slow)).run(context(spec(), sandbox, Recorder())))
    from tests.sandbox.host import processes_with

    deadline = time.monotonic() + 10
    while not processes_with(token):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed when the cancel returns; the kernel takes a moment to end a SIGKILLed process.
    for _ in range(250):
        if not processes_with(token):
            break
        await asyncio.sleep(0.02)
    assert processes_with(token) == []


def test_engines_come_from_the_entry_point_group() -> None:
    assert "native" in available_engines()
    assert isinstance(get_engine("native"), NativeEngine)
    with pytest.raises(UnknownEngineError) as caught:
        get_engine("no-such-engine")
    assert caught.value.engine == "no-such-engine" and "native" in caught.value.available
