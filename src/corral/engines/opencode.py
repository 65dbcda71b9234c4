"""The ``opencode`` engine: OpenCode, headless, inside the run's sandbox, behind the model gateway.

The pinned CLI (``corral engines install opencode``) is mounted read-only in the sandbox and run there
as one command::

    opencode run --format json --title "corral run" [--continue] -- TASK

with its home (``HOME`` and the ``XDG_*`` directories: config, sessions, cache) in the workspace's
``.corral/opencode-home``, made for the run and kept with its workspace (a resumed run continues its
session), never in its patch. Corral writes its ``opencode.json``: one provider, the model gateway
(``@ai-sdk/openai-compatible`` on the OpenAI wire, ``@ai-sdk/anthropic`` for an Anthropic model),
with the run's gateway key; ``model`` and ``small_model`` both the spec's model; autoupdate and
sharing off; ``OPENCODE_DISABLE_MODELS_FETCH`` and ``OPENCODE_DISABLE_AUTOUPDATE`` set. The session's
title is given (``--title``), so OpenCode makes no model call to write one.

Permissions: a tool policy denies outright is turned off (``tools``); when the policy has rules,
corral's plugin (``engines/hook/opencode.js``, loaded from the read-only hook directory) puts every
tool call to policy before it runs, with its real arguments, through the same permission hook as
Claude Code and Codex; a refused call fails in OpenCode with the reason, which the model reads.

Its ``--format json`` events become journal events: each finished ``tool`` part a tool call and its
result (a command's exit code included); the last ``text`` part is the run's answer. OpenCode has no
output-schema option: a typed answer is read from the final message, with one correction turn.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any, ClassVar

from corral.engines.base import EngineContext, EngineResult
from corral.engines.external import CORRECTION_PROMPT, ExternalEngine, answer_of, hooks, journal_call, typed_answer
from corral.engines.install import COMPANIONS_DIR, Installed, require
from corral.errors import ToolError
from corral.policy.rules import Capability
from corral.sandbox.types import SANDBOX_PYTHON

HOME_IN_WORKSPACE = ".corral/opencode-home"
"""OpenCode's home and XDG directories, in the workspace: kept with the run's workspace (a resumed run
continues its session), removed with it, never part of its patch."""

CONFIG_DIR = f"{HOME_IN_WORKSPACE}/config/opencode"
PROVIDER = "corral"
TITLE = "corral run"
RESUME_PROMPT = "Your session was interrupted. Continue the task where you left off."

TOOL_CAPABILITIES: dict[str, frozenset[Capability]] = {
    "read": frozenset({Capability.READS_WORKSPACE}),
    "glob": frozenset({Capability.READS_WORKSPACE}),
    "grep": frozenset({Capability.READS_WORKSPACE}),
    "list": frozenset({Capability.READS_WORKSPACE}),
    "edit": frozenset({Capability.WRITES_WORKSPACE}),
    "write": frozenset({Capability.WRITES_WORKSPACE}),
    "patch": frozenset({Capability.WRITES_WORKSPACE}),
    "bash": frozenset({Capability.RUNS_COMMANDS}),
    "webfetch": frozenset({Capability.EXTERNAL_SIDE_EFFECT}),
    "websearch": frozenset({Capability.EXTERNAL_SIDE_EFFECT}),
    "todowrite": frozenset(),
    "todoread": frozenset(),
}
"""OpenCode's tools and what each can do, as corral's policy reads capabilities."""


class OpenCodeEngine(ExternalEngine):
    """OpenCode (``opencode-ai``) as a corral engine."""

    name: ClassVar[str] = "opencode"
    tools: ClassVar[Mapping[str, frozenset[Capability]]] = TOOL_CAPABILITIES

    async def run(self, ctx: EngineContext) -> EngineResult:
        cli = require(self.name)
        _, disabled = self.decide_tools(ctx)
        await ctx.sandbox.open()
        home, resumed = await self._home(ctx, cli)
        await ctx.sandbox.write_file(f"{CONFIG_DIR}/opencode.json", json.dumps(self._config(ctx, disabled)).encode())
        env = {
            "HOME": home,
            "XDG_CONFIG_HOME": f"{home}/config",
            "XDG_DATA_HOME": f"{home}/data",
            "XDG_CACHE_HOME": f"{home}/cache",
            "XDG_STATE_HOME": f"{home}/state",
            "OPENCODE_CONFIG": f"{home}/config/opencode/opencode.json",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "CORRAL_PYTHON": SANDBOX_PYTHON,
            "CORRAL_PERMISSION_URL": self.models(ctx).permission_url,
            "CORRAL_GATEWAY_KEY": self.models(ctx).api_key,
        }
        argv = [*self.command(cli), "run", "--format", "json", "--title", TITLE]
        if resumed:  # the run's process died: continue the session it had (the only one in this home)
            argv.append("--continue")
        result = await self._session(ctx, [*argv, "--", RESUME_PROMPT if resumed else self._task(ctx)], env)
        if ctx.spec.output_schema is None:
            return result
        output, problem = typed_answer(ctx.spec.output_schema, result.text)
        if problem is not None:  # one correction turn, in the same session
            again = [*argv, "--continue"] if not resumed else argv
            result = await self._session(ctx, [*again, "--", CORRECTION_PROMPT.format(problem=problem)], env)
            output, problem = typed_answer(ctx.spec.output_schema, result.text)
            if problem is not None:
                raise ToolError(f"OpenCode's answer does not match the output schema: {problem}")
        return EngineResult(text=result.text, output=output, turns=result.turns)

    def _task(self, ctx: EngineContext) -> str:
        """The first prompt: the task, after the agent's instructions and the output schema, if any."""
        parts = [ctx.spec.instructions.strip()] if ctx.spec.instructions.strip() else []
        parts.append(ctx.task)
        if ctx.spec.output_schema is not None:
            schema = json.dumps(ctx.spec.output_schema)
            parts.append(f"Answer with only a JSON value that matches this JSON schema: {schema}")
        return "\n\n".join(parts)

    async def _home(self, ctx: EngineContext, cli: Installed) -> tuple[str, bool]:
        """OpenCode's home as the sandbox sees it, and whether it holds a session already.

        Its config directory gets the plugin SDK OpenCode installs there at every start (from the npm
        registry, which the sandbox cannot reach): the package files as ``corral engines install``
        wrote them, and its packages from the read-only install."""
        companions = cli.root / COMPANIONS_DIR
        for name in ("package.json", "package-lock.json"):
            await ctx.sandbox.write_file(f"{CONFIG_DIR}/{name}", (companions / name).read_bytes())
        packages = shlex.quote(str(companions / "node_modules"))
        script = (
            f"ln -sfn {packages} {CONFIG_DIR}/node_modules && cd {HOME_IN_WORKSPACE} && pwd"
            " && test -s data/opencode/opencode.db"
        )
        found = await ctx.sandbox.exec(["/bin/sh", "-c", script], timeout=30)
        lines = found.stdout.splitlines()
        if not lines or not lines[0].startswith("/"):
            raise ToolError(f"cannot make OpenCode's home in the workspace: {ctx.redact(found.stderr.strip())}")
        return lines[0], found.exit_code == 0

    def _config(self, ctx: EngineContext, disabled: list[str]) -> dict[str, Any]:
        models = self.models(ctx)
        model = models.model or "scripted"
        if models.provider == "anthropic":
            package, base_url = "@ai-sdk/anthropic", f"{models.anthropic_base_url}/v1"
        else:
            package, base_url = "@ai-sdk/openai-compatible", models.openai_base_url
        config: dict[str, Any] = {
            "model": f"{PROVIDER}/{model}",
            "small_model": f"{PROVIDER}/{model}",
            "autoupdate": False,
            "share": "disabled",
            "provider": {
                PROVIDER: {
                    "npm": package,
                    "name": "corral model gateway",
                    "options": {"baseURL": base_url, "apiKey": models.api_key},
                    "models": {model: {"name": model}},
                }
            },
            # corral's policy decides (the plugin, call by call); OpenCode itself asks nobody.
            "permission": {"edit": "allow", "bash": "allow", "webfetch": "allow", "external_directory": "allow"},
            "tools": dict.fromkeys(disabled, False),
        }
        if self.hook_command(ctx) is not None:
            config["plugin"] = [(hooks() / "opencode.js").as_uri()]
        return config

    async def _session(self, ctx: EngineContext, argv: list[str], env: dict[str, str]) -> EngineResult:
        """Run ``opencode run`` once, its events journaled as they come; its answer."""
        session = _Session(ctx)
        out = await self.run_cli(ctx, argv, env, session)
        return EngineResult(text=answer_of("OpenCode", ctx, out, session.failure, session.text), turns=session.turns)


