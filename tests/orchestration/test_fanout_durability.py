"""A fan-out killed mid-way resumes: every child that had ended is not run again (its result comes from the
store), the children in flight run again or resume, the worker's patch lands once, and the program ends as if
nothing happened. Killed at several points: early, mid-way, near the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.orchestration.support import eval_script, run_then_kill

pytestmark = pytest.mark.slow

FILES = 12
PROGRAM = f"""
files = ["file-" + str(i) + ".py" for i in range({FILES})]
work = [task("review " + f + " now", agent="reviewer", label=f) for f in files]
note, reviews = await asyncio.gather(task("add NOTES.md", agent="worker"), asyncio.gather(*work))
sum(len(r["findings"]) for r in reviews)
"""

CHILDREN = """
[[routes]]
match = "You review code"
[[routes.turns]]
delay = 0.4
output = { findings = [{ file = "f.py", line = 1, severity = "low", description = "a nit" }] }

[[routes]]
match = "You make one change"
[[routes.turns]]
delay = 0.5
[[routes.turns.tool_calls]]
name = "write_file"
args = { path = "NOTES.md", content = "written once\\n" }
[[routes.turns]]
text = "wrote NOTES.md"
"""


def children_of_root(home: Path) -> list:
    store = Store.open(home=home)
    try:
        roots = [r for r in store.list_runs(limit=None) if r.parent_id is None]
        return store.children(roots[0].id) if roots else []
    finally:
        store.close()


def requests_for(server: ScriptedServer, description: str) -> int:
    """Model requests of the child given ``description`` (the root's requests hold it too, in its program;
    they are the ones that offer the ``eval`` tool, whose description shows ``asyncio.gather``)."""
    bodies = [json.dumps(r.body) for r in server.requests]
    return sum(1 for body in bodies if description in body and "asyncio.gather" not in body)


@pytest.mark.parametrize("kill_after", [1, 11], ids=lambda k: f"after-{k}-children")  # early, late
def test_sigkill_mid_fan_out_then_resume_runs_no_ended_child_again(
    tmp_path: Path, repo: Path, kill_after: int, database: str
) -> None:
    home = tmp_path / "home"
    script = tmp_path / "script.toml"
    script.write_text(eval_script(PROGRAM, answer="reviewed") + CHILDREN)
    with ScriptedServer(load_script(script)) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.lead]\nmodel = "openai:gpt-5.2"\nbase_url = "{server.openai_base_url}"\n'
            'tools = ["read_file", "eval"]\n'
            "retry = { initial_backoff_s = 0.01, max_backoff_s = 0.05 }\n"
            'sandbox = "bubblewrap"\n'
            "programs = { max_concurrent = 3 }\n"
        )
        run_then_kill(
            tmp_path,
            home,
            ["lead", "review every file", "--repo", str(repo)],
            lambda: sum(c.status is RunStatus.SUCCEEDED for c in children_of_root(home)) >= kill_after,
            what="the fan-out",
        )
        ended_before = {c.id: c.task for c in children_of_root(home) if c.status.finished}
        asked_before = {task: requests_for(server, task) for task in ended_before.values()}
        assert len(ended_before) >= kill_after

        resumed = corral("resume", cwd=tmp_path, home=home, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        for task, asked in asked_before.items():  # an ended child's model was never asked again
            assert requests_for(server, task) == asked, f"{task!r} ran again"

    store = Store.open(home=home)
    try:
        (root,) = [r for r in store.list_runs(limit=None) if r.parent_id is None]
        assert root.status is RunStatus.SUCCEEDED, root.error
        children = store.children(root.id)
        assert len(children) == FILES + 1 and all(c.status is RunStatus.SUCCEEDED for c in children)
        patch = (root.result or {})["patch"]
        assert patch.count("+written once") == 1, patch
        events = store.events(root.id)
        keys = [e.key for e in events]
        assert len(keys) == len(set(keys)), "the journal has a duplicate"
        for run in (root, *children):  # written by the killed process and the resuming one: intact chains
            assert store.verify_journal(run.id).intact, (run.id, store.verify_journal(run.id).problems)
        finished = [e.event.child_id for e in events if e.type == "task.finished"]  # type: ignore[attr-defined]
        assert sorted(finished) == sorted(c.id for c in children)  # one each, whichever process journaled it
        (result,) = [e.event for e in events if e.type == "tool.result" and getattr(e.event, "tool", "") == "eval"]
        assert result.ok and f"value: {FILES}" in result.text, result.text  # type: ignore[attr-defined]
    finally:
        store.close()


WRITER = """
[[routes]]
match = "You make one change"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "write_file"
args = { path = "FIRST.md", content = "before the kill\\n" }
[[routes.turns]]
delay = 1.0
[[routes.turns.tool_calls]]
name = "write_file"
args = { path = "SECOND.md", content = "after the resume\\n" }
[[routes.turns]]
text = "wrote both"
"""


def test_a_worker_killed_after_its_first_write_resumes_in_the_sandbox_it_made(tmp_path: Path, repo: Path) -> None:
    """The sandbox a worker makes at its first write is a durable step: the resumed worker re-opens it
    (the first write, whose step is not run again, is still there) instead of making another."""
    home = tmp_path / "home"
    script = tmp_path / "script.toml"
    script.write_text(eval_script('await task("add two files", agent="worker")', answer="done") + WRITER)

    def first_write_done() -> bool:
        children = children_of_root(home)
        if not children:
            return False
        store = Store.open(home=home)
        try:
            return any(e.type == "tool.result" for e in store.events(children[0].id))
        finally:
            store.close()

    with ScriptedServer(load_script(script)) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.lead]\nmodel = "openai:gpt-5.2"\nbase_url = "{server.openai_base_url}"\n'
            'tools = ["read_file", "eval"]\nsandbox = "bubblewrap"\n'
        )
        run_then_kill(tmp_path, home, ["lead", "write", "--repo", str(repo)], first_write_done, what="the first write")
        resumed = corral("resume", cwd=tmp_path, home=home, timeout=180)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store = Store.open(home=home)
    try:
        (root,) = [r for r in store.list_runs(limit=None) if r.parent_id is None]
        assert root.status is RunStatus.SUCCEEDED, root.error
        (child,) = store.children(root.id)
        patch = (child.result or {})["patch"]
        assert "+before the kill" in patch and "+after the resume" in patch, patch
        assert (root.result or {})["patch"].count("+before the kill") == 1
        kinds = [e.type for e in store.events(child.id)]
        assert kinds.count("sandbox.created") == 1 and kinds.count("run.resumed") == 1, kinds
    finally:
        store.close()
