"""The ``codex`` engine: OpenAI's Codex CLI, headless, inside the run's sandbox, behind the model gateway.

The pinned CLI (``corral engines install codex``) is mounted read-only in the sandbox and run there
as one command::

    codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox \\
        [--output-schema FILE] -- TASK

with ``CODEX_HOME`` in the workspace's ``.corral/codex-home`` (made for the run, kept with its
workspace so a resumed run continues its session, never in its patch) holding a ``config.toml``
corral writes: one model provider, the model gateway (``wire_api = "responses"``, the run's gateway
key in ``CORRAL_GATEWAY_KEY``), analytics and plugins off. Codex's own sandbox and approval prompts
are off: the run's sandbox is the boundary, and corral's policy decides.

Permissions: when the agent's policy has rules, every ``Bash`` command and every ``apply_patch`` goes
through corral's permission hook (a ``PreToolUse`` hook in ``config.toml``) with its real arguments
(``command``; a patch is decided once per file it touches, as ``path``, and the strictest decision
stands). A denied call is refused by Codex, which tells the model why; Codex's output does not show
it, so the hook's answer journals it as a failed tool call. A rule that asks a person holds the
call until one decides.

Its ``--json`` events become journal events: a ``command_execution`` a ``Bash`` tool call with its
exit code, a ``file_change`` an ``apply_patch`` call (failed when Codex could not apply it: Codex
still exits 0), an ``mcp_tool_call`` a call of that tool. The model calls are journaled by the
gateway (``model.call``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from corral.engines.base import EngineContext, EngineResult
from corral.engines.external import CORRECTION_PROMPT, ExternalEngine, answer_of, journal_call, typed_answer
from corral.engines.install import require
from corral.errors import ToolError
from corral.policy.rules import Capability

HOME_IN_WORKSPACE = ".corral/codex-home"
"""``CODEX_HOME``, in the workspace: its config and session files stay with the run's workspace (a
resumed run continues its session), are removed with it, and are never part of its patch."""

WORKSPACE = "/workspace"
RESUME_PROMPT = "Your session was interrupted. Continue the task where you left off."
HOOK_TIMEOUT_S = 7 * 24 * 3600
"""How long Codex waits for the permission hook: the hook's own wait for a person ends first."""

TOOL_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "Bash": frozenset({Capability.RUNS_COMMANDS}),
    "apply_patch": frozenset({Capability.WRITES_WORKSPACE}),
}
"""Codex's tools as its hooks name them (``Bash`` for every shell command), and what each can do."""

_PATCH_PATHS = re.compile(r"^\*\*\* (?:Add File|Update File|Delete File|Move to): (.+)$", re.MULTILINE)
_NOTICES = ("--dangerously-bypass-hook-trust",)
"""Codex's ``error`` items that are notices about corral's own flags, not errors."""
_LOG_ENTRY = re.compile(r"^(?=\d{4}-\d\d-\d\dT\S+ +[A-Z]+ )", re.MULTILINE)
"""Where each entry of Codex's log on stderr starts (an entry may take several lines)."""
_TOOL_ERROR = re.compile(r"^\S+ +ERROR codex_core::tools::router: error=(?P<error>.*)", re.DOTALL)
"""A tool call Codex failed, as its log says it."""


