"""Cancelling a run cancels its children: a live run waiting on a light child (which takes no DBOS step a
cancel could interrupt) stops within seconds; a tree whose process was killed ends whole with `corral cancel`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.e2e.test_runs import script, spec_for
from tests.orchestration.support import eval_script, run_then_kill

pytestmark = pytest.mark.slow

SLOW_REVIEWERS = """
[[routes]]
match = "You review code"
[[routes.turns]]
delay = 30
output = { findings = [] }
"""


@pytest.mark.anyio
async def test_cancelling_a_run_stops_the_light_children_it_waits_on(home: Path, repo: Path, tmp_path: Path) -> None:
    program = 'await asyncio.gather(*[task("review part " + str(i), agent="reviewer") for i in range(3)])'
    store = Store.open(home=home)
    try:
        with ScriptedServer(script(tmp_path, eval_script(program) + SLOW_REVIEWERS)) as server:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server, tools=["eval"]), "review", repo)
                deadline = time.monotonic() + 30
                while len(store.children(record.id)) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 - another thread's writes
                    await asyncio.sleep(0.05)
                started = time.monotonic()
                done = await runtime.cancel(record.id, wait_s=20)
                took = time.monotonic() - started
        children = store.children(record.id)
    finally:
        store.close()
    assert done.status is RunStatus.CANCELLED
    assert took < 10, f"the cancel waited {took:.1f} s for children that answer in 30 s"
    assert [c.status for c in children] == [RunStatus.CANCELLED] * 3


def test_cancel_ends_a_killed_tree_whole(tmp_path: Path, repo: Path) -> None:
    home = tmp_path / "home"
    program = 'await asyncio.gather(task("add NOTES.md", agent="worker"), task("review it", agent="reviewer"))'
    (tmp_path / "script.toml").write_text(eval_script(program) + SLOW_REVIEWERS + WORKER)
    with ScriptedServer(load_script(tmp_path / "script.toml")) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.lead]\nmodel = "openai:gpt-5.2"\nbase_url = "{server.openai_base_url}"\n'
            'tools = ["read_file", "eval"]\nsandbox = "local"\n'
        )
        run_then_kill(
            tmp_path,
            home,
            ["lead", "do both", "--repo", str(repo)],
            lambda: running_children(home) >= 2,
            what="the children's start",
        )
        store = Store.open(home=home)
        try:
            (root,) = [r for r in store.list_runs() if r.parent_id is None]
        finally:
            store.close()
        cancelled = corral("cancel", root.id, cwd=tmp_path, home=home)
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    store = Store.open(home=home)
    try:
        tree = store.run_trees([root.id])
        assert len(tree) == 3 and all(r.status.finished for r in tree), [(r.agent, r.status) for r in tree]
        assert store.get_run(root.id).status is RunStatus.CANCELLED
    finally:
        store.close()


WORKER = """
[[routes]]
match = "You make one change"
[[routes.turns]]
delay = 30
text = "never"
"""


def running_children(home: Path) -> int:
    store = Store.open(home=home)
    try:
        roots = [r for r in store.list_runs() if r.parent_id is None]
        if not roots:
            return 0
        return sum(1 for c in store.children(roots[0].id) if c.status is RunStatus.RUNNING)
    finally:
        store.close()
