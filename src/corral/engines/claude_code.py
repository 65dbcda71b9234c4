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
external side effect); the tools policy allows are allowed, the others are disallowed, so Claude
Code refuses them itself and tells the model why. A rule that asks a person is not supported by this
engine yet: such tools are disallowed, and the run says so in its notes.

Its stream-json output becomes journal events: each ``tool_use`` a ``tool.call``, each
``tool_result`` a ``tool.result``; the final ``result`` message is the run's text. The model calls
themselves are journaled by the gateway (``model.call``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, ClassVar

from jsonschema import Draft202012Validator

from corral import events
from corral.engines.base import Engine, EngineContext, EngineResult
from corral.engines.install import require
from corral.errors import BudgetExceededError, ModelConfigError, ToolError
from corral.policy.decide import Action, decide
from corral.policy.rules import Capability

HOME_IN_WORKSPACE = ".corral/claude-home"
"""The CLI's home, in the workspace: its settings and session files stay with the run's workspace (a
resumed run continues its session), are removed with it, and are never part of its patch."""

RESUME_PROMPT = "Your session was interrupted. Continue the task where you left off."

SESSION_TIMEOUT_S = 3600.0
"""How long one Claude Code session may run when the run's budget sets no wall time (it is cut to it)."""

OUTPUT_LIMIT = 8 * 1024 * 1024
"""The stream-json the CLI prints is kept in memory up to this size; past it, it is read from the output file."""
SPILL_LIMIT = 512 * 1024 * 1024
"""The output file (in the workspace's ``.corral/``) holds this much of a session's output at most."""

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
}
"""Claude Code's tools and what each can do, as corral's policy reads capabilities."""


class ClaudeCodeEngine(Engine):
    """Claude Code (``@anthropic-ai/claude-code``) as a corral engine."""

    name: ClassVar[str] = "claude-code"
    external: ClassVar[bool] = True

    def sandbox_mounts(self) -> tuple[str, ...]:
        return (str(require(self.name).root),)

    async def run(self, ctx: EngineContext) -> EngineResult:
        if ctx.models is None:
            raise ModelConfigError("the claude-code engine runs only under corral's runtime (it needs the gateway)")
        cli = require(self.name)
        allowed, disallowed = self.permissions(ctx)
        await ctx.sandbox.open()
        session = str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral-run:{ctx.run_id}"))
        home, resumed = await self._session_home(ctx, session)
        argv = [str(cli.binary), "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", "dontAsk", "--allowedTools", ",".join(allowed)]
        if disallowed:
            argv += ["--disallowedTools", ",".join(disallowed)]
        if ctx.models.model:
            argv += ["--model", ctx.models.model]
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
            "ANTHROPIC_BASE_URL": ctx.models.anthropic_base_url,
            "ANTHROPIC_API_KEY": ctx.models.api_key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
        }
        ctx.budget.check_wall_time()
        timeout = ctx.budget.clip(SESSION_TIMEOUT_S)
        result = await ctx.sandbox.exec(
            argv, env=env, timeout=timeout, output_limit=OUTPUT_LIMIT, spill_limit=SPILL_LIMIT
        )
        stdout = result.stdout
        if result.truncated and result.output_path is not None:
            # Cut in the middle: the whole stream-json is in the output file (stderr's lines among its
            # lines, which are not JSON and are skipped), while it fits the spill limit.
            stdout = (await ctx.sandbox.read_file(result.output_path)).decode("utf-8", errors="replace")
        return self._outcome(ctx, stdout, result.stderr, result.exit_code, result.timed_out)

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

    def permissions(self, ctx: EngineContext) -> tuple[list[str], list[str]]:
        """Claude Code's tools as the agent's policy decides them, each decision journaled: (allowed, disallowed).

        A tool policy would ask a person about is disallowed: this engine cannot hold Claude Code's
        permission prompt for a person yet.
        """
        allowed: list[str] = []
        disallowed: list[str] = []
        for tool, capabilities in TOOL_CAPABILITIES.items():
            action = Action(tool=tool, arguments={}, capabilities=frozenset(capabilities), run_id=ctx.run_id)
            decision = decide(ctx.spec.policy, action)
            reason = decision.reason
            if decision.verdict == "ask":
                reason += "; the claude-code engine cannot wait for a person yet, so the tool is disallowed"
            (allowed if decision.allowed else disallowed).append(tool)
            ctx.emit(
                events.PolicyDecided(
                    key=f"permission:{tool}",
                    call_id=f"permission:{tool}",
                    tool=tool,
                    kind="permission",
                    verdict="allow" if decision.allowed else "deny",
                    rule=decision.rule,
                    reason=reason,
                )
            )
        return allowed, disallowed

    def _outcome(
        self, ctx: EngineContext, stdout: str, stderr: str, exit_code: int | None, timed_out: bool
    ) -> EngineResult:
        final: dict[str, Any] | None = None
        names: dict[str, str] = {}
        for line in stdout.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not a stream-json line (a cut marker, a stray print)
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "assistant":
                for block in _blocks(message):
                    if block.get("type") == "tool_use":
                        call_id = str(block.get("id", ""))
                        names[call_id] = str(block.get("name", ""))
                        given = block.get("input")
                        arguments: dict[str, Any] = given if isinstance(given, dict) else {}
                        ctx.emit(
                            events.ToolCalled(
                                key=f"tool:{call_id}:call", call_id=call_id, tool=names[call_id], args=arguments
                            )
                        )
            elif kind == "user":
                for block in _blocks(message):
                    if block.get("type") == "tool_result":
                        call_id = str(block.get("tool_use_id", ""))
                        failed = bool(block.get("is_error"))
                        text = ctx.redact(_text(block.get("content")))
                        ctx.emit(
                            events.ToolReturned(
                                key=f"tool:{call_id}:result",
                                call_id=call_id,
                                tool=names.get(call_id, "?"),
                                ok=not failed,
                                text=text,
                                error="ToolError" if failed else None,
                            )
                        )
            elif kind == "result":
                final = message
        if timed_out:
            raise ToolError("Claude Code did not finish within the run's time")
        if final is None:
            detail = ctx.redact(stderr.strip()[-2000:]) or f"exit code {exit_code}"
            raise ToolError(f"Claude Code ended without a result: {detail}")
        text = str(final.get("result") or "")
        if final.get("is_error") or final.get("subtype") != "success":
            if "budget exhausted" in text:
                raise BudgetExceededError("budget", 0.0, 0.0, message=ctx.redact(text))
            how = "" if final.get("subtype") == "success" else f" ({final.get('subtype')})"
            raise ToolError(f"Claude Code failed{how}: {ctx.redact(text)[:2000]}")
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
