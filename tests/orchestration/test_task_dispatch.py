"""task() end to end: a scripted root model's program dispatches subagents; each is a child run in the
store with its own journal; typed results come back to the program; a worker's patch lands in its parent's
workspace; forged types, limits and policy stop a dispatch inside the program."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.events import TaskDispatched, TaskFinished, ToolCalled, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.orchestration.support import eval_script

pytestmark = pytest.mark.anyio

REVIEW = """
files = ["calc.py", "test_calc.py"]
reviews = await asyncio.gather(*[task("review " + f, agent="reviewer", label=f) for f in files])
print([len(r["findings"]) for r in reviews])
high = [x for r in reviews for x in r["findings"] if x["severity"] == "high"]
high
"""

CHILD_ROUTES = """
[[routes]]
match = "You review code"
[[routes.turns]]
output = { findings = [{ file = "calc.py", line = 2, severity = "high", description = "subtracts" }] }

[[routes]]
match = "You make one change"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "write_file"
args = { path = "NOTES.md", content = "written by a worker\\n" }
[[routes.turns]]
text = "wrote NOTES.md"
"""


def stored(home: Path, run_id: str):
    store = Store.open(home=home)
    try:
        return store.get_run(run_id), store.children(run_id)
    finally:
        store.close()


@pytest.mark.slow  # runs corral trace twice
async def test_reviewers_fan_out_as_light_children_with_typed_results(home: Path, repo: Path, tmp_path: Path) -> None:
    text = eval_script(REVIEW) + CHILD_ROUTES
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, tools=["read_file", "eval"]), repo, task="review the code")
    assert record.status is RunStatus.SUCCEEDED, record.error
    _, children = stored(home, record.id)
    assert len(children) == 2 and all(c.status is RunStatus.SUCCEEDED for c in children)
    assert all(c.agent == "reviewer" and c.root_id == record.id for c in children)
    assert children[0].result and children[0].result["output"]["findings"][0]["severity"] == "high"
    events = [e.event for e in events_of(home, record.id)]
    dispatched = [e for e in events if isinstance(e, TaskDispatched)]
    assert {d.child_id for d in dispatched} == {c.id for c in children}
    assert {d.mode for d in dispatched} == {"light"} and {d.label for d in dispatched} == {"calc.py", "test_calc.py"}
    (eval_call,) = [e for e in events if isinstance(e, ToolCalled) and e.tool == "eval"]
    tasks = [e for e in events if isinstance(e, ToolCalled) and e.tool == "task"]
    assert len(tasks) == 2 and all(t.parent_call_id == eval_call.call_id for t in tasks)
    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
    assert result.ok and "[1, 1]" in result.text and '"severity": "high"' in result.text
    finished = [e for e in events if isinstance(e, TaskFinished)]
    assert len(finished) == 2 and all(f.status == "succeeded" and not f.reused for f in finished)
    child_events = [e.event.type for e in events_of(home, children[0].id)]
    assert child_events[0] == "run.started" and child_events[-1] == "run.finished"
    # corral trace: the program under its eval, each child's own tree under the task that dispatched it
    shown = corral("trace", record.id, cwd=tmp_path, home=home)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    eval_line = next(i for i, line in enumerate(lines) if "eval(" in line)
    indent = len(lines[eval_line]) - len(lines[eval_line].lstrip())
    assert any("reviews = await asyncio.gather" in line for line in lines[eval_line:])
    child_headers = [line for line in lines if line.lstrip().startswith("run ") and "reviewer" in line]
    assert len(child_headers) == 2
    assert all(len(h) - len(h.lstrip()) > indent for h in child_headers)
    data = json.loads(corral("trace", record.id, "--json", cwd=tmp_path, home=home).stdout)
    assert sorted(c["run"]["id"] for c in data["children"]) == sorted(c.id for c in children)
    assert {c["dispatched_by"] for c in data["children"]} == {t.call_id for t in tasks}
    assert data["children"][0]["events"][0]["type"] == "run.started"


@pytest.mark.slow
async def test_a_worker_gets_its_own_sandbox_and_its_patch_merges_into_the_parent(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    program = 'summary = await task("add NOTES.md", agent="worker")\nsummary'
    text = eval_script(program) + CHILD_ROUTES
    with ScriptedServer(script(tmp_path, text)) as server:
        record = await run_once(home, spec_for(server, tools=["read_file", "eval"]), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    (child,) = stored(home, record.id)[1]
    assert child.status is RunStatus.SUCCEEDED and child.agent == "worker"
    assert "NOTES.md" in child.result["patch"]
    # the parent's own patch carries the worker's change: it was merged into the parent's workspace
    assert record.result and "+written by a worker" in record.result["patch"]
    events = [e.event for e in events_of(home, record.id)]
    (dispatched,) = [e for e in events if isinstance(e, TaskDispatched)]
    assert dispatched.mode == "workflow"
    (finished,) = [e for e in events if isinstance(e, TaskFinished)]
    assert finished.merged is True and finished.patch_files == 1
    assert not (repo / "NOTES.md").exists()


async def test_a_forged_subagent_type_is_a_type_error_naming_the_real_ones(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    with ScriptedServer(script(tmp_path, eval_script('await task("x", agent="root")'))) as server:
        record = await run_once(home, spec_for(server, tools=["eval"]), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    (result,) = [e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned)]
    assert result.error == "TypeCheckError"
    assert "the subagent types are: explorer, reviewer, worker" in result.text
    assert stored(home, record.id)[1] == []


async def test_dispatch_limits_raise_inside_the_program_and_keep_finished_results(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    program = """
done = []
for i in range(3):
    try:
        done.append(await task("review " + str(i), agent="reviewer"))
    except TaskError as e:
        print("stopped:", e)
