"""Escape attempts through task(): a forged subagent type past the type checker, dispatching below the
deepest level allowed, and smuggling a secret the program read out to a subagent in its description.
Each is contained: refused inside the program, no child run made, no secret in any model request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.events import ToolReturned
from corral.models.scripted import ScriptedServer
from corral.spec import AgentSpec
from corral.store import Store
from tests.e2e.test_runs import events_of, run_once, script, spec_for
from tests.orchestration.support import eval_script
from tests.secrets.fakes import AWS_SECRET, GITHUB_TOKEN
from tests.secrets.test_scanner_run import secret_repo

pytestmark = pytest.mark.anyio

REVIEWER = """
[[routes]]
match = "You review code"
[[routes.turns]]
output = { findings = [] }

[[routes]]
match = "You split work"
[[routes.turns]]
[[routes.turns.tool_calls]]
name = "eval"
args = { program = 'await task("deeper", agent="reviewer")' }
[[routes.turns]]
text = "could not go deeper"
"""


def children(home: Path, run_id: str) -> list:
    store = Store.open(home=home)
    try:
        return store.children(run_id)
    finally:
        store.close()


def eval_results(home: Path, run_id: str) -> list[ToolReturned]:
    return [e.event for e in events_of(home, run_id) if isinstance(e.event, ToolReturned) and e.event.tool == "eval"]


async def test_a_forged_type_is_refused_however_it_is_asked_for(home: Path, repo: Path, tmp_path: Path) -> None:
    # through task(), and through the bridge's own name (which the host also checks against the spec)
    programs = ['await task("do anything", agent="root")', 'await _corral_task("do anything", "root", None, None)']
    with ScriptedServer(script(tmp_path, eval_script(*programs) + REVIEWER)) as server:
        record = await run_once(home, spec_for(server, tools=["eval"]), repo)
    results = eval_results(home, record.id)
    assert [r.ok for r in results] == [False, False]
    assert "the subagent types are: explorer, reviewer, worker" in results[0].text
    assert "_corral_task" in results[1].text
    assert children(home, record.id) == []


async def test_a_subagent_at_the_deepest_level_cannot_dispatch(home: Path, repo: Path, tmp_path: Path) -> None:
    program = 'await task("split the review", agent="splitter")'
    with ScriptedServer(script(tmp_path, eval_script(program) + REVIEWER)) as server:
        base = spec_for(server, tools=["eval"])
        splitter = base.model_copy(update={"name": "splitter", "instructions": "You split work for a lead."})
        spec = base.with_overrides({"programs.max_depth": 1}).model_copy(update={"subagents": {"splitter": splitter}})
        record = await run_once(home, spec, repo)
    (child,) = children(home, record.id)
    assert child.agent == "splitter" and children(home, child.id) == []
    (inner,) = eval_results(home, child.id)
    assert not inner.ok  # the deepest run's programs have no task(), and the bridge is not theirs to call


async def test_a_secret_read_by_a_program_never_reaches_a_subagent(home: Path, repo: Path, tmp_path: Path) -> None:
    program = """
settings = await tools.read_file(path="app/settings.py")
env = await tools.read_file(path="deploy/.env")
await task("check these settings: " + settings + env, agent="reviewer")
"""
    secret_repo(repo)
    with ScriptedServer(script(tmp_path, eval_script(program) + REVIEWER)) as server:
        record = await run_once(home, spec_for(server, tools=["read_file", "eval"]), repo)
        sent = [json.dumps(r.body) for r in server.requests]
    (child,) = children(home, record.id)
    assert "check these settings" in child.task and "[secret:detected:" in child.task
    for body in sent:
        assert AWS_SECRET not in body and GITHUB_TOKEN not in body
    for run_id in (record.id, child.id):
        journal = json.dumps([e.to_json() for e in events_of(home, run_id)])
        assert AWS_SECRET not in journal and GITHUB_TOKEN not in journal


def test_agent_spec_validates_nested_subagents() -> None:
    with pytest.raises(ValueError, match="identifiers"):
        AgentSpec.model_validate(
            {"name": "a", "model": "openai:gpt-5.2", "subagents": {"has space": {"name": "b", "model": "openai:x"}}}
        )
