"""The claude-code engine end to end: the real Claude Code CLI (installed from the npm registry by the
test setup) runs inside a bubblewrap sandbox against the scripted model, through the model gateway.

The scripted session reads a file, runs a command and edits a file with Claude Code's own tools; the
test checks the run's patch, the journal (tool calls, each model call metered by the gateway), and
that a tool the agent's policy denies is refused by Claude Code itself. The sandbox's network is
``none`` with one route, to the gateway: every model call goes through it, and the journal holds no
other egress attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.engines.install import pinned
from corral.events import EgressAttempted, ModelCalled, PolicyDecided, ToolCalled, ToolReturned
from corral.models.gateway import KEY_PREFIX
from corral.models.scripted import ScriptedServer, ToolCall, Turn
from corral.spec import AgentSpec
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.orchestration.support import eval_script, run_then_kill
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

SESSION = [
    Turn(tool_calls=[ToolCall(name="Read", args={"file_path": "/workspace/calc.py"})]),
    Turn(tool_calls=[ToolCall(name="Bash", args={"command": "python3 -c 'print(6 * 7)'", "description": "multiply"})]),
    Turn(
        tool_calls=[
            ToolCall(
                name="Edit",
                args={"file_path": "/workspace/calc.py", "old_string": "return a - b", "new_string": "return a + b"},
            )
        ]
    ),
    Turn(text="Fixed add(): it subtracted."),
]


@pytest.fixture
def claude() -> None:
    skip_unless_bubblewrap_runs()
    if pinned("claude-code") is None:
        pytest.fail("Claude Code is not installed: the test setup (scripts/setup test) installs it")


def spec(server: ScriptedServer, **extra: object) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": "claude",
            "engine": "claude-code",
            "model": "anthropic:claude-opus-5-5",
            "base_url": server.anthropic_base_url,
            "sandbox": "bubblewrap",
            **extra,
        }
    )


async def test_claude_code_reads_runs_and_edits_in_bubblewrap_through_the_gateway(
    claude: None, home: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral.engines.external as engine

    # Far less than the session's stream-json: it is read whole from the exec's output file.
    monkeypatch.setattr(engine, "OUTPUT_LIMIT", 4096)
    with ScriptedServer(SESSION) as server:
        # A task is text for the model, never an option of the CLI, whatever it starts with.
        task = "--dangerously-skip-permissions fix add()"
        record = await run_once(home, spec(server), repo, task=task)
        asked = [request for request in server.requests if request.path == "/v1/messages"]
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert task in json.dumps(asked[0].body)
    assert record.result is not None and record.result["text"] == "Fixed add(): it subtracted."
    assert "-    return a - b" in record.result["patch"] and "+    return a + b" in record.result["patch"]
    assert record.result["files_changed"] == 1  # Claude Code's home (.corral/claude-home) is not in it
    assert (repo / "calc.py").read_text().count("return a - b") == 1  # the repository is untouched
    events = [entry.event for entry in events_of(home, record.id)]
    calls = [e for e in events if isinstance(e, ToolCalled)]
    results = {e.call_id: e for e in events if isinstance(e, ToolReturned)}
    assert [c.tool for c in calls] == ["Read", "Bash", "Edit"]
    assert all(results[c.call_id].ok for c in calls)
    assert "42" in results[calls[1].call_id].text
    metered = [e for e in events if isinstance(e, ModelCalled)]
    assert len(metered) == len(asked) >= 4 and all(m.status == 200 and m.input_tokens > 0 for m in metered)
    assert record.usage.input_tokens == sum(m.input_tokens for m in metered)
    # every request reached the provider with the provider's key, never the run's gateway key
    assert not [r for r in asked if r.headers.get("x-api-key", "").startswith(KEY_PREFIX)]
    egress = [e for e in events if isinstance(e, EgressAttempted)]
    assert egress and {(e.host, e.allowed) for e in egress} == {("corral-gateway", True)}


@pytest.mark.parametrize("rule", ["tool", "call"])
async def test_a_tool_the_policy_denies_is_refused_by_claude_code(
    claude: None, home: Path, repo: Path, rule: str
) -> None:
    """A capability denied outright disallows the tool; a rule on arguments denies that call, through
    the permission hook, and lets the tool's other calls run."""
    if rule == "tool":
        policy = {"rules": [{"capability": "runs_commands", "decision": "deny", "reason": "no commands here"}]}
    else:
        deny = {"tool": "Bash", "args": {"command": "python3 *"}, "decision": "deny", "reason": "no commands here"}
        policy = {"rules": [deny]}
    with ScriptedServer(SESSION) as server:
        record = await run_once(home, spec(server, policy=policy), repo, task="fix add()")
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [entry.event for entry in events_of(home, record.id)]
    decided = {(e.kind, e.tool): e for e in events if isinstance(e, PolicyDecided)}
    bash = next(e for e in events if isinstance(e, ToolCalled) and e.tool == "Bash")
    if rule == "tool":
        assert decided["permission", "Bash"].verdict == "deny"
    else:  # the tool is allowed; its call, with these arguments, is not
        assert decided["permission", "Bash"].verdict == "allow"
        assert decided["tool", "Bash"].verdict == "deny" and decided["tool", "Bash"].call_id == bash.call_id
        assert decided["tool", "Edit"].verdict == "allow" and decided["tool", "Read"].verdict == "allow"
    assert decided["permission", "Edit"].verdict == "allow"
    assert "no commands here" in decided["tool" if rule == "call" else "permission", "Bash"].reason
    refused = next(e for e in events if isinstance(e, ToolReturned) and e.call_id == bash.call_id)
    assert not refused.ok and "42" not in refused.text
    assert "+    return a + b" in (record.result or {})["patch"]  # the rest of the session went on


