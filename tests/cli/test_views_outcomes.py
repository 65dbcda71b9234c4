"""What went wrong is shown: exit codes, killed commands, typed output the schema rejected, unknown cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import ModelResponded
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral, corral_json
from tests.store.runs import add_run, finished_run_events

pytestmark = pytest.mark.slow

SESSION = """
[[turns]]
text = "Checking three commands."
tool_calls = [
    { name = "execute", args = { command = "exit 3" } },
    { name = "execute", args = { command = "true" } },
    { name = "execute", args = { command = "sleep 5", timeout = 0.5 } },
]

[[turns]]
output = { summary = 5 }

[[turns]]
output = { summary = "fixed", tests_pass = true }
"""

CONFIG = """
[agents.fixer]
model = "scripted:session.toml"
sandbox = "local"

[agents.fixer.output_schema]
type = "object"
properties = { summary = { type = "string" }, tests_pass = { type = "boolean" } }
required = ["summary", "tests_pass"]
"""

REJECTED = (
    "output rejected: the output does not match the required schema: "
    "(root): 'tests_pass' is a required property; summary: 5 is not of type 'string'"
)


def test_trace_and_the_live_view_show_exit_codes_and_rejected_output(tmp_path: Path, repo: Path, home: Path) -> None:
    (tmp_path / "session.toml").write_text(SESSION)
    (tmp_path / "corral.toml").write_text(CONFIG)
    run = corral("run", "fixer", "check the commands", "--repo", str(repo), cwd=tmp_path, home=home)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"! {REJECTED}" in run.stdout  # the live view, printed as lines (stdout is not a terminal)
    assert "← execute  ✗ exit 3" in run.stdout
    assert "◆ turn 2: (output)" in run.stdout  # an answer through the output tool, not a tool call

    (listed,) = corral_json("runs", cwd=tmp_path, home=home)
    traced = corral("trace", listed["id"], cwd=tmp_path, home=home)
    assert traced.returncode == 0, traced.stderr
    lines = traced.stdout.splitlines()
    calls = {line.split("(", 1)[1].split(")")[0]: line for line in lines if "execute(command=" in line}
    assert "✗ exit 3" in calls['command="exit 3"']
    assert "✓ exit 0" in calls['command="true"']
    assert "✗ exit none (killed)" in calls['command="sleep 5", timeout=0.5']
    (rejected,) = [line for line in lines if "output rejected" in line]
    assert rejected.strip().endswith(REJECTED) and rejected.startswith("    #")  # under model call 2
    codes = [call["exit_code"] for call in corral_json("trace", listed["id"], cwd=tmp_path, home=home)["tool_calls"]]
    assert sorted(codes, key=str) == [0, 3, None]


def test_a_run_with_unpriced_calls_costs_unknown_everywhere(tmp_path: Path, home: Path) -> None:
    store = Store.open(home=home)
    add_run(store, "unpriced", status=RunStatus.SUCCEEDED, input_tokens=100, unpriced_calls=1)
    events = finished_run_events()
    events[2] = ModelResponded(
        key="model:0:response", call=0, model="m", parts=[], input_tokens=100, price_source="unknown"
    )
    for event in events:
        store.journal.append("unpriced", event)
    store.close()

    runs = corral("runs", cwd=tmp_path, home=home).stdout.splitlines()
    assert runs[1].split()[6] == "unknown"  # the cost column
    assert "cost     unknown" in corral("show", "unpriced", cwd=tmp_path, home=home).stdout
    traced = corral("trace", "unpriced", cwd=tmp_path, home=home).stdout
    assert "· cost unknown" in traced.splitlines()[0] and "100 in / 0 out · cost unknown" in traced
    shown = corral_json("show", "unpriced", cwd=tmp_path, home=home)
    assert (shown["cost_known"], shown["usage"]["unpriced_calls"]) == (False, 1)
    assert "$0.0000" not in traced