class _Session:
    """``opencode run --format json`` events as they arrive: finished tool parts journaled, the last
    text kept, a reported error kept."""

    def __init__(self, ctx: EngineContext) -> None:
        self._ctx = ctx
        self.text: str | None = None
        self.turns = 0
        self.failure: str | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        kind, part = message.get("type"), message.get("part")
        part = part if isinstance(part, dict) else {}
        if kind == "tool_use":
            self._journal(part)
        elif kind == "text":
            self.text = str(part.get("text") or "")
        elif kind == "step_finish":
            self.turns += 1
        elif kind == "error":
            error = message.get("error")
            data = error.get("data") if isinstance(error, dict) else None
            found = data.get("message") if isinstance(data, dict) else None
            self.failure = str(found or json.dumps(error, default=str))

    def _journal(self, part: dict[str, Any]) -> None:
        state = _object(part.get("state"))
        status = state.get("status")
        if status not in ("completed", "error"):
            return
        call_id, tool = str(part.get("callID") or part.get("id") or ""), str(part.get("tool") or "?")
        given = state.get("input")
        args = given if isinstance(given, dict) else {}
        ok = status == "completed"
        code = _object(state.get("metadata")).get("exit")
        exit_code = code if isinstance(code, int) else None
        if exit_code not in (None, 0):
            ok = False
        text = str(state.get("output") if status == "completed" else state.get("error") or "")
        journal_call(self._ctx, call_id, tool, args, text, ok=ok, exit_code=exit_code)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
