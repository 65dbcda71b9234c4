"""``corral continue RUN "next instruction"``: a new run that follows up a finished one."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import ToolReturned
from corral.store import RunStatus, Store
from tests.cli.run_support import json_lines, run_corral, scripted_project, stored
from tests.store.runs import add_run

pytestmark = pytest.mark.slow  # every case starts the real `corral` entry point

# Turns 1-2 are the first run; turns 3-4 its follow-up, in the same conversation (the script goes on).
SESSION = """
[[turns]]
[[turns.tool_calls]]
name = "write_file"
args = { path = "notes.md", content = "first run was here\\n" }

[[turns]]
text = "wrote notes.md"

[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = "cat notes.md" }

[[turns]]
text = "the notes are still there"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scripted_project(tmp_path / "project", SESSION)


# Needs the runtime side of `continue` (Runtime.submit(..., continue_from=)), written on another branch: this test
# fails in the cli-run worktree and is run by the coordinator after the merge.
def test_continue_follows_up_the_conversation_and_workspace_of_a_finished_run(project: Path, repo: Path) -> None:
    home = project / "home"
    first = run_corral("run", "fixer", "take notes", "--repo", str(repo), "-q", cwd=project, home=home)
    assert first.returncode == 0, first.stderr
    parent, _ = stored(home)

    done = run_corral("continue", parent.id[:8], "-", "--json", cwd=project, home=home, stdin="check the notes")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json_lines(done.stdout)[-1]
    assert result["text"] == "the notes are still there"
    assert result["continues_id"] == parent.id

    child, events = stored(home, result["run_id"])
    assert child.continues_id == parent.id
    assert child.task == "check the notes"
    assert child.repo == parent.repo
    assert child.spec_hash == parent.spec_hash  # no overrides: the parent's spec
    (cat,) = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert "first run was here" in cat.text  # the workspace the first run left


def test_an_unfinished_run_cannot_be_continued(project: Path) -> None:
    home = project / "home"
    store = Store.open(home=home)
    try:
        add_run(store, "stillrunning", status=RunStatus.RUNNING)  # its executor is gone: interrupted
    finally:
        store.close()
    done = run_corral("continue", "stillrunning", "next", cwd=project, home=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "run stillrunning has not finished (interrupted); only a finished run can be continued" in done.stderr
    assert "resume it first: corral resume stillrunning" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchrun", "next"], "no run 'nosuchrun'"),
        (["nosuchrun"], "no task given"),
        (["nosuchrun", "next", "--task-file", "t.md"], "the task is given twice"),
    ],
)
def test_continue_refuses_what_run_refuses(project: Path, args: list[str], message: str) -> None:
    done = run_corral("continue", *args, cwd=project, home=project / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
