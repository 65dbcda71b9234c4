"""The ``claude-code`` engine: Claude Code, headless, inside the run's sandbox, behind the model gateway.

The pinned CLI (``corral engines install claude-code``) is mounted read-only in the sandbox and run
there as one command::

    claude -p --output-format stream-json --verbose --permission-mode dontAsk \\
        --allowedTools ... --disallowedTools ... [--model M] [--append-system-prompt INSTRUCTIONS] -- TASK

with ``ANTHROPIC_BASE_URL`` pointing at the model gateway and ``ANTHROPIC_API_KEY`` set to the run's
gateway key (``ctx.models``): the provider's key never enters the sandbox, every model call is
metered and held to the run's budget by the gateway, and nonessential traffic is off. Its home is
the sandbox's own, made for this run and removed with it.

Permissions: each of Claude Code's tools is put to the agent's policy with the capabilities it has
(``Read`` reads the workspace, ``Edit`` writes it, ``Bash`` runs commands, ``WebFetch`` has an
external side effect); a tool policy denies outright is disallowed, so Claude Code refuses it itself
and tells the model why. When the policy has rules, every call of the others goes through corral's
permission hook (a ``PreToolUse`` hook in ``--settings``) with its real arguments: a rule on
arguments (``Bash`` with ``command = "git push*"``) denies that call only, and a rule that asks a
person holds the call until one decides (``corral approve`` / ``corral deny``).

Its stream-json output becomes journal events: each ``tool_use`` a ``tool.call``, each
``tool_result`` a ``tool.result``; the final ``result`` message is the run's text. The model calls
themselves are journaled by the gateway (``model.call``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from jsonschema import Draft202012Validator

from corral import events
from corral.engines.base import EngineContext, EngineResult
from corral.engines.external import CliOutput, ExternalEngine, failed
from corral.engines.install import require
from corral.errors import ToolError
from corral.policy.rules import Capability
from corral.secrets.redact import redact_data

HOME_IN_WORKSPACE = ".corral/claude-home"
"""The CLI's home, in the workspace: its settings and session files stay with the run's workspace (a
resumed run continues its session), are removed with it, and are never part of its patch."""

RESUME_PROMPT = "Your session was interrupted. Continue the task where you left off."

HOOK_TIMEOUT_S = 7 * 24 * 3600
"""How long Claude Code waits for the permission hook: the hook's wait for a person ends first (the
policy's ``approval_timeout_s``), so this only stops Claude Code's own default (60 s) from ending it."""

TOOL_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "Read": frozenset({Capability.READS_WORKSPACE}),
    "Glob": frozenset({Capability.READS_WORKSPACE}),
    "Grep": frozenset({Capability.READS_WORKSPACE}),
    "LS": frozenset({Capability.READS_WORKSPACE}),
    "NotebookRead": frozenset({Capability.READS_WORKSPACE}),
    "Edit": frozenset({Capability.WRITES_WORKSPACE}),
    "MultiEdit": frozenset({Capability.WRITES_WORKSPACE}),
    "Write": frozenset({Capability.WRITES_WORKSPACE}),
    "NotebookEdit": frozenset({Capability.WRITES_WORKSPACE}),
    "Bash": frozenset({Capability.RUNS_COMMANDS}),
    "WebFetch": frozenset({Capability.EXTERNAL_SIDE_EFFECT}),
    "WebSearch": frozenset({Capability.EXTERNAL_SIDE_EFFECT}),
    "TodoWrite": frozenset(),
    "ExitPlanMode": frozenset(),
}
"""Claude Code's tools and what each can do, as corral's policy reads capabilities."""


class ClaudeCodeEngine(ExternalEngine):
    """Claude Code (``@anthropic-ai/claude-code``) as a corral engine."""

    name: ClassVar[str] = "claude-code"
    tools: ClassVar[Mapping[str, frozenset[Capability]]] = TOOL_CAPABILITIES
    answer_tools: ClassVar[frozenset[str]] = frozenset({"StructuredOutput"})

    async def run(self, ctx: EngineContext) -> EngineResult:
        models = self.models(ctx)
        cli = require(self.name)
        allowed, disallowed = self.decide_tools(ctx)
        await ctx.sandbox.open()
        session = str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral-run:{ctx.run_id}"))
        home, resumed = await self._session_home(ctx, session)
        argv = [*self.command(cli), "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", "dontAsk", "--allowedTools", ",".join(allowed)]
        if disallowed:
            argv += ["--disallowedTools", ",".join(disallowed)]
        hook = self.hook_command(ctx)
        if hook is not None:  # every call of an allowed tool is put to policy with its arguments
            entry = {"matcher": "*", "hooks": [{"type": "command", "command": hook, "timeout": HOOK_TIMEOUT_S}]}
            argv += ["--settings", json.dumps({"hooks": {"PreToolUse": [entry]}})]
        if models.model:
            argv += ["--model", models.model]
        if ctx.spec.instructions.strip():
            argv += ["--append-system-prompt", ctx.spec.instructions.strip()]
        if ctx.spec.output_schema is not None:  # the model answers through Claude Code's StructuredOutput tool
            argv += ["--json-schema", json.dumps(ctx.spec.output_schema)]
        # A run resumed after its process died continues the session it had (Claude Code keeps it in its
        # home, in the workspace's .corral/); the task is text, never an option, whatever it starts with.
        if resumed:
            argv += ["--resume", session, "--", RESUME_PROMPT]
        else:
            argv += ["--session-id", session, "--", ctx.task]
        env = {
            "HOME": home,
            "ANTHROPIC_BASE_URL": models.anthropic_base_url,
            "ANTHROPIC_API_KEY": models.api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
        session = _Session(ctx)
        out = await self.run_cli(ctx, argv, env, session)
        return self._outcome(ctx, session.final, out)

    async def _session_home(self, ctx: EngineContext, session: str) -> tuple[str, bool]:
        """Claude Code's home for this run, as the sandbox sees it (``.corral/claude-home`` in the
        workspace: kept with the workspace, never in its patch), and whether it holds ``session``."""
        script = (
            f"mkdir -p {HOME_IN_WORKSPACE} && cd {HOME_IN_WORKSPACE} && pwd && ls .claude/projects/*/{session}.jsonl"
        )
        found = await ctx.sandbox.exec(["/bin/sh", "-c", script], timeout=30)
        lines = found.stdout.splitlines()
        if not lines or not lines[0].startswith("/"):
            raise ToolError(f"cannot make Claude Code's home in the workspace: {ctx.redact(found.stderr.strip())}")
        return lines[0], found.exit_code == 0

    def _outcome(self, ctx: EngineContext, final: dict[str, Any] | None, out: CliOutput) -> EngineResult:
        if out.timed_out:
            raise ToolError("Claude Code did not finish within the run's time")
        if final is None:
            detail = ctx.redact(out.stderr.strip()[-2000:]) or f"exit code {out.exit_code}"
            raise ToolError(f"Claude Code ended without a result: {detail}")
        text = str(final.get("result") or "")
        if final.get("is_error") or final.get("subtype") != "success":
            how = "" if final.get("subtype") == "success" else f" ({final.get('subtype')})"
            raise failed(f"Claude Code{how}", ctx, text)
        output = None
        if ctx.spec.output_schema is not None:
            output = final.get("structured_output")
            problems = sorted(
                Draft202012Validator(ctx.spec.output_schema).iter_errors(output), key=lambda error: list(error.path)
            )
            if not isinstance(output, dict) or problems:
                why = problems[0].message if problems else "no structured output"
                raise ToolError(f"Claude Code's answer does not match the output schema: {why}")
        return EngineResult(text=ctx.redact(text), output=output, turns=int(final.get("num_turns") or 0))


class _Session:
    """Claude Code's stream-json as it arrives: each ``tool_use`` journaled as a ``tool.call``, each
    ``tool_result`` as a ``tool.result``, the final ``result`` message kept."""

    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self._names: dict[str, str] = {}
        self.final: dict[str, Any] | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        ctx, kind = self._ctx, message.get("type")
        if kind == "assistant":
            for block in _blocks(message):
                if block.get("type") == "tool_use":
                    call_id = str(block.get("id", ""))
                    self._names[call_id] = str(block.get("name", ""))
                    given = block.get("input")
                    arguments: dict[str, Any] = given if isinstance(given, dict) else {}
                    ctx.emit(
                        events.ToolCalled(
                            key=f"tool:{call_id}:call",
                            call_id=call_id,
                            tool=self._names[call_id],
                            args=redact_data(arguments, ctx.redact),
                        )
                    )
        elif kind == "user":
            for block in _blocks(message):
                if block.get("type") == "tool_result":
                    call_id = str(block.get("tool_use_id", ""))
                    failed = bool(block.get("is_error"))
                    ctx.emit(
                        events.ToolReturned(
                            key=f"tool:{call_id}:result",
                            call_id=call_id,
                            tool=self._names.get(call_id, "?"),
                            ok=not failed,
                            text=ctx.redact(_text(block.get("content"))),
                            error="ToolError" if failed else None,
                        )
                    )
        elif kind == "result":
            self.final = message


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    inner = message.get("message")
    content = inner.get("content") if isinstance(inner, dict) else None
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""