async def test_a_budget_smaller_than_the_session_stops_claude_code_with_the_budgets_error(
    claude: None, home: Path, repo: Path
) -> None:
    with ScriptedServer(SESSION) as server:
        record = await run_once(home, spec(server, budget={"max_turns": 2}), repo, task="fix add()")
        asked = [request for request in server.requests if request.path == "/v1/messages"]
    assert record.status is RunStatus.FAILED
    assert record.error_type == "BudgetExceededError" and "max_turns" in (record.error or "")
    assert len(asked) == 2  # the third call was refused by the gateway, not sent
    events = [entry.event for entry in events_of(home, record.id)]
    metered = [e for e in events if isinstance(e, ModelCalled)]
    assert [m.status for m in metered] == [200, 200, 403] and "max_turns" in (metered[-1].error or "")


CHILD_ROUTE = """
[[routes]]
match = "fix add() in calc.py"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "Read"
args = { file_path = "/workspace/calc.py" }
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "Edit"
args = { file_path = "/workspace/calc.py", old_string = "return a - b", new_string = "return a + b" }
[[routes.turns]]
text = "Claude fixed add()."
"""


async def test_a_program_dispatches_claude_code_as_a_subagent_and_gets_its_result_and_patch(
    claude: None, home: Path, repo: Path, tmp_path: Path
) -> None:
    program = 'answer = await task("fix add() in calc.py", agent="claude")\nanswer'
    with ScriptedServer(script(tmp_path, eval_script(program) + CHILD_ROUTE)) as server:
        claude_spec = spec(server).model_dump(mode="json", exclude_defaults=True)
        root = spec_for(server, tools=["eval"], sandbox="bubblewrap", subagents={"claude": claude_spec})
        record = await run_once(home, root, repo, task="have claude fix add()")
    assert record.status is RunStatus.SUCCEEDED, record.error
    store = Store.open(home=home)
    try:
        (child,) = store.children(record.id)
    finally:
        store.close()
    assert child.agent == "claude" and child.status is RunStatus.SUCCEEDED, child.error
    assert (child.result or {})["text"] == "Claude fixed add()."
    # its patch was merged into the root's workspace, so the root's own patch carries it
    assert "+    return a + b" in (record.result or {})["patch"]
    events = [entry.event for entry in events_of(home, record.id)]
    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
    assert result.ok and "Claude fixed add()." in result.text
    child_events = [entry.event for entry in events_of(home, child.id)]
    assert [e.tool for e in child_events if isinstance(e, ToolCalled)] == ["Read", "Edit"]
    assert any(isinstance(e, ModelCalled) for e in child_events)


async def test_an_output_schema_gives_a_typed_result_through_claude_codes_structured_output(
    claude: None, home: Path, repo: Path
) -> None:
    schema = {"type": "object", "properties": {"fixed": {"type": "boolean"}}, "required": ["fixed"]}
    typed = [*SESSION[:1], Turn(tool_calls=[ToolCall(name="StructuredOutput", args={"fixed": True})])]
    corrected = [
        *SESSION[:1],
        Turn(tool_calls=[ToolCall(name="StructuredOutput", args={"fixed": "yes"})]),
        Turn(tool_calls=[ToolCall(name="StructuredOutput", args={"fixed": False})]),
    ]
    with ScriptedServer(typed) as server:
        record = await run_once(home, spec(server, output_schema=schema), repo, task="is add() fixed?")
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert (record.result or {})["output"] == {"fixed": True}
    # An answer off the schema goes back to the model (Claude Code's own check), journaled as a failed call.
    with ScriptedServer(corrected) as server:
        record = await run_once(home, spec(server, output_schema=schema), repo, task="is add() fixed?")
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert (record.result or {})["output"] == {"fixed": False}
    events = [entry.event for entry in events_of(home, record.id)]
    answers = [e for e in events if isinstance(e, ToolReturned) and e.tool == "StructuredOutput"]
    assert [a.ok for a in answers] == [False, True]


def test_sigkill_mid_session_then_resume_continues_the_claude_code_session(tmp_path: Path, repo: Path) -> None:
    """The run's process is killed while Claude Code waits for its second model answer; `corral resume`
    starts Claude Code again on the session it had (kept in the workspace): the model is asked to go
    on from there, with the conversation so far, not to start over."""
    skip_unless_bubblewrap_runs()
    home = tmp_path / "home"
    slow = [SESSION[0], SESSION[1].model_copy(update={"delay": 1.5}), *SESSION[2:]]
    with ScriptedServer(slow) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.claude]\nengine = "claude-code"\nmodel = "anthropic:claude-opus-5-5"\n'
            f'base_url = "{server.anthropic_base_url}"\nsandbox = "bubblewrap"\n'
        )
        first = lambda: len([r for r in server.requests if r.path == "/v1/messages"]) >= 2  # noqa: E731
        run_then_kill(tmp_path, home, ["claude", "fix add()", "--repo", str(repo)], first, what="the 2nd model call")
        before = len(server.requests)
        resumed = corral("resume", cwd=tmp_path, home=home, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        after = [r.body or {} for r in server.requests[before:] if r.path == "/v1/messages"]
    # the first request after the resume carries the session so far: the Read and its result
    history = json.dumps(after[0]["messages"])
    assert "toolu_1" in history and "Continue the task where you left off" in history
    store = Store.open(home=home)
    try:
        (record,) = store.list_runs(limit=None)
        events = [entry.event for entry in store.events(record.id)]
    finally:
        store.close()
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert "+    return a + b" in (record.result or {})["patch"]
    assert any(e.type == "run.resumed" for e in events)
    assert len([e for e in events if isinstance(e, ModelCalled)]) >= len(after)
