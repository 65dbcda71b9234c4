"""The acceptance fan-out: a scripted root model writes a program that reviews every file of a 50-file
repository with one reviewer per file in parallel, typed findings, filters the high ones and returns a
report; the trace shows 50 children under the eval; the root's sandbox is bubblewrap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer
from corral.store import RunStatus
from tests.e2e.cli_helpers import corral
from tests.e2e.test_runs import run_once, script, spec_for
from tests.orchestration.support import eval_script
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FILES = [f"src/mod_{i:02d}.py" for i in range(50)]
HIGH = {f for i, f in enumerate(FILES) if i % 10 == 3}

PROGRAM = """
files = sorted((await tools.glob(pattern="src/*.py")).split())
reviews = await asyncio.gather(*[task("Review " + f + " for bugs", agent="reviewer", label=f) for f in files])
high = [x for r in reviews for x in r["findings"] if x["severity"] == "high"]
log("reviewed", len(files), "files;", len(high), "high")
{"reviewed": len(files), "high": sorted([x["file"] + ":" + str(x["line"]) for x in high])}
"""


def routes() -> str:
    out = []
    for i, name in enumerate(FILES):
        severity = "high" if name in HIGH else "low"
        finding = f'{{ file = "{name}", line = {i + 1}, severity = "{severity}", description = "issue {i}" }}'
        out.append(
            f'[[routes]]\nmatch = "Review {name} for"\n[[routes.turns]]\noutput = {{ findings = [{finding}] }}\n'
        )
    return "\n".join(out)


async def test_fifty_reviewers_in_parallel_with_typed_findings(home: Path, repo: Path, tmp_path: Path) -> None:
    skip_unless_bubblewrap_runs()
    (repo / "src").mkdir()
    for name in FILES:
        (repo / name).write_text(f"def f():\n    return {name!r}\n")
    with ScriptedServer(script(tmp_path, eval_script(PROGRAM, answer="5 high findings") + routes())) as server:
        spec = spec_for(server, tools=["glob", "read_file", "eval"], sandbox="bubblewrap")
        record = await run_once(home, spec, repo, task="review every file")
    assert record.status is RunStatus.SUCCEEDED, record.error
    trace = json.loads(corral("trace", record.id, "--json", cwd=tmp_path, home=home).stdout)
    created = [e for e in trace["events"] if e["type"] == "sandbox.created"]
    assert created[0]["data"]["backend"] == "bubblewrap"
    (eval_call,) = [c for c in trace["tool_calls"] if c["tool"] == "eval"]
    assert len(trace["children"]) == 50
    task_calls = {e["data"]["call_id"]: e for e in trace["events"] if e["type"] == "tool.call"}
    assert all(
        task_calls[c["dispatched_by"]]["data"]["parent_call_id"] == eval_call["call_id"] for c in trace["children"]
    )
    assert sorted(c["run"]["task"] for c in trace["children"]) == sorted(f"Review {f} for bugs" for f in FILES)
    assert all(c["run"]["status"] == "succeeded" for c in trace["children"])
    (result,) = [e for e in trace["events"] if e["type"] == "tool.result" and e["data"]["tool"] == "eval"]
    expected = sorted(f"{f}:{FILES.index(f) + 1}" for f in HIGH)
    assert json.dumps({"reviewed": 50, "high": expected}) in result["data"]["text"]
