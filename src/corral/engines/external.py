"""What the external engines (Claude Code, Codex, OpenCode) share: their CLI in the sandbox, its run, its permissions.

An external engine runs a pinned CLI (``corral engines install``) as one command in the run's
sandbox, its model calls going through the model gateway (``ctx.models``). This module holds the
parts that do not depend on which CLI it is:

* :meth:`ExternalEngine.run_cli` runs the command held to the run's budget and time, and hands each
  JSON line it prints to the engine as it comes (however long the session);
* :class:`HookPolicy` answers the CLI's permission hook (``engines/hook/permission.py``, run by the
  CLI before each tool call and reaching corral through the gateway): each call is put to the
  agent's policy with its real arguments and the capabilities the tool has, journaled
  (``policy.decision``), and, when policy asks a person, waits for one exactly as a native tool
  call does (``approval.requested`` … ``approval.decided``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jsonschema import Draft202012Validator

from corral import events
from corral.engines.base import NO_ONE_TO_ASK, Engine, EngineContext, ModelAccess
from corral.engines.install import Installed, cli_for, engines_dir, require
from corral.errors import BudgetExceededError, EngineInstallError, ModelConfigError, ToolError
from corral.policy.decide import Action, Decision, decide
from corral.policy.rules import Capability
from corral.sandbox.types import SANDBOX_PYTHON, SYSTEM_MOUNT_PATHS
from corral.secrets.redact import redact_data

log = logging.getLogger("corral.engines")

HOOK_DIR = Path(__file__).parent / "hook"
"""corral's hooks, as the package ships them: the permission hook and OpenCode's plugin."""
HOOK = HOOK_DIR / "permission.py"
HOOK_FILES = ("permission.py", "opencode.js")

OUTPUT_LIMIT = 1024 * 1024
"""What of the CLI's output is kept in memory (its head and tail, for error messages): its events are
read as they arrive, not from what is kept."""
LINE_LIMIT = 64 * 1024 * 1024
"""The longest event line read; a longer one (a tool's enormous output) is skipped, with a warning in the log."""
SESSION_TIMEOUT_S = 3600.0
"""How long one CLI session may run when the run's budget sets no wall time (it is cut to it)."""

UNKNOWN_TOOL: frozenset[Capability] = frozenset(Capability)
"""A tool an engine's table does not know (an MCP server's, a new one): it is taken to be able to do anything."""

CORRECTION_PROMPT = (
    "Your final answer does not match the required JSON schema: {problem}. "
    "Answer again with only a JSON value that matches it."
)
"""The one correction turn an engine without its own schema check gets when its answer is off the schema."""

_RANK = {"allow": 0, "ask": 1, "deny": 2}
_FILE_ARGUMENTS = ("file_path", "filePath", "notebook_path")
_GATEWAY_REFUSAL = re.compile(r"corral: ([^\"}\n]+)")


@dataclass(frozen=True)
class CliOutput:
    stderr: str
    exit_code: int | None
    timed_out: bool
    skipped_lines: int = 0
    """Event lines longer than ``LINE_LIMIT``, not read."""


class JsonLines:
    """Bytes as they arrive, cut into lines; each line that is a JSON object goes to ``on_event``."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        self._on_event = on_event
        self._pending = bytearray()
        self._skipping = False
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            if self._skipping:
                self._skipping = False
            else:
                self._line(line)
        if len(self._pending) > LINE_LIMIT:  # the rest of this line is dropped as it comes
            self._pending.clear()
            self._skipping = True
            self.skipped += 1

    def close(self) -> None:
        if self._pending and not self._skipping:
            self._line(bytes(self._pending))
        self._pending.clear()

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # not an event (a stray print)
        if isinstance(event, dict):
            self._on_event(event)


class ExternalEngine(Engine):
    """An engine that is a CLI run inside the sandbox: the parts every such engine has."""

    external: ClassVar[bool] = True
    tools: ClassVar[Mapping[str, frozenset[Capability]]] = {}
    """The CLI's tools, by the name its permission hook gives them, and what each can do."""
    answer_tools: ClassVar[frozenset[str]] = frozenset()
    """Tools the model answers through (Claude Code's ``StructuredOutput``): not actions, never put to policy."""
    journals_denied_calls: ClassVar[bool] = True
    """Whether the CLI's own output shows a call its hook denied (else the hook's answer journals it)."""

    def sandbox_mounts(self) -> tuple[str, ...]:
        mounts = [str(require(self.name).root), str(hooks())]
        if cli_for(self.name).needs_node:  # its runtime too, where the sandbox does not see it already
            prefix = _node().parent.parent
            if not any(prefix.is_relative_to(system) for system in SYSTEM_MOUNT_PATHS):
                mounts.append(str(prefix))
        return tuple(mounts)

    def command(self, cli: Installed) -> list[str]:
        """How the CLI starts in the sandbox: its command; a node script after the node that runs it."""
        if cli_for(self.name).needs_node:
            return [str(_node()), str(cli.binary.resolve())]
        return [str(cli.binary)]

    def models(self, ctx: EngineContext) -> ModelAccess:
        """``ctx.models``, or a clear error when the engine runs without corral's runtime."""
        if ctx.models is None:
            raise ModelConfigError(f"the {self.name} engine runs only under corral's runtime (it needs the gateway)")
        return ctx.models

    def hook_command(self, ctx: EngineContext) -> str | None:
        """The shell command the CLI runs before each tool call, or None when policy decides nothing."""
        if not ctx.spec.policy.decides:
            return None
        access = self.models(ctx)
        return shlex.join([SANDBOX_PYTHON, "-I", str(hooks() / "permission.py"), access.permission_url, access.api_key])

    def calls(self, tool: str, tool_input: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The arguments policy decides one tool call on; more than one when a call acts on several
        things (a patch on several files): the strictest decision stands. A file a call names is also
        its ``path``, whatever the CLI calls it, so one rule (``args = { path = "secrets/*" }``)
        holds for every engine."""
        arguments = dict(tool_input)
        named = next((arguments[key] for key in _FILE_ARGUMENTS if isinstance(arguments.get(key), str)), None)
        if named is not None and "path" not in arguments:
            arguments["path"] = named
        return [arguments]

    def capabilities(self, tool: str) -> frozenset[Capability]:
        return self.tools.get(tool, UNKNOWN_TOOL)

    def decide_tools(self, ctx: EngineContext) -> tuple[list[str], list[str]]:
        """The CLI's tools as policy decides them before any call (no arguments yet): (enabled,
        disabled). A tool policy may still deny or ask about call by call (``ask``, or a rule on
        arguments) is enabled: the hook puts each of its calls to policy. When the agent has a
        policy, each decision is journaled (``kind = "permission"``)."""
        enabled: list[str] = []
        disabled: list[str] = []
        for tool, capabilities in self.tools.items():
            action = Action(tool=tool, arguments={}, capabilities=capabilities, run_id=ctx.run_id, agent=ctx.spec.name)
            decision = decide(ctx.spec.policy, action)
            (disabled if decision.verdict == "deny" else enabled).append(tool)
            if ctx.spec.policy.decides:
                ctx.emit(
                    events.PolicyDecided(
                        key=f"permission:{tool}",
                        call_id=f"permission:{tool}",
                        tool=tool,
                        kind="permission",
                        verdict=decision.verdict,
                        rule=decision.rule,
                        reason=ctx.redact(decision.reason),
                    )
                )
        return enabled, disabled

    async def run_cli(
        self, ctx: EngineContext, argv: list[str], env: dict[str, str], on_event: Callable[[dict[str, Any]], None]
    ) -> CliOutput:
        """Run the CLI once in the sandbox, within the run's time, giving each JSON line it prints to
        ``on_event`` as it arrives (the journal shows a session as it goes, however long it is)."""
        ctx.budget.check_wall_time()
        lines = JsonLines(on_event)
        result = await ctx.sandbox.exec(
            argv,
            env=env,
            timeout=ctx.budget.clip(SESSION_TIMEOUT_S),
            output_limit=OUTPUT_LIMIT,
            spill_limit=0,
            on_stdout=lines.feed,
        )
        lines.close()
        if lines.skipped:
            log.warning(
                "run %s: %d event lines of %s longer than %d bytes were not read",
                ctx.run_id,
                lines.skipped,
                self.name,
                LINE_LIMIT,
            )
        return CliOutput(result.stderr, result.exit_code, result.timed_out, lines.skipped)


class HookPolicy:
    """The answers to one run's permission hook (the gateway account's ``on_permission``)."""

    def __init__(self, engine: ExternalEngine, ctx: EngineContext) -> None:
        self._engine, self._ctx = engine, ctx
        self._counts: dict[str, int] = {}
        self._unnamed = 0

    async def __call__(self, call: dict[str, Any]) -> dict[str, str]:
        ctx, engine = self._ctx, self._engine
        tool = str(call["tool"])
        if tool in engine.answer_tools:
            return {"decision": "allow", "reason": "the model's answer"}
        given = call.get("input")
        tool_input: dict[str, Any] = given if isinstance(given, dict) else {"input": given}
        if call.get("id"):
            call_id = str(call["id"])
        else:
            self._unnamed += 1
            call_id = f"hook-{self._unnamed}"
        count = self._counts.get(tool, 0)
        self._counts[tool] = count + 1
        capabilities = engine.capabilities(tool)
        actions = [
            Action(
                tool=tool,
                arguments=arguments,
                capabilities=capabilities,
                run_id=ctx.run_id,
                agent=ctx.spec.name,
                depth=ctx.depth,
                count=count + 1,
            )
            for arguments in engine.calls(tool, tool_input)
        ]
        action, decision = _strictest((action, decide(ctx.spec.policy, action)) for action in actions)
        ctx.emit(
            events.PolicyDecided(
                key=f"tool:{call_id}:policy",
                call_id=call_id,
                tool=tool,
                kind="tool",
                verdict=decision.verdict,
                rule=decision.rule,
                reason=ctx.redact(decision.reason),
            )
        )
        if decision.verdict == "ask":  # a person decides; the hook (and the CLI) wait as long as it takes
            decision = await ctx.ask(action, decision, call_id) if ctx.ask is not None else NO_ONE_TO_ASK
        if not decision.allowed and not engine.journals_denied_calls:
            refused = f"denied by policy: {decision.reason}"
            journal_call(ctx, call_id, tool, tool_input, refused, ok=False, error="PolicyDenied")
        why = decision.reason if decision.allowed else f"denied by corral policy: {decision.reason}"
        return {"decision": "allow" if decision.allowed else "deny", "reason": ctx.redact(why)}


def _strictest(decisions: Iterable[tuple[Action, Decision]]) -> tuple[Action, Decision]:
    return max(decisions, key=lambda pair: _RANK[pair[1].verdict])


def journal_call(
    ctx: EngineContext,
    call_id: str,
    tool: str,
    args: Mapping[str, Any],
    text: str,
    *,
    ok: bool,
    exit_code: int | None = None,
    error: str | None = None,
) -> None:
    """A finished CLI tool call as the journal's ``tool.call`` and ``tool.result``, redacted. A failed
    call's error is ``error``, else ``ExitCode`` for a command that exited non-zero, else ``ToolError``."""
    redacted = redact_data(dict(args), ctx.redact)
    ctx.emit(events.ToolCalled(key=f"tool:{call_id}:call", call_id=call_id, tool=tool, args=redacted))
    if not ok and error is None:
        error = "ExitCode" if exit_code else "ToolError"
    ctx.emit(
        events.ToolReturned(
            key=f"tool:{call_id}:result",
            call_id=call_id,
            tool=tool,
            ok=ok,
            text=ctx.redact(text),
            error=None if ok else error,
            exit_code=exit_code,
        )
    )


