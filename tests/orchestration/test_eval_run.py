"""The eval tool end to end: a scripted model writes a program that fans out tool calls; each call passes
policy and lands in the journal under the eval; a denied call raises inside the program; type errors come
back before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.events import PolicyDecided, ProgramLogged, ToolCalled, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.store import RunStatus
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.orchestration.support import eval_script

pytestmark = pytest.mark.anyio

PROGRAM = """
names = ["calc.py", "test_calc.py", "AGENTS.md"]
texts = await asyncio.gather(*[tools.read_file(path=name) for name in names])
sizes = {name: len(text.splitlines()) for name, text in zip(names, texts)}
log("read", len(names), "files")
try:
    await tools.execute(command="rm -rf /workspace")
except ToolError as e:
    print("refused:", e)
hits = await tools.grep(pattern="def ")
sizes
"""

SCRIPT = eval_script(PROGRAM, "await tools.read_file(path=3)")

POLICY = {
    "rules": [
        {"name": "no rm", "tool": "execute", "args": {"command": "rm *"}, "decision": "deny",
         "reason": "never delete the workspace"},
    ]
}  # fmt: skip


async def test_a_program_fans_out_tool_calls_under_policy_and_the_journal(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    tools = ["read_file", "grep", "execute", "eval"]
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server, tools=tools, policy=POLICY), repo)
        sent = [json.dumps(request.body) for request in server.requests]
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [e.event for e in events_of(home, record.id)]
    calls = [e for e in events if isinstance(e, ToolCalled)]
    evals = [c for c in calls if c.tool == "eval"]
    assert len(evals) == 2 and "asyncio.gather" in str(evals[0].args)
    children = [c for c in calls if c.parent_call_id == evals[0].call_id]
    assert [c.tool for c in children] == ["read_file", "read_file", "read_file", "execute", "grep"]
    assert all(c.call_id.startswith(f"{evals[0].call_id}.") for c in children)
    (denied,) = [e for e in events if isinstance(e, PolicyDecided) and e.verdict == "deny"]
    assert denied.rule == "no rm"
    (logged,) = [e for e in events if isinstance(e, ProgramLogged)]
    assert logged.text == "read 3 files" and logged.call_id == evals[0].call_id

    results = {e.call_id: e for e in events if isinstance(e, ToolReturned)}
    first = results[evals[0].call_id]
    assert first.ok
    assert "refused: denied by policy (rule no rm): never delete the workspace" in first.text
    assert 'value: {"calc.py": ' in first.text
    second = results[evals[1].call_id]
    assert not second.ok and second.error == "TypeCheckError"
    assert "Expected `str`, found `Literal[3]`" in second.text
    # What the model read: the program's output, not the files (they stayed in the program).
    assert "Return the sum of a and b" not in sent[1]
    assert "refused: denied by policy" in sent[1] and "TypeCheckError" not in sent[1]


def test_program_tools_must_be_the_agents_own() -> None:
    import tomllib

    from corral.errors import SpecError
    from corral.spec import AgentSpec, parse_config

    text = '[agents.a]\nmodel = "scripted:demo"\ntools = ["read_file", "eval"]\nprograms = { tools = ["execute"] }'
    with pytest.raises(SpecError, match=r"programs\.tools: execute not among the agent's own tools \(read_file\)"):
        parse_config(tomllib.loads(text), Path("corral.toml"))
    spec = AgentSpec(name="a", model="scripted:demo", tools=("read_file", "eval"))
    assert spec.programs.host_calls == 1000


async def test_the_trace_shows_a_programs_calls_under_its_eval(home: Path, repo: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from corral.cli.views import print_trace

    tools = ["read_file", "grep", "execute", "eval"]
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        record = await run_once(home, spec_for(server, tools=tools, policy=POLICY), repo)
    console = Console(record=True, width=200, force_terminal=False)
    print_trace(console, record, events_of(home, record.id))
    lines = console.export_text().splitlines()
    (at,) = [n for n, line in enumerate(lines) if 'eval(program="names = ' in line]
    depth = len(lines[at]) - len(lines[at].lstrip())
    end = next(n for n in range(at + 1, len(lines)) if "model call 2" in lines[n])
    under = lines[at + 1 : end]
    assert all(len(line) - len(line.lstrip()) > depth for line in under)  # all of it nested under the eval
    assert any('read_file(path="calc.py")' in line for line in under)
    assert any('execute(command="rm -rf /workspace")  ✗ PolicyDenied' in line for line in under)
    assert any("log: read 3 files" in line for line in under)


async def test_a_log_line_written_last_is_journaled(home: Path, repo: Path, tmp_path: Path) -> None:
    program = (
        'files = await asyncio.gather(*[tools.read_file(path=p) for p in ["calc.py", "AGENTS.md"]])\n'
        'log("read", len(files))'
    )
    with ScriptedServer(script(tmp_path, eval_script(program))) as server:
        record = await run_once(home, spec_for(server, tools=["read_file", "eval"]), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    logged = [e.event for e in events_of(home, record.id) if isinstance(e.event, ProgramLogged)]
    assert [e.text for e in logged] == ["read 2"]
