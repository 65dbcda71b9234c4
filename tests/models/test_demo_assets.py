"""The bundled demo: its script calls the built-in tools correctly, and its edit fixes the sample repo."""

from __future__ import annotations

import difflib
import inspect
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from corral.demo import DEMO_SCRIPT, SAMPLE_REPO
from corral.models.scripted import Script, ScriptedServer, load_script

PYTHON = shutil.which("python3") or sys.executable


# The built-in coding tools' signatures, as the demo script must call them.
def glob(pattern: str, path: str = ".") -> None: ...
def grep(pattern: str, path: str = ".", glob: str | None = None) -> None: ...
def read_file(path: str, start_line: int | None = None, end_line: int | None = None) -> None: ...
def write_file(path: str, content: str) -> None: ...
def edit_file(path: str, old: str, new: str) -> None: ...
def execute(command: str, timeout: float | None = None) -> None: ...
def diff() -> None: ...


BUILTIN_TOOLS = {
    f.__name__: inspect.signature(f) for f in (glob, grep, read_file, write_file, edit_file, execute, diff)
}


@pytest.fixture(scope="module")
def script() -> Script:
    return load_script(DEMO_SCRIPT)


def copy_sample(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(SAMPLE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def unittest_in(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "unittest"], cwd=repo, capture_output=True, text=True, timeout=60, check=False)


def test_demo_script_calls_only_builtin_tools_with_their_real_arguments(script: Script) -> None:
    calls = [call for turn in script.turns for call in turn.tool_calls]
    assert 7 <= len(script.turns) <= 9
    assert [c.name for c in calls][:1] == ["glob"]
    assert {"read_file", "execute", "edit_file"} <= {c.name for c in calls}
    for call in calls:
        BUILTIN_TOOLS[call.name].bind(**call.args)  # raises TypeError on a wrong or missing argument
    assert script.turns[-1].text
    assert not script.turns[-1].tool_calls
    inputs = [turn.usage.input_tokens for turn in script.turns if turn.usage]
    assert len(inputs) == len(script.turns)
    assert inputs == sorted(inputs)


def test_unmodified_sample_repo_fails_exactly_one_test(tmp_path: Path) -> None:
    result = unittest_in(copy_sample(tmp_path))
    assert result.returncode == 1
    assert "FAILED (failures=1)" in result.stderr
    assert "test_item_exactly_at_reorder_level_needs_reorder" in result.stderr


def test_the_scripted_edit_makes_the_sample_tests_pass(tmp_path: Path, script: Script) -> None:
    repo = copy_sample(tmp_path)
    edits = [call.args for turn in script.turns for call in turn.tool_calls if call.name == "edit_file"]
    assert edits
    for edit in edits:
        target = repo / edit["path"]
        source = target.read_text()
        assert source.count(edit["old"]) == 1
        target.write_text(source.replace(edit["old"], edit["new"]))
    result = unittest_in(repo)
    assert result.returncode == 0, result.stderr
    assert result.stderr.rstrip().endswith("OK")


def test_scripted_read_of_the_buggy_function_covers_it(script: Script) -> None:
    reads = [c.args for t in script.turns for c in t.tool_calls if c.name == "read_file" and "start_line" in c.args]
    for read in reads:
        lines = (SAMPLE_REPO / read["path"]).read_text().splitlines()[read["start_line"] - 1 : read["end_line"]]
        assert any("def needs_reorder" in line for line in lines)
        assert any("item.reorder_level" in line for line in lines)
    assert (SAMPLE_REPO / "AGENTS.md").is_file()


@pytest.mark.slow  # a whole run
@pytest.mark.anyio
async def test_demo_session_runs_to_the_end_with_an_agent_and_fixes_the_repo(tmp_path: Path, script: Script) -> None:
    repo = copy_sample(tmp_path)
    before = {p: p.read_text() for p in repo.rglob("*.py")}
    outputs: list[str] = []
    with ScriptedServer(script) as server:
        provider = OpenAIProvider(base_url=server.openai_base_url, api_key="k")
        agent = Agent(OpenAIChatModel("gpt-4.1-mini", provider=provider), instructions="Fix the failing test.")

        # Stand-ins for the built-in tools, with the same names and arguments.
        @agent.tool_plain(name="glob")
        def glob_tool(pattern: str, path: str = ".") -> list[str]:
            return sorted(str(p.relative_to(repo)) for p in (repo / path).glob(pattern))

        @agent.tool_plain(name="grep")
        def grep_tool(pattern: str, path: str = ".", glob: str | None = None) -> str:
            files = sorted((repo / path).rglob(glob or "*.py"))
            return "\n".join(
                f"{f.relative_to(repo)}:{n}: {line}"
                for f in files
                for n, line in enumerate(f.read_text().splitlines(), 1)
                if re.search(pattern, line)
            )

        @agent.tool_plain(name="read_file")
        def read_file_tool(path: str, start_line: int | None = None, end_line: int | None = None) -> str:
            lines = (repo / path).read_text().splitlines()
            return "\n".join(lines[(start_line or 1) - 1 : end_line])

        @agent.tool_plain(name="edit_file")
        def edit_file_tool(path: str, old: str, new: str) -> str:
            source = (repo / path).read_text()
            assert source.count(old) == 1
            (repo / path).write_text(source.replace(old, new))
            return f"edited {path}"

        @agent.tool_plain(name="execute")
        def execute_tool(command: str, timeout: float | None = None) -> str:
            done = subprocess.run(shlex.split(command), cwd=repo, capture_output=True, text=True, timeout=timeout)
            outputs.append(done.stdout + done.stderr)
            return f"exit code {done.returncode}\n{done.stdout}{done.stderr}"

        @agent.tool_plain(name="diff")
        def diff_tool() -> str:
            changed = [(p, text) for p, text in before.items() if p.read_text() != text]
            return "".join(
                "".join(difflib.unified_diff(text.splitlines(True), p.read_text().splitlines(True), str(p), str(p)))
                for p, text in changed
            )

        async with agent:
            result = await agent.run("The test suite fails. Find the bug and fix it.")
    assert result.output == script.turns[-1].text
    assert result.usage.requests == len(script.turns)
    assert "FAILED (failures=1)" in outputs[0]
    assert outputs[-1].rstrip().endswith("OK")
    assert unittest_in(repo).returncode == 0