class CodexEngine(ExternalEngine):
    """Codex (``@openai/codex``) as a corral engine."""

    name: ClassVar[str] = "codex"
    tools: ClassVar[Mapping[str, frozenset[Capability]]] = TOOL_CAPABILITIES
    journals_denied_calls: ClassVar[bool] = False

    def calls(self, tool: str, tool_input: Mapping[str, Any]) -> list[dict[str, Any]]:
        if tool != "apply_patch":
            return [dict(tool_input)]
        patch = str(tool_input.get("command", ""))
        paths = _PATCH_PATHS.findall(patch)
        return [{"patch": patch, "path": path.strip()} for path in paths] or [{"patch": patch}]

    async def run(self, ctx: EngineContext) -> EngineResult:
        cli = require(self.name)
        self.decide_tools(ctx)
        await ctx.sandbox.open()
        home, resumed = await self._home(ctx)
        await ctx.sandbox.write_file(f"{HOME_IN_WORKSPACE}/config.toml", self._config(ctx).encode())
        exec_ = [*self.command(cli), "exec"]
        # A run whose process died continues the session it had (the only one in this home).
        resume = [*exec_, "resume", "--last"]
        options = ["--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        if ctx.spec.policy.decides:
            options.append("--dangerously-bypass-hook-trust")  # corral wrote the hook; nobody is there to trust it
        schema: list[str] = []
        if ctx.spec.output_schema is not None:
            written = f"{HOME_IN_WORKSPACE}/output-schema.json"
            await ctx.sandbox.write_file(written, json.dumps(ctx.spec.output_schema).encode())
            schema = ["--output-schema", f"{WORKSPACE}/{written}"]
        env = {"CODEX_HOME": home, "HOME": home, "CORRAL_GATEWAY_KEY": self.models(ctx).api_key}
        if resumed:
            result = await self._session(ctx, [*resume, *options, "--", RESUME_PROMPT], env)
        else:
            result = await self._session(ctx, [*exec_, *options, *schema, "--", ctx.task], env)
        if ctx.spec.output_schema is None:
            return result
        output, problem = typed_answer(ctx.spec.output_schema, result.text)
        if problem is not None:  # one correction turn, in the same session
            prompt = CORRECTION_PROMPT.format(problem=problem)
            result = await self._session(ctx, [*resume, *options, "--", prompt], env)
            output, problem = typed_answer(ctx.spec.output_schema, result.text)
            if problem is not None:
                raise ToolError(f"Codex's answer does not match the output schema: {problem}")
        return EngineResult(text=result.text, output=output, turns=result.turns)

    async def _session(self, ctx: EngineContext, argv: list[str], env: dict[str, str]) -> EngineResult:
        """Run ``codex exec`` once, its events journaled as they come; its answer."""
        session = _Session(ctx)
        out = await self.run_cli(ctx, argv, env, session)
        session.hidden_failures(out.stderr)
        return EngineResult(text=answer_of("Codex", ctx, out, session.failure, session.text), turns=session.turns)

    async def _home(self, ctx: EngineContext) -> tuple[str, bool]:
        """``CODEX_HOME`` as the sandbox sees it, and whether it holds a session already."""
        script = f"mkdir -p {HOME_IN_WORKSPACE} && cd {HOME_IN_WORKSPACE} && pwd && ls sessions/*/*/*/rollout-*.jsonl"
        found = await ctx.sandbox.exec(["/bin/sh", "-c", script], timeout=30)
        lines = found.stdout.splitlines()
        if not lines or not lines[0].startswith("/"):
            raise ToolError(f"cannot make Codex's home in the workspace: {ctx.redact(found.stderr.strip())}")
        return lines[0], found.exit_code == 0

    def _config(self, ctx: EngineContext) -> str:
        """Codex's ``config.toml`` for this run (TOML strings written as JSON strings: the same escapes)."""
        models = self.models(ctx)
        q = json.dumps
        lines = [
            f"model = {q(models.model or 'gpt-5.5')}",
            'model_provider = "corral"',
            'approval_policy = "never"',
            'sandbox_mode = "danger-full-access"',
            "check_for_update_on_startup = false",
        ]
        if ctx.spec.instructions.strip():
            lines.append(f"developer_instructions = {q(ctx.spec.instructions.strip())}")
        lines += [
            "",
            "[model_providers.corral]",
            'name = "corral model gateway"',
            f"base_url = {q(models.openai_base_url)}",
            'env_key = "CORRAL_GATEWAY_KEY"',
            'wire_api = "responses"',
            "",
            "[analytics]",
            "enabled = false",
            "",
            "[features]",
            "plugins = false",
        ]
        hook = self.hook_command(ctx)
        if hook is not None:
            lines += [
                "",
                "[[hooks.PreToolUse]]",
                'matcher = ".*"',
                "[[hooks.PreToolUse.hooks]]",
                'type = "command"',
                f"command = {q(hook)}",
                f"timeout = {HOOK_TIMEOUT_S}",
            ]
        return "\n".join(lines) + "\n"


class _Session:
    """``codex exec --json`` events as they arrive: items journaled, the last answer and any failure kept.

    Codex numbers its items afresh in every process (``item_0``…): a call id is the item's id after
    this session's own prefix, so a resumed or corrected session never reuses one."""

    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self._prefix = uuid.uuid4().hex[:8]
        self.text: str | None = None
        self.turns = 0
        self.failure: str | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        kind, item = message.get("type"), message.get("item")
        if kind == "item.completed" and isinstance(item, dict):
            if item.get("type") == "agent_message":
                self.text = str(item.get("text") or "")
            else:
                self._journal(item)
        elif kind == "turn.completed":
            self.turns += 1
        elif kind == "turn.failed":
            error = message.get("error")
            self.failure = str(error.get("message") if isinstance(error, dict) else error)
        elif kind == "error":
            self.failure = str(message.get("message") or "")

    def hidden_failures(self, stderr: str) -> None:
        """Tool calls Codex failed without an item for them (it exits 0 and tells only its log, e.g. a
        patch that does not apply), journaled as failed calls. Calls its hook refused are not among
        them: the hook's answer journaled those."""
        for n, entry in enumerate(_LOG_ENTRY.split(stderr)):
            found = _TOOL_ERROR.match(entry)
            if found is None or "blocked by PreToolUse hook" in found["error"]:
                continue
            error = found["error"].strip()
            tool = "apply_patch" if error.startswith("apply_patch") else "codex"
            journal_call(self._ctx, f"{self._prefix}.log-{n}", tool, {}, error, ok=False)

    def _journal(self, item: dict[str, Any]) -> None:
        """One finished Codex item as the journal's tool call and result."""
        call_id = f"{self._prefix}.{item.get('id', '')}"
        kind = item.get("type")
        ok = item.get("status") == "completed"
        exit_code: int | None = None
        if kind == "command_execution":
            tool, args = "Bash", {"command": str(item.get("command", ""))}
            text = str(item.get("aggregated_output") or "")
            code = item.get("exit_code")
            exit_code = code if isinstance(code, int) else None
            ok = ok and exit_code == 0
        elif kind == "file_change":
            changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
            tool, args = "apply_patch", {"changes": changes}
            text = "\n".join(f"{c.get('kind')} {c.get('path')}" for c in changes)
        elif kind == "mcp_tool_call":
            tool = f"{item.get('server')}.{item.get('tool')}"
            given = item.get("arguments")
            args = given if isinstance(given, dict) else {}
            text = json.dumps(item.get("result") if ok else item.get("error"), default=str)
        elif kind == "web_search":
            tool, args, text = "web_search", {"query": str(item.get("query", ""))}, ""
        elif kind == "error":
            message = str(item.get("message") or "")
            if any(notice in message for notice in _NOTICES):
                return
            tool, args, text, ok = "codex", {}, message, False
        else:
            return  # reasoning, todo lists: not tool calls
        journal_call(self._ctx, call_id, tool, args, text, ok=ok, exit_code=exit_code)