def answer_of(cli: str, ctx: EngineContext, out: CliOutput, failure: str | None, text: str | None) -> str:
    """A session's answer, or the error its ending is: out of time, a failure the CLI reported (the
    budget's, when the gateway refused a call for it), or no answer at all (its stderr's tail says why)."""
    if out.timed_out:
        raise ToolError(f"{cli} did not finish within the run's time")
    if failure is not None:
        raise failed(cli, ctx, failure)
    if text is None:
        detail = ctx.redact(out.stderr.strip()[-2000:]) or f"exit code {out.exit_code}"
        raise ToolError(f"{cli} ended without an answer: {detail}")
    return ctx.redact(text)


def typed_answer(schema: dict[str, Any], text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A final message as the output schema's JSON object, or why it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, "the answer is not JSON"
    problems = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda error: list(error.path))
    if problems:
        return None, problems[0].message
    if not isinstance(value, dict):
        return None, "the answer is not a JSON object"
    return value, None


def failed(cli: str, ctx: EngineContext, failure: str) -> Exception:
    """The error a CLI's reported failure is: the budget's, when the gateway refused a model call for
    it (the CLI wraps the gateway's words in its own), else a tool error naming the CLI."""
    refusal = _GATEWAY_REFUSAL.search(failure)
    if refusal is not None and "budget" in failure:
        return BudgetExceededError("budget", 0.0, 0.0, message=ctx.redact(refusal.group(1).strip()))
    return ToolError(f"{cli} failed: {ctx.redact(failure)[:2000]}")


def _node() -> Path:
    """The node runtime on this machine (its real path), for a CLI that is a node script."""
    found = shutil.which("node")
    if found is None:
        raise EngineInstallError(
            "this engine's CLI runs on Node.js, which is not installed", hint="install Node.js >= 16"
        )
    return Path(found).resolve()


def hooks() -> Path:
    """corral's hooks where a sandbox mounts them read-only: a copy in the engines' cache, named by their
    content (the package itself may live anywhere, /tmp included, which a sandbox provides itself)."""
    digest = hashlib.sha256(b"".join((HOOK_DIR / name).read_bytes() for name in HOOK_FILES)).hexdigest()[:16]
    final = engines_dir() / "hooks" / digest
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".hooks-", dir=final.parent))
    try:
        for name in HOOK_FILES:
            shutil.copyfile(HOOK_DIR / name, partial / name)
        partial.chmod(0o755)
        try:
            partial.rename(final)
        except OSError:  # another process made it first: theirs is the same
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final
