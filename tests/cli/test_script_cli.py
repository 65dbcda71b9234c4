"""`corral script FILE.py`: a person's orchestration program runs as a run, with the bridges, journal and
limits of a model's programs; bad input is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral

pytestmark = pytest.mark.slow  # each test starts corral processes

PROGRAM = """
files = sorted((await tools.glob(pattern="*.py")).split())
reviews = await asyncio.gather(*[task("review " + f, agent="reviewer", label=f) for f in files])
log("reviewed", len(files), "files")
print("files:", files)
[x["file"] for r in reviews for x in r["findings"] if x["severity"] == "high"]
"""

REVIEWER = """
[[routes]]
match = "You review code"
[[routes.turns]]
output = { findings = [{ file = "calc.py", line = 2, severity = "high", description = "subtracts" }] }
"""


def test_a_script_fans_out_reviewers_with_the_same_journal(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "review.py").write_text(PROGRAM)
    (tmp_path / "model.toml").write_text(REVIEWER)
    home = tmp_path / "home"
    done = corral(
        "script", "review.py", "--repo", str(repo), "--model", "scripted:model.toml", "--sandbox", "local",
        "--json", cwd=tmp_path, home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    store = Store.open(home=home)
    try:
        (root,) = [r for r in store.list_runs() if r.parent_id is None]
        assert root.status is RunStatus.SUCCEEDED and root.spec["engine"] == "script"
        assert root.task == PROGRAM  # the program is the run's task: resumable, and shown by corral show
        children = store.children(root.id)
        events = [e.event for e in store.events(root.id)]
    finally:
        store.close()
    python_files = sorted(p.name for p in repo.glob("*.py"))
    assert sorted(c.task for c in children) == [f"review {name}" for name in python_files]
    assert f"files: {python_files}" in (root.result or {})["text"]
    assert '"calc.py"' in (root.result or {})["text"]
    types = [e.type for e in events]
    assert types.count("task.dispatch") == len(python_files) and "program.log" in types
    assert "model.request" not in types  # nobody drives the root but the program
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["status"] == "succeeded"


def test_a_failing_script_fails_the_run_with_the_programs_error(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "bad.py").write_text("x = await task('go', agent='nobody')\n")
    done = corral(
        "script", "bad.py", "--repo", str(repo), "--model", "openai:gpt-5.2", "--sandbox", "local",
        cwd=tmp_path, home=tmp_path / "home", env={"OPENAI_API_KEY": "sk-test"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "type errors" in done.stdout + done.stderr and "the subagent types are" in done.stdout + done.stderr


def test_a_script_without_a_model_or_with_an_empty_file_is_a_usage_error(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "s.py").write_text("1\n")
    (tmp_path / "empty.py").write_text("\n")
    home = tmp_path / "home"
    no_model = corral("script", "s.py", "--repo", str(repo), cwd=tmp_path, home=home)
    assert no_model.returncode == 2 and "--model" in no_model.stderr
    empty = corral("script", "empty.py", "--model", "openai:gpt-5.2", cwd=tmp_path, home=home)
    assert empty.returncode == 2 and "empty" in empty.stderr
    missing = corral("script", "nope.py", "--model", "openai:gpt-5.2", cwd=tmp_path, home=home)
    assert missing.returncode == 2 and "nope.py" in missing.stderr
