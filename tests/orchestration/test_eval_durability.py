"""A program killed mid-way resumes: its finished tool calls come back from their durable steps (never run
again), the calls in flight run again, and the eval ends as if nothing happened."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.orchestration.support import eval_script, run_then_kill

pytestmark = pytest.mark.slow

PROGRAM = """
for i in range(3):
    await tools.execute(command=f"echo a-{i} >> progress.log")
await asyncio.gather(*[tools.execute(command=f"sleep 3 && echo b-{i} >> progress.log") for i in range(3)])
await tools.execute(command="echo c >> progress.log")
(await tools.read_file(path="progress.log")).count("-")
"""

SCRIPT = eval_script(PROGRAM)


def workspace_log(home: Path) -> str:
    store = Store.open(home=home)
    try:
        runs = store.list_runs()
        if not runs:
            return ""
        run_dir = Path(runs[0].run_dir)
        found = [p for p in run_dir.glob("**/progress.log") if p.is_file()]
        return "".join(p.read_text(errors="replace") for p in found)
    finally:
        store.close()


def test_sigkill_mid_program_then_resume_runs_each_finished_call_once(
    tmp_path: Path, repo: Path, database: str
) -> None:
    home = tmp_path / "home"
    script = tmp_path / "script.toml"
    script.write_text(SCRIPT)
    with ScriptedServer(load_script(script)) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.fixer]\nmodel = "openai:gpt-6.1-terra"\nbase_url = "{server.openai_base_url}"\n'
            'tools = ["execute", "read_file", "eval"]\n'
            "retry = { initial_backoff_s = 0.01, max_backoff_s = 0.05 }\n"
            # bubblewrap: the commands in flight die with the killed process (on the local backend they
            # would live on as orphans, and finish while the resumed run starts them again)
            'sandbox = "bubblewrap"\n'
        )
        # the sequential calls are done; the gather is sleeping
        run_then_kill(
            tmp_path,
            home,
            ["fixer", "log the steps", "--repo", str(repo)],
            lambda: "a-2" in workspace_log(home),
            what="the program's first calls",
            settle_s=0.5,
        )
        assert "b-" not in workspace_log(home)

        resumed = corral("resume", cwd=tmp_path, home=home, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    store = Store.open(home=home)
    try:
        (record,) = store.list_runs()
        assert record.status is RunStatus.SUCCEEDED, record.error
        patch = (record.result or {})["patch"]
        for line in ("a-0", "a-1", "a-2", "b-0", "b-1", "b-2", "c"):
            assert patch.count(f"+{line}\n") == 1, f"{line} ran {patch.count(f'+{line}')} times:\n{patch}"
        events = store.events(record.id)
        keys = [e.key for e in events]
        assert len(keys) == len(set(keys)), "journal has a duplicate"
        (result,) = [e.event for e in events if e.type == "tool.result" and getattr(e.event, "tool", "") == "eval"]
        assert result.ok and "value: 6" in result.text, result.text  # type: ignore[attr-defined]
    finally:
        store.close()


THREAD_SCRIPT = """
[[turns]]
[[turns.tool_calls]]
name = "eval"
args = { program = '''first = await tools.execute(command="echo one >> progress.log && echo one")
seen = ["one" if "one" in first else "missing"]''' }

[[turns]]
[[turns.tool_calls]]
name = "eval"
args = { program = '''await tools.execute(command="sleep 3 && echo two >> progress.log")
seen + ["two"]''' }

[[turns]]
text = "done"
"""


def test_thread_state_survives_a_sigkill_and_resume(tmp_path: Path, repo: Path) -> None:
    """With persistence = "thread", the second turn's program reads what the first defined, also when the
    process died in between and the run resumed: the replay rebuilds the state without running anything twice."""
    home = tmp_path / "home"
    script = tmp_path / "script.toml"
    script.write_text(THREAD_SCRIPT)
    with ScriptedServer(load_script(script)) as server:
        (tmp_path / "corral.toml").write_text(
            f'[agents.fixer]\nmodel = "openai:gpt-5.2"\nbase_url = "{server.openai_base_url}"\n'
            'tools = ["execute", "read_file", "eval"]\nsandbox = "bubblewrap"\n'
            'programs = { persistence = "thread" }\n'
        )
        run_then_kill(  # the second program is sleeping in its command
            tmp_path,
            home,
            ["fixer", "two steps", "--repo", str(repo)],
            lambda: "one" in workspace_log(home) and len(server.requests) >= 2,
            what="the first program",
            settle_s=1.0,
        )
        resumed = corral("resume", cwd=tmp_path, home=home, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    store = Store.open(home=home)
    try:
        (record,) = store.list_runs()
        assert record.status is RunStatus.SUCCEEDED, record.error
        patch = (record.result or {})["patch"]
        assert patch.count("+one\n") == 1 and patch.count("+two\n") == 1, patch
        results = [e.event for e in store.events(record.id) if e.type == "tool.result"]
        last = [r for r in results if getattr(r, "tool", "") == "eval"][-1]
        assert last.ok and 'value: ["one", "two"]' in last.text, last.text  # type: ignore[attr-defined]
    finally:
        store.close()
