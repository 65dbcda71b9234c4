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

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.engines.install import pinned
from corral.events import EgressAttempted, ModelCalled, PolicyDecided, ToolCalled, ToolReturned
from corral.models.gateway import KEY_PREFIX
from corral.models.scripted import ScriptedServer, ToolCall, Turn
from corral.spec import AgentSpec
from corral.store import RunStatus
from tests.e2e.test_runs import events_of, run_once
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

COUNTERS = "cat /proc/net/snmp /proc/net/snmp6"
DENIED = "git push origin main"
POLICY = {"rules": [{"tool": "Bash", "args": {"command": "git push*"}, "decision": "deny", "reason": "no pushes"}]}

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

    def spec(self, server: ScriptedServer, **extra: object) -> AgentSpec:
        fields = {"name": "agent", "engine": self.engine, "model": self.model, "sandbox": "bubblewrap"}
        return AgentSpec.model_validate({**fields, "base_url": getattr(server, self.url), **extra})


def _bash(command: str) -> ToolCall:
    return ToolCall(name="Bash", args={"command": command, "description": "run"})


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
    for header, values in zip(lines, lines[1:], strict=False):
        names, numbers = header.split(), values.split()
        if names and names[0].endswith(":") and numbers and numbers[0] == names[0] and len(names) == len(numbers):
            table.update({f"{names[0][:-1]}.{n}": int(v) for n, v in zip(names[1:], numbers[1:], strict=True)})
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and not parts[0].endswith(":"):
            table[parts[0]] = int(parts[1])
    return table


async def test_the_engine_reads_runs_and_edits_in_bubblewrap_through_the_gateway_and_nothing_else_leaves(
    case: EngineCase, home: Path, repo: Path
) -> None:
    with ScriptedServer(case.session) as server:
        record = await run_once(home, case.spec(server, policy=POLICY), repo, task="fix add()")
        asked = [request for request in server.requests if request.path == case.api_path]
    assert record.status is RunStatus.SUCCEEDED, record.error
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
    assert refusal.tool == "Bash" and refusal.reason == "no pushes"
    assert {d.tool for d in decisions if d.verdict == "allow"} >= {"Bash", case.tools[2]}
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