len(done)
"""
    text = eval_script(program) + CHILD_ROUTES
    with ScriptedServer(script(tmp_path, text)) as server:
        spec = spec_for(server, tools=["eval"], programs={"max_dispatches": 2})
        record = await run_once(home, spec, repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    events = [e.event for e in events_of(home, record.id)]
    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
    assert "stopped: limit: a program may dispatch 2 subagents" in result.text and "value: 2" in result.text
    limited = [e for e in events if isinstance(e, ToolReturned) and e.tool == "task" and not e.ok]
    assert [e.error for e in limited] == ["LimitExceeded"]
    assert len(stored(home, record.id)[1]) == 2


LAZY_ROUTES = """
[[routes]]
match = "only look"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "read_file"
args = { path = "calc.py" }
[[routes.turns]]
text = "looked, nothing to change"

[[routes]]
match = "You make one change"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "read_file"
args = { path = "calc.py" }
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "write_file"
args = { path = "NOTES.md", content = "written by a worker\\n" }
[[routes.turns]]
text = "wrote NOTES.md"
"""


@pytest.mark.slow
async def test_a_worker_makes_its_sandbox_at_its_first_write_and_one_that_only_reads_makes_none(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    program = (
        'a = await task("only look at calc.py", agent="worker", label="reader")\n'
        'b = await task("add NOTES.md", agent="worker", label="writer")\n'
        "[a, b]"
    )
    with ScriptedServer(script(tmp_path, eval_script(program) + LAZY_ROUTES)) as server:
        record = await run_once(home, spec_for(server, tools=["read_file", "eval"]), repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    children = {c.task.split()[0]: c for c in stored(home, record.id)[1]}
    reader, writer = children["only"], children["add"]
    assert reader.status is writer.status is RunStatus.SUCCEEDED
    calc = (repo / "calc.py").read_text()

    # the reader read its parent's workspace and never made a sandbox: no event, no workspace, no patch
    kinds = [e.event.type for e in events_of(home, reader.id)]
    assert "sandbox.created" not in kinds
    (read,) = [e.event for e in events_of(home, reader.id) if isinstance(e.event, ToolReturned)]
    assert read.ok and calc.splitlines()[0] in read.text
    assert not (Path(reader.run_dir) / "workspace").exists()
    assert reader.result is not None and reader.result["patch"] == ""

    # the writer's sandbox came with its first write, after its read (served by the parent's workspace)
    events = [e.event for e in events_of(home, writer.id)]
    kinds = [e.type for e in events]
    created = kinds.index("sandbox.created")
    first_read = next(i for i, e in enumerate(events) if isinstance(e, ToolReturned) and e.tool == "read_file")
    write_call = next(i for i, e in enumerate(events) if isinstance(e, ToolCalled) and e.tool == "write_file")
    assert first_read < created < next(i for i in range(write_call, len(events)) if kinds[i] == "tool.result")
    assert writer.result is not None and "+written by a worker" in writer.result["patch"]
    assert record.result is not None and "+written by a worker" in record.result["patch"]
