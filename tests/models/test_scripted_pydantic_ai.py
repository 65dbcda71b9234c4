"""pydantic-ai agents (the native engine's loop) run against the scripted model server over every API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, ToolOutput
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from corral.models.scripted import Script, ScriptedServer, ScriptUsage, ToolCall, Turn

pytestmark = pytest.mark.anyio


def chat_model(server: ScriptedServer) -> Model:
    return OpenAIChatModel("gpt-4.1-mini", provider=OpenAIProvider(base_url=server.openai_base_url, api_key="k"))


def responses_model(server: ScriptedServer) -> Model:
    return OpenAIResponsesModel("gpt-6.1-sol", provider=OpenAIProvider(base_url=server.openai_base_url, api_key="k"))


def anthropic_model(server: ScriptedServer) -> Model:
    provider = AnthropicProvider(base_url=server.anthropic_base_url, api_key="k")
    return AnthropicModel("claude-sonnet-5-5", provider=provider)


MODELS = pytest.mark.parametrize(
    "make_model", [chat_model, responses_model, anthropic_model], ids=["chat", "responses", "anthropic"]
)


class Fix(BaseModel):
    summary: str
    files_changed: int


SCRIPT = Script(
    turns=[
        Turn(
            text="Let me add those.",
            reasoning="The user wants a sum.",
            tool_calls=[ToolCall(name="add", args={"a": 2, "b": 3})],
            usage=ScriptUsage(input_tokens=1200, output_tokens=80, cache_read_tokens=1000, cache_write_tokens=50),
        ),
        Turn(
            output={"summary": "fixed", "files_changed": 1},
            usage=ScriptUsage(input_tokens=1500, output_tokens=20, cache_read_tokens=1100),
        ),
    ]
)


@MODELS
async def test_agent_calls_a_python_tool_then_returns_structured_output(
    make_model: Callable[[ScriptedServer], Model],
) -> None:
    added: list[tuple[int, int]] = []
    with ScriptedServer(SCRIPT) as server:
        agent = Agent(make_model(server), output_type=Fix, instructions="You fix bugs.")

        @agent.tool_plain
        def add(a: int, b: int) -> int:
            added.append((a, b))
            return a + b

        async with agent:  # closes the provider's HTTP client with the test's event loop
            result = await agent.run("add 2 and 3")
    assert result.output == Fix(summary="fixed", files_changed=1)
    assert added == [(2, 3)]
    usage = result.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 2700, 100)
    assert usage.cache_read_tokens == 2100
    assert usage.cache_write_tokens == 50
    second = server.requests[1]
    assert second.position == 1
    assert second.status == 200


@MODELS
async def test_streamed_agent_run_sees_the_same_session(
    make_model: Callable[[ScriptedServer], Model],
) -> None:
    with ScriptedServer(SCRIPT) as server:
        agent = Agent(make_model(server), output_type=ToolOutput(Fix))  # the script answers with a tool call
        agent.tool_plain(lambda a, b: a + b, name="add")
        async with agent, agent.run_stream("add 2 and 3") as run:
            output = await run.get_output()
        usage = run.usage
    assert output == Fix(summary="fixed", files_changed=1)
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 2700, 100)
    assert all(r.body is not None and r.body.get("stream") for r in server.requests)


@MODELS
async def test_plain_text_agent_and_estimated_usage(make_model: Callable[[ScriptedServer], Model]) -> None:
    with ScriptedServer([Turn(text="Hello there.")]) as server:
        async with Agent(make_model(server)) as agent:
            result = await agent.run("hi")
    assert result.output == "Hello there."
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
