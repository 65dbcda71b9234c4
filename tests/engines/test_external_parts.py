"""The parts every external engine shares, without a CLI: its event lines, and the answers to its
permission hook (policy on a call's arguments; a patch decided per file; asks; denials journaled)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral import events
from corral.engines.claude_code import ClaudeCodeEngine
from corral.engines.codex import CodexEngine
from corral.engines.external import ExternalEngine, HookPolicy, JsonLines
from corral.errors import EngineInstallError
from corral.policy.decide import Action, Decision
from corral.policy.rules import PolicySpec

pytestmark = pytest.mark.anyio


def test_json_lines_are_read_as_they_come_and_a_line_too_long_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.engines.external as external

    monkeypatch.setattr(external, "LINE_LIMIT", 64)
    got: list[dict[str, Any]] = []
    lines = JsonLines(got.append)
    for piece in (b'{"a": 1}\n{"b"', b": 2}\nnot json\n[1]\n", b'{"long": "' + b"x" * 100, b'"}\n{"c": 3}'):
        lines.feed(piece)
    assert got == [{"a": 1}, {"b": 2}]  # the long line's rest is dropped as it comes
    lines.close()  # the last line, without its newline
    assert got == [{"a": 1}, {"b": 2}, {"c": 3}] and lines.skipped == 1


PATCH = """*** Begin Patch
*** Update File: src/app.py
@@
-a
+b
*** Add File: secrets/key.pem
+x
*** End Patch
"""


class Context(SimpleNamespace):
    """What HookPolicy reads of an engine context."""

    def __init__(self, policy: dict[str, Any], ask: Any = None) -> None:
        emitted: list[events.BaseEvent] = []
        super().__init__(
            run_id="run-1",
            spec=SimpleNamespace(policy=PolicySpec.model_validate(policy), name="agent"),
            depth=0,
            emit=emitted.append,
            redact=lambda text: text.replace("hunter2", "[REDACTED]"),
            ask=ask,
            emitted=emitted,
        )


def hook(engine: ExternalEngine, ctx: Context) -> HookPolicy:
    return HookPolicy(engine, ctx)  # type: ignore[arg-type]  # the parts of a context it reads


async def test_a_patch_is_decided_per_file_it_touches_and_the_strictest_decision_stands() -> None:
    deny = {"tool": "apply_patch", "args": {"path": "secrets/*"}, "decision": "deny", "reason": "not the secrets"}
    ctx = Context({"rules": [deny]})
    answer = await hook(CodexEngine(), ctx)({"tool": "apply_patch", "input": {"command": PATCH}, "id": "call_7"})
    assert answer == {"decision": "deny", "reason": "denied by corral policy: not the secrets"}
    decided, called, returned = ctx.emitted
    assert isinstance(decided, events.PolicyDecided) and decided.call_id == "call_7" and decided.verdict == "deny"
    # Codex's own output never shows a call its hook refused: the answer journals it, failed
    assert isinstance(called, events.ToolCalled) and called.tool == "apply_patch"
    assert isinstance(returned, events.ToolReturned) and not returned.ok and returned.error == "PolicyDenied"
    ctx = Context({"rules": [deny]})
    safe = PATCH.split("*** Add File")[0] + "*** End Patch\n"
    answer = await hook(CodexEngine(), ctx)({"tool": "apply_patch", "input": {"command": safe}, "id": "call_8"})
    assert answer["decision"] == "allow" and len(ctx.emitted) == 1


async def test_an_ask_waits_for_the_person_and_their_decision_stands() -> None:
    asked: list[tuple[Action, str]] = []

    async def ask(action: Action, decision: Decision, call_id: str) -> Decision:
        asked.append((action, call_id))
        return Decision(verdict="allow", reason="approved by ann")

    rule = {"tool": "Bash", "args": {"command": "git push*"}, "decision": "ask", "reason": "a push leaves"}
    ctx = Context({"rules": [rule]}, ask=ask)
    answer = await hook(ClaudeCodeEngine(), ctx)({"tool": "Bash", "input": {"command": "git push"}, "id": "toolu_1"})
    assert answer == {"decision": "allow", "reason": "approved by ann"}
    ((action, call_id),) = asked
    assert (action.tool, dict(action.arguments), call_id, action.count) == (
        "Bash",
        {"command": "git push"},
        "toolu_1",
        1,
    )
    # Claude Code shows refused calls itself: the answer adds no tool events
    assert [type(e) for e in ctx.emitted] == [events.PolicyDecided]
    # no one to ask (no runtime): denied
    ctx = Context({"rules": [rule]})
    answer = await hook(ClaudeCodeEngine(), ctx)({"tool": "Bash", "input": {"command": "git push"}})
    assert answer["decision"] == "deny" and "without a runtime to ask" in answer["reason"]


async def test_an_unknown_tool_is_taken_to_do_anything_and_reasons_are_redacted() -> None:
    rule = {"capability": "external_side_effect", "decision": "deny", "reason": "stay in: hunter2"}
    ctx = Context({"rules": [rule]})
    answer = await hook(CodexEngine(), ctx)({"tool": "mcp__web__fetch", "input": "hunter2"})
    assert answer["decision"] == "deny" and "hunter2" not in json.dumps(answer)
    assert "hunter2" not in json.dumps([e.model_dump() for e in ctx.emitted])


def test_a_node_cli_starts_with_the_node_that_runs_it_mounted_when_the_sandbox_would_not_see_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral.engines.external as external

    monkeypatch.setenv("CORRAL_ENGINES_DIR", str(tmp_path / "engines"))
    installed = SimpleNamespace(root=tmp_path / "codex", binary=tmp_path / "codex/node_modules/.bin/codex")
    monkeypatch.setattr(external, "require", lambda name: installed)
    node = tmp_path / "nvm/versions/node/v20/bin/node"  # a node of one user's, outside /usr
    node.parent.mkdir(parents=True)
    node.touch()
    monkeypatch.setattr(external.shutil, "which", lambda name: str(node))
    engine = CodexEngine()
    assert engine.sandbox_mounts() == (
        str(installed.root),
        str(external.hooks()),
        str(tmp_path / "nvm/versions/node/v20"),
    )
    assert engine.command(installed)[0] == str(node)  # type: ignore[arg-type]
    monkeypatch.setattr(external.shutil, "which", lambda name: "/usr/bin/node")
    assert engine.sandbox_mounts() == (str(installed.root), str(external.hooks()))  # /usr is there already
    assert external.hooks().is_relative_to(tmp_path / "engines")  # a copy where a sandbox can mount it
    assert ClaudeCodeEngine().command(installed) == [str(installed.binary)]  # type: ignore[arg-type]  # native
    monkeypatch.setattr(external.shutil, "which", lambda name: None)
    with pytest.raises(EngineInstallError, match=r"Node\.js"):
        engine.command(installed)  # type: ignore[arg-type]
