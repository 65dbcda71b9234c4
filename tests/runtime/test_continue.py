"""Follow-up runs (``corral continue``): the conversation goes on, the workspace starts where the run left it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.errors import UsageError
from corral.models.scripted import ScriptedServer, load_script
from corral.runtime import Runtime
from corral.runtime.runtime import run_patch
from corral.runtime.sandboxing import START_DIRNAME
from corral.sandbox.patching import apply_patch
from corral.spec import AgentSpec
from corral.store import RunRecord, RunStatus, Store
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Turn 1-2: the first run writes notes.md. Turns 3-4: a follow-up reads it and appends.
# Turns 5-6: a third run in the chain. The scripted model answers by position in the
# conversation, so each follow-up gets the next turns only if the earlier messages are sent.
CHAIN = """
[[turns]]
[[turns.tool_calls]]
name = "write_file"
args = { path = "notes.md", content = "one\\n" }
[[turns]]
text = "first: wrote notes.md"

[[turns]]
[[turns.tool_calls]]
name = "edit_file"
args = { path = "notes.md", old = "one\\n", new = "one\\ntwo\\n" }
[[turns]]
text = "second: appended two"

[[turns]]
[[turns.tool_calls]]
name = "edit_file"
args = { path = "notes.md", old = "two\\n", new = "two\\nthree\\n" }
[[turns]]
text = "third: appended three"
"""


def spec_for(server: ScriptedServer, *, sandbox: str = "local", **extra: Any) -> AgentSpec:
    return AgentSpec.model_validate(
        {
            "name": "scribe",
            "model": "openai-chat:gpt-4.1-mini",
            "base_url": server.openai_base_url,
            "sandbox": sandbox,
            "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
            **extra,
        }
    )


@pytest.fixture
def server(tmp_path: Path) -> Any:
    path = tmp_path / "chain.toml"
    path.write_text(CHAIN)
    with ScriptedServer(load_script(path)) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("a repository\n")
    return repo


def texts(request_body: dict[str, Any]) -> list[str]:
    return [str(m.get("content")) for m in request_body["messages"] if m.get("content")]


async def run_chain(store: Store, spec: AgentSpec, repo: Path, *tasks: str) -> list[RunRecord]:
    records: list[RunRecord] = []
    async with Runtime(store) as runtime:
        for task in tasks:
            previous = records[-1].id if records else None
            submitted = await runtime.submit(spec, task, repo, continue_from=previous)
            records.append(await runtime.wait(submitted.id, timeout_s=60))
    return records


async def test_a_chain_of_follow_ups_continues_the_conversation_and_the_workspace(
    home: Path, workdir: Path, server: ScriptedServer
) -> None:
    store = Store.open(home=home)
    try:
        first, second, third = await run_chain(store, spec_for(server), workdir, "start notes", "add two", "add three")
    finally:
        store.close()
    assert [r.status for r in (first, second, third)] == [RunStatus.SUCCEEDED] * 3
    assert (second.continues_id, second.parent_id, second.root_id) == (first.id, first.id, first.id)
    assert (third.continues_id, third.root_id) == (second.id, first.id)
    assert [r.result["text"] for r in (first, second, third)] == [  # type: ignore[index]
        "first: wrote notes.md",
        "second: appended two",
        "third: appended three",
    ]
    # The model saw the whole conversation: the third run's first request holds every earlier task and answer.
    third_call = next(r for r in server.requests if r.position == 4)
    assert {"start notes", "first: wrote notes.md", "add two", "second: appended two", "add three"} <= set(
        texts(third_call.body or {})
    )
    # Each patch holds only its own changes, and they apply one after the other.
    assert "+one" in run_patch(first) and "+two" not in run_patch(first)
    assert "+two" in run_patch(second) and "+one" not in run_patch(second)
    assert "+three" in run_patch(third)
    for record in (first, second, third):
        assert (await apply_patch(workdir, run_patch(record))).applies
        assert not (Path(record.run_dir) / START_DIRNAME).exists()  # the starting tree went with the sandbox
    assert (workdir / "notes.md").read_text() == "one\ntwo\nthree\n"


async def test_a_follow_up_after_its_parent_was_applied_does_not_apply_it_twice(
    home: Path, workdir: Path, server: ScriptedServer
) -> None:
    store = Store.open(home=home)
    try:
        (first,) = await run_chain(store, spec_for(server), workdir, "start notes")
        assert (await apply_patch(workdir, run_patch(first))).applies  # the user took the change
        async with Runtime(store) as runtime:
            second = await runtime.wait(
                (await runtime.submit(spec_for(server), "add two", workdir, continue_from=first.id)).id, timeout_s=60
            )
    finally:
        store.close()
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert any("already holds the changes of run" in note for note in second.result["notes"])  # type: ignore[index]
    assert (await apply_patch(workdir, run_patch(second))).applies
    assert (workdir / "notes.md").read_text() == "one\ntwo\n"


async def test_a_follow_up_whose_starting_changes_conflict_is_refused_before_it_is_recorded(
    home: Path, workdir: Path, server: ScriptedServer
) -> None:
    store = Store.open(home=home)
    try:
        (first,) = await run_chain(store, spec_for(server), workdir, "start notes")
        (workdir / "notes.md").write_text("someone else's notes\n")  # the repository moved on
        async with Runtime(store) as runtime:
            with pytest.raises(UsageError, match=f"the changes of run {first.id} do not apply") as err:
                await runtime.submit(spec_for(server), "add two", workdir, continue_from=first.id)
        assert "notes.md" in err.value.message
        assert len(store.list_runs()) == 1
    finally:
        store.close()


async def test_only_a_finished_run_can_be_continued(home: Path, workdir: Path, server: ScriptedServer) -> None:
    from tests.store.runs import add_run

    store = Store.open(home=home)
    try:
        add_run(store, "stillgoing", status=RunStatus.RUNNING)
        async with Runtime(store) as runtime:
            with pytest.raises(UsageError, match="has not finished"):
                await runtime.submit(spec_for(server), "next", workdir, continue_from="stillgoing")
    finally:
        store.close()


TYPED_THEN_TEXT = """
[[turns]]
output = { verdict = "ok" }
[[turns]]
text = "earlier verdict was ok"
"""


async def test_a_run_that_ended_with_typed_output_can_be_continued(home: Path, workdir: Path, tmp_path: Path) -> None:
    # Its last answer is a call of the output tool, never answered: the history is repaired before it is sent.
    path = tmp_path / "typed.toml"
    path.write_text(TYPED_THEN_TEXT)
    schema = {"type": "object", "properties": {"verdict": {"type": "string"}}, "required": ["verdict"]}
    with ScriptedServer(load_script(path)) as server:
        store = Store.open(home=home)
        try:
            (first,) = await run_chain(store, spec_for(server, output_schema=schema), workdir, "judge")
            async with Runtime(store) as runtime:
                second = await runtime.wait(
                    (await runtime.submit(spec_for(server), "say it", workdir, continue_from=first.id)).id,
                    timeout_s=60,
                )
        finally:
            store.close()
    assert first.result["output"] == {"verdict": "ok"}  # type: ignore[index]
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.result["text"] == "earlier verdict was ok"  # type: ignore[index]
    follow_up = next(r for r in server.requests if r.position == 1).body or {}
    tool_answers = [m for m in follow_up["messages"] if m.get("role") == "tool"]
    # The output call is answered, as the API requires, with the words pydantic-ai itself answers it with.
    assert [m["content"] for m in tool_answers] == ["Final result processed."]


FAILS_AFTER_WRITE = """
[[turns]]
[[turns.tool_calls]]
name = "write_file"
args = { path = "half.txt", content = "half\\n" }
[[turns]]
# The first run's call fails (400 is not retried); the follow-up's call at this position is answered.
fail = [ { status = 400, message = "context too long" } ]
text = "finished the other half"
"""


async def test_a_failed_run_with_partial_work_can_be_continued(home: Path, workdir: Path, tmp_path: Path) -> None:
    path = tmp_path / "fails.toml"
    path.write_text(FAILS_AFTER_WRITE)
    with ScriptedServer(load_script(path)) as server:
        store = Store.open(home=home)
        try:
            (first,) = await run_chain(store, spec_for(server), workdir, "do it")
            assert first.status is RunStatus.FAILED
            assert "+half" in run_patch(first)
            async with Runtime(store) as runtime:
                second = await runtime.wait(
                    (await runtime.submit(spec_for(server), "go on", workdir, continue_from=first.id)).id,
                    timeout_s=60,
                )
        finally:
            store.close()
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.result["text"] == "finished the other half"  # type: ignore[index]
    # The failed call's request (the write's result) is part of the history; the workspace holds half.txt.
    assert run_patch(second) == ""
    last = server.requests[-1].body or {}
    assert "go on" in texts(last) and "do it" in texts(last)


async def test_a_follow_up_in_bubblewrap_starts_from_its_parent_s_workspace(
    home: Path, workdir: Path, server: ScriptedServer
) -> None:
    skip_unless_bubblewrap_runs()
    store = Store.open(home=home)
    try:
        first, second = await run_chain(
            store, spec_for(server, sandbox="bubblewrap"), workdir, "start notes", "add two"
        )
    finally:
        store.close()
    assert second.status is RunStatus.SUCCEEDED, second.error
    patch = run_patch(second)
    assert "-one" not in patch and "+two" in patch  # edit_file found the parent's line in the workspace
    for record in (first, second):
        assert (await apply_patch(workdir, run_patch(record))).applies
    assert (workdir / "notes.md").read_text() == "one\ntwo\n"


def test_follow_up_resumed_after_a_kill_applies_its_start_once(tmp_path: Path, workdir: Path) -> None:
    """SIGKILL a follow-up mid-run; ``corral resume`` finishes it without re-applying its parent's changes."""
    import os
    import signal
    import sys
    import time

    script = tmp_path / "slow.toml"
    script.write_text(
        CHAIN.replace(
            '[[turns]]\ntext = "second: appended two"',
            '[[turns]]\ndelay = 3\ntext = "second: appended two"',
        )
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text(f'[agents.scribe]\nmodel = "scripted:{script}"\nsandbox = "local"\n')
    home = project / "home"
    env = {**os.environ, "CORRAL_HOME": str(home)}

    def corral(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "corral", *args]
        return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120, **kw)

    first = corral("run", "scribe", "start notes", "--repo", str(workdir), "-q")
    assert first.returncode == 0, first.stderr
    store = Store.open(home=home)
    try:
        (parent,) = store.list_runs()
    finally:
        store.close()
    follow = subprocess.Popen(
        [sys.executable, "-m", "corral", "continue", parent.id, "add two", "-q"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until the edit of the follow-up is journaled, then kill during the slow turn
            store = Store.open(home=home)
            try:
                child = next((r for r in store.list_runs() if r.continues_id == parent.id), None)
                edited = child is not None and any(e.type == "tool.result" for e in store.events(child.id))
            finally:
                store.close()
            if edited:
                break
            assert time.monotonic() < deadline, "the follow-up never edited notes.md"
            time.sleep(0.2)
        os.kill(follow.pid, signal.SIGKILL)
    finally:
        follow.kill()
        follow.wait()
    assert child is not None
    resumed = corral("resume", child.id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    store = Store.open(home=home)
    try:
        done = store.get_run(child.id)
    finally:
        store.close()
    assert done.status is RunStatus.SUCCEEDED, done.error
    patch = run_patch(done)
    assert patch.count("+two") == 1 and "+one" not in patch  # started from the parent's tree exactly once
