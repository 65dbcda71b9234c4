"""run_tool and the tool decorator: validation, failures as outcomes, redaction and output spilling."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import BaseModel, Field

from corral.errors import PathEscapeError, ToolError
from corral.sandbox import Sandbox
from corral.tools import BUILTIN_TOOLS, Capability, ToolContext, ToolDef, run_tool, tool

pytestmark = pytest.mark.anyio


class EchoParams(BaseModel):
    text: str = Field(description="what to echo")
    times: int = 1


@tool(capabilities=[Capability.EXTERNAL_SIDE_EFFECT])
async def echo(ctx: ToolContext, args: EchoParams) -> str:
    """Echo text back, several times."""
    return "\n".join([args.text] * args.times)


class NoParams(BaseModel):
    pass


@tool(name="boom")
async def crashing(ctx: ToolContext, args: NoParams) -> str:
    """Always crashes."""
    raise KeyError("missing-thing")


def test_tool_decorator_builds_a_tooldef_from_the_function() -> None:
    assert isinstance(echo, ToolDef)
    assert echo.name == "echo"
    assert echo.description == "Echo text back, several times."
    assert echo.params is EchoParams
    assert echo.capabilities == frozenset({Capability.EXTERNAL_SIDE_EFFECT})
    schema = echo.json_schema()
    assert schema["required"] == ["text"]
    assert schema["properties"]["text"]["description"] == "what to echo"
    assert crashing.name == "boom"
    assert crashing.capabilities == frozenset()


def test_tool_decorator_rejects_unusable_functions() -> None:
    with pytest.raises(TypeError, match="async"):

        @tool()  # pyright: ignore[reportArgumentType]
        def not_async(ctx: ToolContext, args: NoParams) -> str:
            """Sync."""
            return ""

    with pytest.raises(TypeError, match="docstring"):

        @tool()
        async def undocumented(ctx: ToolContext, args: NoParams) -> str:
            return ""

    with pytest.raises(TypeError, match="pydantic model"):

        @tool()  # pyright: ignore[reportArgumentType]
        async def untyped(ctx: ToolContext, args: dict) -> str:
            """Untyped."""
            return ""


async def test_tools_defined_inside_functions_resolve_local_param_models(ctx: ToolContext) -> None:
    class LocalParams(BaseModel):
        word: str

    @tool()
    async def shout(ctx: ToolContext, args: LocalParams) -> str:
        """Shout a word."""
        return args.word.upper()

    assert shout.params is LocalParams
    assert (await run_tool(shout, ctx, {"word": "hey"})).text == "HEY"


async def test_run_tool_returns_the_result(ctx: ToolContext) -> None:
    outcome = await run_tool(echo, ctx, {"text": "hi", "times": 2})
    assert (outcome.ok, outcome.text, outcome.error, outcome.spilled_to) == (True, "hi\nhi", None, None)
    assert outcome.duration_ms >= 0


async def test_run_tool_accepts_json_text_arguments(ctx: ToolContext) -> None:
    assert (await run_tool(echo, ctx, '{"text": "from json"}')).text == "from json"
    assert (await run_tool(BUILTIN_TOOLS["diff"], ctx, "")).text == "no changes"


async def test_invalid_arguments_list_every_field_error(ctx: ToolContext) -> None:
    outcome = await run_tool(echo, ctx, {"times": "many"})
    assert not outcome.ok
    assert outcome.error == "ValidationError"
    assert outcome.text.startswith("invalid arguments for tool echo:")
    assert "- text: Field required" in outcome.text
    assert "- times: Input should be a valid integer" in outcome.text
    assert "expected fields: text, times" in outcome.text


async def test_misnamed_builtin_arguments_are_reported(ctx: ToolContext) -> None:
    outcome = await run_tool(BUILTIN_TOOLS["read_file"], ctx, {"file_path": "README.md"})
    assert not outcome.ok
    assert "- path: Field required" in outcome.text
    assert "- file_path: Extra inputs are not permitted" in outcome.text


async def test_malformed_json_arguments_are_reported(ctx: ToolContext) -> None:
    outcome = await run_tool(echo, ctx, '{"text": ')
    assert not outcome.ok
    assert outcome.error == "ValidationError"
    assert "(arguments): Invalid JSON" in outcome.text


async def test_a_crashing_tool_becomes_a_failed_outcome(ctx: ToolContext) -> None:
    outcome = await run_tool(crashing, ctx, {})
    assert not outcome.ok
    assert outcome.error == "KeyError"
    assert outcome.text == "tool boom crashed: KeyError: 'missing-thing'"


async def test_tool_and_sandbox_errors_keep_their_message(ctx: ToolContext) -> None:
    @tool()
    async def refuses(ctx: ToolContext, args: NoParams) -> str:
        """Refuses."""
        raise ToolError("cannot do that", hint="try this instead")

    @tool()
    async def escapes(ctx: ToolContext, args: NoParams) -> str:
        """Escapes."""
        ctx.sandbox.resolve("../../etc/passwd")
        return "unreachable"

    refused = await run_tool(refuses, ctx, {})
    assert (refused.ok, refused.error) == (False, "ToolError")
    assert refused.text == "cannot do that\n  hint: try this instead"
    escaped = await run_tool(escapes, ctx, {})
    assert (escaped.ok, escaped.error) == (False, PathEscapeError.__name__)


async def test_a_non_string_result_is_a_crash(ctx: ToolContext) -> None:
    @tool()
    async def numeric(ctx: ToolContext, args: NoParams) -> str:
        """Returns a number."""
        return 42  # pyright: ignore[reportReturnType]

    outcome = await run_tool(numeric, ctx, {})
    assert not outcome.ok
    assert "returned int, expected str" in outcome.text


async def test_redact_applies_to_results_and_errors(ctx: ToolContext) -> None:
    ctx = replace(ctx, redact=lambda text: text.replace("s3cr3t", "[REDACTED]"))
    assert (await run_tool(echo, ctx, {"text": "key=s3cr3t"})).text == "key=[REDACTED]"

    @tool()
    async def leaky(ctx: ToolContext, args: NoParams) -> str:
        """Crashes with a secret in the message."""
        raise RuntimeError("token s3cr3t rejected")

    outcome = await run_tool(leaky, ctx, {})
    assert "s3cr3t" not in outcome.text
    assert "[REDACTED]" in outcome.text


async def test_a_failing_redactor_withholds_the_result(ctx: ToolContext) -> None:
    def broken(text: str) -> str:
        raise ValueError("bad pattern")

    outcome = await run_tool(echo, replace(ctx, redact=broken), {"text": "s3cr3t"})
    assert "s3cr3t" not in outcome.text
    assert "withheld" in outcome.text


async def test_large_results_are_spilled_to_a_file_with_a_preview(ctx: ToolContext, sandbox: Sandbox) -> None:
    ctx = replace(ctx, output_limit=1000, redact=lambda text: text.replace("s3cr3t", "***"))
    lines = [f"line {n} s3cr3t" for n in range(1, 501)]
    outcome = await run_tool(echo, ctx, {"text": "\n".join(lines)})
    assert outcome.ok
    assert outcome.spilled_to is not None
    assert outcome.spilled_to.startswith(".corral/outputs/")
    assert outcome.spilled_to.endswith(".txt")
    saved = (sandbox.workspace / outcome.spilled_to).read_text()
    assert saved == "\n".join(lines).replace("s3cr3t", "***")
    assert len(outcome.text) <= 1000
    assert outcome.text.startswith("line 1 ***\nline 2 ***\n")
    assert "line 500 ***\n[full output" in outcome.text
    assert "lines omitted" in outcome.text
    assert f"full output ({len(saved)} chars) saved to {outcome.spilled_to}; read it with read_file" in outcome.text
    assert "s3cr3t" not in outcome.text
    # The pointer works: the model can read the spilled file back with read_file.
    reread = await run_tool(BUILTIN_TOOLS["read_file"], ctx, {"path": outcome.spilled_to, "start_line": 500})
    assert reread.text.startswith("   500\tline 500 ***")


async def test_a_single_huge_line_is_cut_in_the_preview(ctx: ToolContext) -> None:
    ctx = replace(ctx, output_limit=500)
    outcome = await run_tool(echo, ctx, {"text": "x" * 5000})
    assert outcome.spilled_to is not None
    assert len(outcome.text) < 500
    assert outcome.text.startswith("x" * 250 + "…")


async def test_spill_file_names_stay_inside_the_outputs_dir(ctx: ToolContext, sandbox: Sandbox) -> None:
    first = replace(ctx, output_limit=10, idempotency_key="../../escape/step 1")
    second = replace(ctx, output_limit=10, idempotency_key="../../escape/step_1")
    spilled = [(await run_tool(echo, c, {"text": "y" * 100})).spilled_to for c in (first, second)]
    assert all(path is not None and path.count("/") == 2 for path in spilled), spilled
    assert spilled[0] != spilled[1]
    assert not (sandbox.workspace.parent / "escape").exists()


async def test_spilled_outputs_are_not_part_of_the_diff(ctx: ToolContext) -> None:
    await run_tool(echo, replace(ctx, output_limit=10), {"text": "z" * 100})
    assert (await run_tool(BUILTIN_TOOLS["diff"], ctx, {})).text == "no changes"
