"""Long inputs (recursive language models): a 5 MB input is bound to `context` in programs; the model sees
its size and first lines, never the input, so no request grows with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.events import ToolReturned
from corral.models.scripted import ScriptedServer
from corral.runtime import Runtime
from corral.store import RunStatus, Store
from tests.e2e.test_runs import events_of, script, spec_for
from tests.orchestration.support import eval_script

pytestmark = pytest.mark.anyio

PROGRAM = """
lines = context.splitlines()
chunks = [lines[i:i + 10000] for i in range(0, len(lines), 10000)]
errors = [sum(1 for line in chunk if "ERROR" in line) for chunk in chunks]
print(len(chunks), "chunks")
{"lines": len(lines), "errors": sum(errors)}
"""

SCRIPT = eval_script(PROGRAM, answer="1000 errors in 100000 lines")


def big_log() -> str:
    lines = [f"2026-12-04T10:{i % 60:02d}:00 {'ERROR disk full' if i % 100 == 0 else 'INFO request served'} #{i:07d}"
             for i in range(100_000)]  # fmt: skip
    text = "\n".join(lines) + "\n"
    return text + "x" * (5_000_000 - len(text))


async def test_a_5_mb_input_never_enters_a_request(home: Path, repo: Path, tmp_path: Path) -> None:
    context = big_log()
    assert len(context) == 5_000_000
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        spec = spec_for(server, tools=["read_file", "eval"])
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                submitted = await runtime.submit(spec, "count the errors in the log", repo, context=context)
                record = await runtime.wait(submitted.id)
        finally:
            store.close()
        bodies = [json.dumps(request.body) for request in server.requests]
    assert record.status is RunStatus.SUCCEEDED, record.error
    assert max(len(body) for body in bodies) < 30_000  # the root context does not grow with the input
    assert "bound to `context` (a str of 5,000,000 characters, 100,001 lines)" in bodies[0]
    assert "2026-12-04T10:00:00 ERROR disk full #0000000" in bodies[0]  # the first lines, as a preview
    (result,) = [e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned)]
    assert result.ok and '"lines": 100001' in result.text and '"errors": 1000' in result.text


async def test_a_long_input_needs_the_eval_tool(home: Path, repo: Path, tmp_path: Path) -> None:
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        store = Store.open(home=home)
        try:
            async with Runtime(store) as runtime:
                with pytest.raises(UsageError, match="its tools lack eval"):
                    await runtime.submit(spec_for(server, tools=["read_file"]), "t", repo, context="x")
        finally:
            store.close()


@pytest.mark.slow
def test_corral_run_context_reads_a_file_or_a_directory_listing(tmp_path: Path, repo: Path) -> None:
    from tests.cli.run_support import run_corral, scripted_project, stored

    listing_script = """
[[turns]]
[[turns.tool_calls]]
name = "eval"
args = { program = 'sorted(line.split()[1] for line in context.splitlines())' }

[[turns]]
text = "listed"
"""
    project = scripted_project(tmp_path / "project", listing_script, agent_extra='tools = ["read_file", "eval"]\n')
    home = tmp_path / "home"
    done = run_corral("--home", str(home), "run", "fixer", "list it", "--repo", str(repo), "--context", str(repo),
                      cwd=project, home=None)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    _, events = stored(home)
    (result,) = [e.event for e in events if isinstance(e.event, ToolReturned)]
    assert result.text == 'value: ["AGENTS.md", "calc.py", "test_calc.py"]'
    missing = run_corral("--home", str(home), "run", "fixer", "x", "--repo", str(repo), "--context", "nope.txt",
                         cwd=project, home=None)  # fmt: skip
    assert missing.returncode == 2 and "--context nope.txt: no such file" in missing.stderr
