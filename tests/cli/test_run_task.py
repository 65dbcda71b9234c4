"""``corral run AGENT -`` and ``--task-file``: the task from stdin or a file, any size; ambiguity is a usage error."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import ModelRequested
from tests.cli.run_support import run_corral, scripted_project, stored

pytestmark = pytest.mark.slow  # every case starts the real `corral` entry point

SCRIPT = '[[turns]]\ntext = "read it all"\n'
BIG_TASK = "Fix the bug, café ☕.\n" + "line of context\n" * 70_000 + "THE END"  # over 1 MB, past argv's 128 KB


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scripted_project(tmp_path / "project", SCRIPT)


def assert_the_model_got(task: str, home: Path) -> None:
    record, events = stored(home)
    assert record.task == task
    (request,) = [e.event for e in events if isinstance(e.event, ModelRequested)]
    assert request.new_messages[-1]["parts"][-1]["content"] == task


def test_a_1mb_task_from_stdin(project: Path, repo: Path) -> None:
    assert len(BIG_TASK.encode()) > 1_000_000
    home = project / "home"
    done = run_corral("run", "fixer", "-", "--repo", str(repo), "-q", cwd=project, home=home, stdin=BIG_TASK)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "read it all\n"
    assert_the_model_got(BIG_TASK, home)


def test_a_1mb_task_from_a_file(project: Path, repo: Path) -> None:
    (project / "task.md").write_text(BIG_TASK)
    home = project / "home"
    done = run_corral("run", "fixer", "--task-file", "task.md", "--repo", str(repo), "-q", cwd=project, home=home)
    assert done.returncode == 0, done.stderr
    assert_the_model_got(BIG_TASK, home)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["the task", "--task-file", "task.md"], None, "the task is given twice"),
        (["-", "--task-file", "task.md"], "from stdin", "the task is given twice"),
        ([], None, "no task given"),
        (["-"], "", "the task is empty"),
        (["-"], "  \n\t\n", "the task is empty"),
        (["   "], None, "the task is empty"),
        (["--task-file", "empty.md"], None, "the task is empty"),
        (["--task-file", "missing.md"], None, "--task-file missing.md: no such file"),
        (["--task-file", "."], None, "--task-file .: is a directory"),
        (["--task-file", "latin1.md"], None, "--task-file latin1.md: not UTF-8 text"),
    ],
)
def test_a_missing_doubled_or_empty_task_is_a_usage_error(
    project: Path, args: list[str], stdin: str | None, message: str
) -> None:
    (project / "task.md").write_text("a task")
    (project / "empty.md").write_text("\n")
    (project / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    home = project / "home"
    done = run_corral("run", "fixer", *args, cwd=project, home=home, stdin=stdin)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (home / "corral.db").exists()  # refused before anything was recorded
