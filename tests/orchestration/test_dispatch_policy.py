"""Policy on every dispatch: a rule by subagent type denies at once; a count rule ("ask a person once a
program dispatches more than one subagent") pauses the program durably; approving lets the child run,
denying makes task() raise inside the program with the person's reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import PolicyDecided, ToolReturned
from corral.models.scripted import ScriptedServer
from corral.runtime import Runtime
from corral.runtime import approvals as approvals_module
from corral.store import RunStatus, Store
from tests.e2e.test_runs import script, spec_for
from tests.orchestration.support import eval_script
from tests.policy.test_approvals import pending

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROGRAM = """
said = []
for i in range(3):
    try:
        found = await task("review part " + str(i), agent="reviewer")
        said.append("ok " + str(len(found["findings"])))
    except TaskError as e:
        said.append("refused: " + str(e))
try:
    await task("rewrite it all", agent="worker")
except TaskError as e:
    said.append("refused: " + str(e))
said
"""

REVIEWER = """
[[routes]]
match = "You review code"
[[routes.turns]]
output = { findings = [] }
"""

POLICY = {
    "rules": [
        {"name": "no writers", "tool": "task", "args": {"agent": "worker"}, "decision": "deny",
         "reason": "this agent only reviews"},
        {"name": "many", "tool": "task", "count_over": 1, "decision": "ask",
         "reason": "a program dispatching more than one subagent needs a person"},
    ]
}  # fmt: skip


async def test_a_dispatch_waits_for_a_person_approve_runs_it_deny_raises_in_the_program(
    home: Path, repo: Path, tmp_path: Path
) -> None:
    store = Store.open(home=home)
    other = Store.open(home=home)  # as `corral approve` / `corral deny` from another process
    try:
        with ScriptedServer(script(tmp_path, eval_script(PROGRAM) + REVIEWER)) as server:
            async with Runtime(store) as runtime:
                record = await runtime.submit(spec_for(server, tools=["eval"], policy=POLICY), "review", repo)
                first = await pending(store)
                assert store.get_run(record.id).status is RunStatus.WAITING_APPROVAL
                assert (first.tool, first.rule, first.arguments["agent"]) == ("task", "many", "reviewer")
                assert first.arguments["description"] == "review part 1"
                approvals_module.decide(other, first.id, approve=True, reason=None, by="ana")
                while (second := await pending(store)).id == first.id:
                    pass
                approvals_module.decide(other, second.id, approve=False, reason="enough reviews", by="ana")
                done = await runtime.wait(record.id, timeout_s=60)
        events = [e.event for e in store.events(record.id)]
        children = store.children(record.id)
    finally:
        other.close()
        store.close()
    assert done.status is RunStatus.SUCCEEDED, done.error
    (result,) = [e for e in events if isinstance(e, ToolReturned) and e.tool == "eval"]
    assert '"ok 0", "ok 0", "refused: denied by policy (rule many): ' in result.text
    assert "enough reviews" in result.text
    assert "refused: denied by policy (rule no writers): this agent only reviews" in result.text
    assert len(children) == 2  # the denied dispatches never made a child
    decided = [e for e in events if isinstance(e, PolicyDecided) and e.tool == "task"]
    assert [d.kind for d in decided] == ["dispatch"] * 4
    assert [d.verdict for d in decided] == ["allow", "ask", "ask", "deny"]
