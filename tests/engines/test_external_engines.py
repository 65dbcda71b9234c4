"""The external engines' contract, end to end, the same test for each: the real CLI (installed from the
npm registry by the test setup) runs inside a bubblewrap sandbox against the scripted model, through
the model gateway.

Each engine's scripted session reads a file, runs a command, edits a file with the engine's own edit
tool (Claude Code: ``Edit``; Codex: ``apply_patch``, a freeform tool), and tries a command the
agent's policy denies (a rule on the command's arguments, put to policy by the engine's permission
hook). The test checks the run's patch, the journal's tool calls and their results, the tokens the
gateway metered, the denial, and that the engine made no connection attempt but to the gateway: the
sandbox's network is a namespace with only loopback and one route (``corral-gateway``, through the
egress proxy), the proxy journals each attempt, and the namespace's own counters (read by the
session's last command) show no packet that found no route, no UDP datagram (DNS), and no refused
connection.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.engines.install import pinned
from corral.events import (
    ApprovalDecided,
    ApprovalRequested,
    EgressAttempted,
    ModelCalled,
    PolicyDecided,
    ToolCalled,
    ToolReturned,
)
from corral.models.gateway import KEY_PREFIX
from corral.models.scripted import ScriptedServer, ToolCall, Turn
from corral.runtime import Runtime
from corral.runtime import approvals as approvals_module
from corral.spec import AgentSpec
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.orchestration.support import eval_script, run_then_kill
from tests.policy.test_approvals import pending
from tests.runtime.test_run_endings import processes_with, wait_until
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

COUNTERS = "cat /proc/net/snmp /proc/net/snmp6"
DENIED = "git push origin main"
# on the capability, not the tool's name: one rule for every engine's shell (Bash, bash)
POLICY = {
    "rules": [
        {"capability": "runs_commands", "args": {"command": "git push*"}, "decision": "deny", "reason": "no pushes"}
    ]
}

CODEX_PATCH = """*** Begin Patch
*** Update File: calc.py
@@
-    return a - b
+    return a + b
*** End Patch
"""


@dataclass(frozen=True)
class EngineCase:
    engine: str
    model: str
    url: str
    """The scripted server's base URL attribute the engine's provider uses."""
    api_path: str
    session: list[Turn]
    tools: list[str]
    """The tools the journal shows, in order (the denied command and the counters' read included)."""

    @property
    def shell(self) -> str:
        """The engine's tool for commands."""
        return self.tools[1]

    def spec(self, server: ScriptedServer, **extra: object) -> AgentSpec:
        fields = {"name": self.engine, "engine": self.engine, "model": self.model, "sandbox": "bubblewrap"}
        return AgentSpec.model_validate({**fields, "base_url": getattr(server, self.url), **extra})


def _bash(command: str, name: str = "Bash") -> ToolCall:
    return ToolCall(name=name, args={"command": command, "description": "run"})


def _exec(command: str) -> ToolCall:
    return ToolCall(name="exec_command", args={"cmd": command})


CASES = {
    "claude-code": EngineCase(
        engine="claude-code",
        model="anthropic:claude-opus-5-5",
        url="anthropic_base_url",
        api_path="/v1/messages",
        session=[
            Turn(tool_calls=[ToolCall(name="Read", args={"file_path": "/workspace/calc.py"})]),
            Turn(tool_calls=[_bash("python3 -c 'print(6 * 7)'")]),
            Turn(
                tool_calls=[
                    ToolCall(
                        name="Edit",
                        args={
                            "file_path": "/workspace/calc.py",
                            "old_string": "return a - b",
                            "new_string": "return a + b",
                        },
                    )
                ]
            ),
            Turn(tool_calls=[_bash(DENIED)]),
            Turn(tool_calls=[_bash(COUNTERS)]),
            Turn(text="Fixed add(): it subtracted."),
        ],
        tools=["Read", "Bash", "Edit", "Bash", "Bash"],
    ),
    "codex": EngineCase(
        engine="codex",
        model="openai:gpt-5.5",
        url="openai_base_url",
        api_path="/v1/responses",
        session=[
            Turn(tool_calls=[_exec("cat calc.py")]),
            Turn(tool_calls=[_exec("python3 -c 'print(6 * 7)'")]),
            Turn(tool_calls=[ToolCall(name="apply_patch", input=CODEX_PATCH)]),
            Turn(tool_calls=[_exec(DENIED)]),
            Turn(tool_calls=[_exec(COUNTERS)]),
            Turn(text="Fixed add(): it subtracted."),
        ],
        tools=["Bash", "Bash", "apply_patch", "Bash", "Bash"],
    ),
    "opencode": EngineCase(
        engine="opencode",
        model="openai:gpt-4.1-mini",
        url="openai_base_url",
        api_path="/v1/chat/completions",
        session=[
            Turn(tool_calls=[ToolCall(name="read", args={"filePath": "/workspace/calc.py"})]),
            Turn(tool_calls=[_bash("python3 -c 'print(6 * 7)'", "bash")]),
            Turn(
                tool_calls=[
                    ToolCall(
                        name="edit",
                        args={
                            "filePath": "/workspace/calc.py",
                            "oldString": "return a - b",
                            "newString": "return a + b",
                        },
                    )
                ]
            ),
            Turn(tool_calls=[_bash(DENIED, "bash")]),
            Turn(tool_calls=[_bash(COUNTERS, "bash")]),
            Turn(text="Fixed add(): it subtracted."),
        ],
        tools=["read", "bash", "edit", "bash", "bash"],
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> EngineCase:
    skip_unless_bubblewrap_runs()
    name = request.param
    if pinned(name) is None:
        pytest.fail(f"{name} is not installed: the test setup (scripts/setup test) installs it")
    return CASES[name]


def _counters(text: str) -> dict[str, int]:
    """``/proc/net/snmp`` (header and value lines per protocol) and ``snmp6`` (name value) as one table."""
    table: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in itertools.pairwise(lines):
        names, numbers = header.split(), values.split()
        if names and names[0].endswith(":") and numbers and numbers[0] == names[0] and len(names) == len(numbers):
            table.update({f"{names[0][:-1]}.{n}": int(v) for n, v in zip(names[1:], numbers[1:], strict=True)})
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and not parts[0].endswith(":"):
            table[parts[0]] = int(parts[1])
    return table


async def test_the_engine_reads_runs_and_edits_in_bubblewrap_through_the_gateway_and_nothing_else_leaves(
    case: EngineCase, home: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral.engines.external as external

    # Far less than the session prints: its events are read as they come, not from what is kept.
    monkeypatch.setattr(external, "OUTPUT_LIMIT", 4096)
    # A task is text for the model, never an option of the CLI, whatever it starts with.
    task = "--dangerously-skip-permissions --yolo fix add()"
    with ScriptedServer(case.session) as server:
        record = await run_once(home, case.spec(server, policy=POLICY), repo, task=task)
        asked = [request for request in server.requests if request.path == case.api_path]
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert task in json.dumps(asked[0].body)
    assert record.result is not None and record.result["text"] == "Fixed add(): it subtracted."
    assert "-    return a - b" in record.result["patch"] and "+    return a + b" in record.result["patch"]
    assert record.result["files_changed"] == 1  # the engine's home (.corral/) is not in it
    assert (repo / "calc.py").read_text().count("return a - b") == 1  # the repository is untouched
    events = [entry.event for entry in events_of(home, record.id)]
    calls = [e for e in events if isinstance(e, ToolCalled)]
    results = {e.call_id: e for e in events if isinstance(e, ToolReturned)}
    assert [c.tool for c in calls] == case.tools
    read, run, edit, denied, counters = calls
    assert "def add" in results[read.call_id].text
    assert results[run.call_id].ok and "42" in results[run.call_id].text
    assert results[edit.call_id].ok
    # the command policy denies: decided by the hook with its arguments, refused, journaled as failed
    assert DENIED in json.dumps(denied.args) and not results[denied.call_id].ok
    decisions = [e for e in events if isinstance(e, PolicyDecided) and e.kind == "tool"]
    (refusal,) = [d for d in decisions if d.verdict == "deny"]
    assert refusal.tool == case.shell and refusal.reason == "no pushes" and refusal.call_id == denied.call_id
    assert {d.tool for d in decisions if d.verdict == "allow"} >= {case.shell, case.tools[2]}
    # every model call metered by the gateway, with the provider's key upstream, never the run's
    metered = [e for e in events if isinstance(e, ModelCalled)]
    assert len(metered) == len(asked) >= len(case.session)
    assert all(m.status == 200 and m.input_tokens > 0 and m.output_tokens > 0 for m in metered)
    assert record.usage.input_tokens == sum(m.input_tokens for m in metered)
    assert not [r for r in asked if KEY_PREFIX in json.dumps(r.headers)]
    # nothing left the sandbox but calls to the gateway
    egress = [e for e in events if isinstance(e, EgressAttempted)]
    assert egress and {(e.host, e.allowed) for e in egress} == {("corral-gateway", True)}
    seen = _counters(results[counters.call_id].text)
    assert seen["Ip.OutNoRoutes"] == 0 and seen["Ip6OutNoRoutes"] == 0  # no packet to anywhere but loopback
    assert seen["Udp.OutDatagrams"] == 0 and seen["Udp6OutDatagrams"] == 0  # no DNS query, to anyone
    assert seen["Tcp.AttemptFails"] == 0  # no refused connection on loopback either


@pytest.mark.parametrize("case", ["claude-code", "opencode"], indirect=True)
async def test_a_capability_the_policy_denies_is_refused_in_the_engine_and_the_session_goes_on(
    case: EngineCase, home: Path, repo: Path
) -> None:
    """Denied outright, not on arguments: Claude Code gets the tool disallowed (it refuses it itself),
    OpenCode gets it turned off. (Codex has no switch for its shell: its hook refuses each call, as
    the contract test shows for a rule on arguments.)"""
    policy = {"rules": [{"capability": "runs_commands", "decision": "deny", "reason": "no commands here"}]}
    with ScriptedServer([*case.session[:3], case.session[-1]]) as server:
        record = await run_once(home, case.spec(server, policy=policy), repo, task="fix add()")
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [entry.event for entry in events_of(home, record.id)]
    decided = {(e.kind, e.tool): e for e in events if isinstance(e, PolicyDecided)}
    assert decided["permission", case.shell].verdict == "deny"
    assert decided["permission", case.tools[2]].verdict == "allow"
    commands = [e for e in events if isinstance(e, ToolCalled) and e.tool == case.shell]
    results = {e.call_id: e for e in events if isinstance(e, ToolReturned)}
    assert commands and not any(results[c.call_id].ok or "42" in results[c.call_id].text for c in commands)
    assert "+    return a + b" in (record.result or {})["patch"]  # the rest of the session went on


async def test_a_command_policy_asks_about_waits_in_the_engine_for_a_person_and_runs_once_approved(
    case: EngineCase, home: Path, repo: Path
) -> None:
    rule = {"capability": "runs_commands", "args": {"command": "python3 *"}, "decision": "ask", "reason": "check"}
    store = Store.open(home=home)
    other = Store.open(home=home)  # as `corral approve` from another shell
    try:
        with ScriptedServer([*case.session[:2], case.session[-1]]) as server:
            async with Runtime(store) as runtime:
                spec = case.spec(server, policy={"rules": [rule]})
                record = await runtime.submit(spec, "fix add()", repo)
                request = await pending(store)
                assert store.get_run(record.id).status is RunStatus.WAITING_APPROVAL
                assert (request.tool, request.arguments["command"]) == (case.shell, "python3 -c 'print(6 * 7)'")
                approvals_module.decide(other, request.id, approve=True, reason=None, by="ana")
                done = await runtime.wait(record.id, timeout_s=120)
        events = [e.event for e in store.events(record.id)]
    finally:
        other.close()
        store.close()
    assert done.status is RunStatus.SUCCEEDED, done.error
    (asked,) = [e for e in events if isinstance(e, ApprovalRequested)]
    (decided,) = [e for e in events if isinstance(e, ApprovalDecided)]
    assert (decided.outcome, decided.by) == ("approved", "ana") and asked.call_id == decided.call_id
    ran = next(
        e for e in events if isinstance(e, ToolCalled) and e.tool == case.shell and "6 * 7" in json.dumps(e.args)
    )
    result = next(e for e in events if isinstance(e, ToolReturned) and e.call_id == ran.call_id)
    assert result.ok and "42" in result.text


async def test_a_budget_smaller_than_the_session_stops_the_engine_with_the_budgets_error(
    case: EngineCase, home: Path, repo: Path
) -> None:
    with ScriptedServer(case.session) as server:
        record = await run_once(home, case.spec(server, budget={"max_turns": 2}), repo, task="fix add()")
        asked = [request for request in server.requests if request.path == case.api_path]
    assert record.status is RunStatus.FAILED
    assert record.error_type == "BudgetExceededError" and "max_turns" in (record.error or ""), record.error
    assert len(asked) == 2  # the third call was refused by the gateway, not sent
    events = [entry.event for entry in events_of(home, record.id)]
    metered = [e for e in events if isinstance(e, ModelCalled)]
    assert [m.status for m in metered][:3] == [200, 200, 403] and "max_turns" in (metered[2].error or "")
    assert all(m.status == 403 for m in metered[2:])  # a CLI that retries is refused each time
    assert all(m.repeats == metered[2].call for m in metered[3:])  # and each retry is known as one
    # the journal is consistent: every call the engine made has its result, the run its end
    calls = {e.call_id for e in events if isinstance(e, ToolCalled)}
    assert calls == {e.call_id for e in events if isinstance(e, ToolReturned)} and len(calls) == 2
    assert events[-1].type == "run.finished"


SCHEMA = {"type": "object", "properties": {"fixed": {"type": "boolean"}}, "required": ["fixed"]}


def _answer(case: EngineCase, value: object) -> Turn:
    """A typed answer as each engine's model gives one: Claude Code's StructuredOutput tool, Codex's final
    message under ``--output-schema``."""
    if case.engine == "claude-code":
        return Turn(tool_calls=[ToolCall(name="StructuredOutput", args={"fixed": value})])
    return Turn(output={"fixed": value})


async def test_an_output_schema_gives_a_typed_result_and_an_answer_off_it_gets_one_correction(
    case: EngineCase, home: Path, repo: Path
) -> None:
    with ScriptedServer([case.session[0], _answer(case, True)]) as server:
        record = await run_once(home, case.spec(server, output_schema=SCHEMA), repo, task="is add() fixed?")
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert (record.result or {})["output"] == {"fixed": True}
    with ScriptedServer([case.session[0], _answer(case, "yes"), _answer(case, False)]) as server:
        record = await run_once(home, case.spec(server, output_schema=SCHEMA), repo, task="is add() fixed?")
        asked = [request for request in server.requests if request.path == case.api_path]
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert (record.result or {})["output"] == {"fixed": False}
    assert "fixed" in json.dumps(asked[-1].body) and "yes" in json.dumps(asked[-1].body)  # it saw its answer
    if case.engine == "codex":  # corral's one correction turn (Claude Code's own check asks again and again)
        with ScriptedServer([case.session[0], _answer(case, "yes"), _answer(case, "no")]) as server:
            record = await run_once(home, case.spec(server, output_schema=SCHEMA), repo, task="is add() fixed?")
        assert record.status is RunStatus.FAILED and "output schema" in (record.error or ""), record.error


def _route(case: EngineCase, match: str) -> str:
    """The turns of ``case``'s subagent, as a script route: read calc.py, then a typed answer."""
    read = case.session[0].tool_calls[0]
    answer = _answer(case, False)
    lines = [f"[[routes]]\nmatch = {json.dumps(match)}"]
    lines.append(f"[[routes.turns]]\n[[routes.turns.tool_calls]]\nname = {json.dumps(read.name)}")
    lines.append(f"args = {json.dumps(read.args).replace(':', ' =')}")
    if answer.output is not None:
        lines.append(f'[[routes.turns]]\noutput = {{ fixed = false, by = "{case.engine}" }}')
    else:
        lines.append('[[routes.turns]]\n[[routes.turns.tool_calls]]\nname = "StructuredOutput"')
        lines.append(f'args = {{ fixed = false, by = "{case.engine}" }}')
    return "\n".join(lines) + "\n"


async def test_a_program_dispatches_one_subagent_of_each_engine_in_parallel_and_gets_typed_results(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    skip_unless_bubblewrap_runs()
    engines = sorted(CASES)
    for name in engines:
        if pinned(name) is None:
            pytest.fail(f"{name} is not installed: the test setup (scripts/setup test) installs it")
    calls = ", ".join(f'task("{name}: is add() right?", agent="{name}")' for name in engines)
    program = f"await asyncio.gather({calls})"
    routes = "".join(_route(CASES[name], f"{name}: is add() right?") for name in engines)
    with ScriptedServer(script(tmp_path, eval_script(program) + routes)) as server:
        schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "by": {"type": "string"}}}
        subagents = {
            name: CASES[name].spec(server, output_schema=schema).model_dump(mode="json", exclude_defaults=True)
            for name in engines
        }
        root = spec_for(server, tools=["eval"], sandbox="bubblewrap", subagents=subagents)
        record = await run_once(home, root, repo, task="ask every engine about add()")
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [entry.event for entry in events_of(home, record.id)]
    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
    assert result.ok
    assert json.loads(result.text.removeprefix("value: ")) == [{"fixed": False, "by": name} for name in engines]
    store = Store.open(home=home)
    try:
        children = store.children(record.id)
    finally:
        store.close()
    assert sorted(c.agent for c in children) == engines and all(c.status is RunStatus.SUCCEEDED for c in children)
    starts = sorted((c.started_at, c.finished_at) for c in children)
    assert all(later[0] < earlier[1] for earlier, later in itertools.pairwise(starts))  # in parallel


def test_sigkill_mid_session_then_resume_continues_the_engines_session(case: EngineCase, tmp_path: Path) -> None:
    """The run's process is killed while the engine waits for its second model answer; `corral resume`
    starts the CLI again on the session it had (kept in the workspace's .corral/): the model is asked
    to go on from there, with the conversation so far, not to start over."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    home = tmp_path / "home"
    session = [case.session[0], case.session[1].model_copy(update={"delay": 1.5}), case.session[2], case.session[-1]]
    with ScriptedServer(session) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.agent]\nengine = "{case.engine}"\nmodel = "{case.model}"\n'
            f'base_url = "{getattr(server, case.url)}"\nsandbox = "bubblewrap"\n'
        )
        second = lambda: len([r for r in server.requests if r.path == case.api_path]) >= 2  # noqa: E731
        run_then_kill(tmp_path, home, ["agent", "fix add()", "--repo", str(repo)], second, what="the 2nd model call")
        before = len(server.requests)
        resumed = corral("resume", cwd=tmp_path, home=home, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        after = [r.body or {} for r in server.requests[before:] if r.path == case.api_path]
    # the first request after the resume carries the session so far: the first call and the resume prompt
    history = json.dumps(after[0])
    assert ("toolu_1" if case.engine == "claude-code" else "call_1") in history
    assert "Continue the task where you left off" in history
    store = Store.open(home=home)
    try:
        (record,) = store.list_runs(limit=None)
        events = [entry.event for entry in store.events(record.id)]
    finally:
        store.close()
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert "+    return a + b" in (record.result or {})["patch"]
    assert any(e.type == "run.resumed" for e in events)
    # the journal shows every model call, the ones before the kill and the ones after
    assert len([e for e in events if isinstance(e, ModelCalled)]) >= 1 + len(after)


async def test_a_codex_patch_that_does_not_apply_is_a_failed_call_though_codex_exits_0(home: Path, repo: Path) -> None:
    skip_unless_bubblewrap_runs()
    case = CASES["codex"]
    stale = CODEX_PATCH.replace("-    return a - b", "-    return a // b")
    session = [Turn(tool_calls=[ToolCall(name="apply_patch", input=stale)]), case.session[-1]]
    with ScriptedServer(session) as server:
        record = await run_once(home, case.spec(server), repo, task="fix add()")
    assert record.status is RunStatus.SUCCEEDED, record.error  # the model read the failure and answered
    events = [entry.event for entry in events_of(home, record.id)]
    (call,) = [e for e in events if isinstance(e, ToolCalled)]
    (result,) = [e for e in events if isinstance(e, ToolReturned)]
    assert (call.tool, result.call_id, result.ok) == ("apply_patch", call.call_id, False)
    assert "Failed to find expected lines" in result.text and "return a // b" in result.text
    assert (record.result or {}).get("files_changed", 0) == 0


async def test_cancel_mid_session_kills_the_engines_process_tree_and_keeps_its_patch(
    case: EngineCase, home: Path, repo: Path
) -> None:
    """The engine waits on a long command of its session: cancel ends the run within seconds, the CLI
    and its command are gone, and the edit made before is the run's (partial) patch."""
    token = f"94.{secrets.randbelow(10**6):06d}"
    sleep = f"python3 -c 'import time; time.sleep({token})'"  # Claude Code refuses a plain long `sleep`
    command = ToolCall(name="exec_command", args={"cmd": sleep}) if case.engine == "codex" else _bash(sleep, case.shell)
    with ScriptedServer([case.session[0], case.session[2], Turn(tool_calls=[command]), case.session[-1]]) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                record = await runtime.submit(case.spec(server), "fix add()", repo)
                await wait_until(lambda: processes_with(token) != [])
                cli = processes_with(str(pinned(case.engine).root))  # type: ignore[union-attr]
                assert cli != []
                started = time.monotonic()
                ended = await runtime.cancel(record.id)
                assert time.monotonic() - started < 10
        finally:
            store.close()
    assert ended.status is RunStatus.CANCELLED
    assert processes_with(token) == [] and not set(cli) & set(processes_with(str(pinned(case.engine).root)))  # type: ignore[union-attr]
    assert (ended.result or {})["partial"] is True and "+    return a + b" in (ended.result or {})["patch"]


async def test_claude_code_on_its_own_default_model_works_against_the_scripted_model(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    """A ``scripted:`` model names no model to Claude Code: it asks for its own default, whose requests
    carry a ``role: "system"`` message (which the scripted model reads as part of the system prompt)."""
    skip_unless_bubblewrap_runs()
    session = tmp_path / "session.toml"
    session.write_text(
        '[[turns]]\n[[turns.tool_calls]]\nname = "Read"\nargs = { file_path = "/workspace/calc.py" }\n'
        '[[turns]]\ntext = "add() subtracts."\n'
    )
    spec = AgentSpec.model_validate(
        {"name": "claude", "engine": "claude-code", "model": f"scripted:{session}", "sandbox": "bubblewrap"}
    )
    record = await run_once(home, spec, repo, task="what does add() do?")
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert (record.result or {})["text"] == "add() subtracts."
    events = [entry.event for entry in events_of(home, record.id)]
    models = {e.model for e in events if isinstance(e, ModelCalled)}
    assert models and all(m.startswith("claude-") for m in models), models  # Claude Code's own choice
