"""Persistence modes: what a program sees of the programs before it. ``call``: nothing; ``turn``: the globals
of the programs of the same model turn; ``thread``: of every program of the run. Later programs are still
type-checked (names from earlier ones are known), with their errors placed in their own lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.events import ToolReturned
from corral.models.scripted import ScriptedServer
from corral.orchestration.interpreter import defined_names
from corral.store import RunStatus
from tests.e2e.test_runs import events_of, run_once, script, spec_for

pytestmark = pytest.mark.anyio


def turn(*programs: str) -> str:
    calls = "".join(f"[[turns.tool_calls]]\nname = \"eval\"\nargs = {{ program = '''{p}''' }}\n" for p in programs)
    return f"[[turns]]\n{calls}\n"


SCRIPT = (
    turn("count = 2\ndef double(x):\n    return x * 2\ncount", "count + 1")
    + turn("double(count) + 1")
    + turn("total = 0\nfor i in range(3):\n    total = total + i\nlen(3)")
    + "[[turns]]\ntext = 'done'\n"
)


async def results(home: Path, repo: Path, tmp_path: Path, persistence: str) -> list[ToolReturned]:
    with ScriptedServer(script(tmp_path, SCRIPT)) as server:
        spec = spec_for(server, tools=["read_file", "eval"], programs={"persistence": persistence})
        record = await run_once(home, spec, repo)
    assert record.status is RunStatus.SUCCEEDED, record.error
    found = [e.event for e in events_of(home, record.id) if isinstance(e.event, ToolReturned)]
    return sorted(found, key=lambda r: r.call_id)


async def test_thread_keeps_every_programs_globals(home: Path, repo: Path, tmp_path: Path) -> None:
    first, second, third, fourth = await results(home, repo, tmp_path, "thread")
    assert first.ok and "value: 2" in first.text
    assert second.ok and "value: 3" in second.text  # same turn
    assert third.ok and "value: 5" in third.text  # the next turn: double and count live on
    # still type-checked: the error is placed on the program's own line 4, nothing ran
    assert fourth.error == "TypeCheckError" and "main.py:4:" in fourth.text, fourth.text


async def test_turn_keeps_the_globals_of_one_turn_only(home: Path, repo: Path, tmp_path: Path) -> None:
    first, second, third, _ = await results(home, repo, tmp_path, "turn")
    assert first.ok and second.ok and "value: 3" in second.text
    assert not third.ok and "double" in third.text  # a new turn, a new interpreter


async def test_call_starts_every_program_afresh(home: Path, repo: Path, tmp_path: Path) -> None:
    _, second, third, _ = await results(home, repo, tmp_path, "call")
    assert not second.ok and "count" in second.text
    assert not third.ok


def test_defined_names_are_the_top_level_bindings() -> None:
    program = "import json\nx = 1\na, b = 2, 3\nfor i in range(2):\n    y = i\ndef f():\n    inner = 1\nz = await g()\n"
    assert defined_names(program) == ["json", "x", "a", "b", "i", "y", "f", "z"]
    assert defined_names("def broken(:\n") == []
