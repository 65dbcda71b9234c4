"""The native engine asks policy before every tool call: a denied call never runs, the model reads why as the
tool's error and goes on, and every decision is in the journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import PolicyDecided, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.store import RunStatus
from tests.e2e.test_runs import events_of, run_once, script, spec_for

pytestmark = pytest.mark.anyio

SCRIPT = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo pushed > pushed.txt && git push origin main" }

[[turns]]
[[turns.tool_calls]]
name = "write_file"
args = { path = "./.github/workflows/ci.yml", content = "on: push" }

[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo fine > fine.txt" }

[[turns]]
text = "pushing was refused; left the change for a person"
"""

POLICY = {
    "rules": [
        {"name": "pushes", "tool": "execute", "args_regex": {"command": r"\bgit\s+push\b"}, "decision": "deny",
         "reason": "pushing is for people; leave the branch as it is"},
        {"args": {"path": ".github/workflows/**"}, "decision": "deny", "reason": "CI workflows are off limits"},
    ]
}  # fmt: skip


async def test_a_denied_call_never_runs_and_the_model_reads_the_reason(home: Path, repo: Path, tmp_path: Path) -> None:
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server, policy=POLICY), repo)
        third_request = str(server.requests[2].body)
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [e.event for e in events_of(home, record.id)]
    decisions = [e for e in events if isinstance(e, PolicyDecided)]
    assert [(d.verdict, d.rule) for d in decisions] == [
        ("deny", "pushes"),
        ("deny", "rules[1]"),
        ("allow", None),
    ]
    results = [e for e in events if isinstance(e, ToolReturned)]
    assert [(r.ok, r.error) for r in results] == [(False, "PolicyDenied"), (False, "PolicyDenied"), (True, None)]
    assert results[0].text == "denied by policy (rule pushes): pushing is for people; leave the branch as it is"
    assert "CI workflows are off limits" in third_request  # the model was told, and went on
    patch = (record.result or {})["patch"]
    assert "fine.txt" in patch and "pushed.txt" not in patch and "workflows" not in patch
