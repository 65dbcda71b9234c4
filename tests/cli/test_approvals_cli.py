"""The acceptance session: an agent tries `git push` under an `ask` rule. The run waits; its process is killed;
`corral approve ID` from another shell, then `corral resume`: the command runs once. Or `corral deny ID --reason`:
the model reads the reason as the tool's error and the run goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from corral.events import ToolReturned
from tests.cli.run_support import run_corral, scripted_project, start_corral, stored

pytestmark = pytest.mark.slow  # the real entry point, several processes

SCRIPT = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "echo pushed >> pushes.txt; git push 2>/dev/null || true" }

[[turns]]
text = "done"
"""

POLICY = """
[[agents.fixer.policy.rules]]
name = "pushes"
tool = "execute"
args_regex = { command = '\\bgit\\s+push\\b' }
decision = "ask"
reason = "a push leaves the sandbox"
"""


def wait_for_request(home: Path, cwd: Path) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        listed = run_corral("--home", str(home), "approvals", "--json", cwd=cwd, home=None)
        assert listed.returncode == 0, listed.stderr
        pending = json.loads(listed.stdout)
        if pending:
            return pending[0]
        assert time.monotonic() < deadline, "no approval request appeared"
        time.sleep(0.2)


def test_kill_approve_from_another_shell_resume_runs_the_command_once(tmp_path: Path, repo: Path) -> None:
    project = scripted_project(tmp_path / "project", SCRIPT, agent_extra=POLICY)
    home = tmp_path / "home"
    proc = start_corral("--home", str(home), "run", "fixer", "push it", "--repo", str(repo), cwd=project, home=None)
    try:
        request = wait_for_request(home, project)
        shown = run_corral("--home", str(home), "runs", "--json", cwd=project, home=None)
        assert json.loads(shown.stdout)[0]["status"] == "waiting_approval"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    listed = run_corral("--home", str(home), "approvals", cwd=project, home=None)
    assert str(request["id"]) in listed.stdout and "git push" in listed.stdout and "pushes" in listed.stdout
    approved = run_corral("--home", str(home), "approve", str(request["id"]), cwd=project, home=None)
    assert approved.returncode == 0, approved.stderr
    assert f"approved {request['id']}" in approved.stdout
    again = run_corral("--home", str(home), "approve", str(request["id"]), cwd=project, home=None)
    assert again.returncode == 2 and "already approved" in again.stderr

    resumed = run_corral("--home", str(home), "resume", cwd=project, home=None)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record, _ = stored(home)
    assert record.status.value == "succeeded"
    assert (record.result or {})["patch"].count("+pushed") == 1  # executed once


def test_deny_with_a_reason_reaches_the_model_and_the_run_goes_on(tmp_path: Path, repo: Path) -> None:
    project = scripted_project(tmp_path / "project", SCRIPT, agent_extra=POLICY)
    home = tmp_path / "home"
    proc = start_corral("--home", str(home), "run", "fixer", "push it", "--repo", str(repo), cwd=project, home=None)
    try:
        request = wait_for_request(home, project)
        refused = run_corral("--home", str(home), "deny", str(request["id"]), cwd=project, home=None)
        assert refused.returncode == 2 and "needs --reason" in refused.stderr
        denied = run_corral(
            "--home", str(home), "deny", str(request["id"]), "--reason", "no pushes on Fridays", cwd=project, home=None
        )
        assert denied.returncode == 0, denied.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    record, events = stored(home)
    assert record.status.value == "succeeded"
    (result,) = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert not result.ok and result.text.endswith("no pushes on Fridays")
    assert "pushed" not in (record.result or {})["patch"]
    shown = out + err  # the run's own output: the request, the commands that decide it, the decision
    assert "execute needs a person's approval: a push leaves the sandbox" in shown
    assert f"corral approve {request['id']}" in shown and f"{request['id']} denied by" in shown
    trace = run_corral("--home", str(home), "trace", record.id, cwd=project, home=None)
    assert "policy: ask (rule pushes)" in trace.stdout
    assert f"waiting for approval {request['id']}" in trace.stdout
    assert "denied by" in trace.stdout and "no pushes on Fridays" in trace.stdout
    unknown = run_corral("--home", str(home), "approve", "ap-nope", cwd=project, home=None)
    assert unknown.returncode == 2 and "no approval request 'ap-nope'" in unknown.stderr
