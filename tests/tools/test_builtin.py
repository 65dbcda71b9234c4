"""The built-in coding tools against a real local sandbox: happy paths, errors and confinement."""

from __future__ import annotations

import functools
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from corral.sandbox import Sandbox
from corral.tools import BUILTIN_TOOLS, Capability, ToolContext, ToolOutcome, run_tool
from corral.tools.builtin import GLOB_LIMIT, GREP_MATCH_LIMIT, GREP_MAX_FILE_BYTES

pytestmark = pytest.mark.anyio

CallTool = Callable[..., Awaitable[ToolOutcome]]


def test_builtin_tools_have_the_agreed_names_params_and_capabilities() -> None:
    expected = {
        "read_file": ({"path", "start_line", "end_line"}, Capability.READS_WORKSPACE),
        "write_file": ({"path", "content"}, Capability.WRITES_WORKSPACE),
        "edit_file": ({"path", "old", "new"}, Capability.WRITES_WORKSPACE),
        "glob": ({"pattern", "path"}, Capability.READS_WORKSPACE),
        "grep": ({"pattern", "path", "glob"}, Capability.READS_WORKSPACE),
        "execute": ({"command", "timeout"}, Capability.RUNS_COMMANDS),
        "diff": (set(), Capability.READS_WORKSPACE),
    }
    assert set(BUILTIN_TOOLS) == set(expected)
    for name, (params, capability) in expected.items():
        definition = BUILTIN_TOOLS[name]
        assert definition.name == name
        assert set(definition.json_schema().get("properties", {})) == params
        assert definition.capabilities == frozenset({capability})
        assert definition.description


# -- read_file ---------------------------------------------------------------------------------


async def test_read_file_numbers_lines(call: CallTool) -> None:
    outcome = await call("read_file", path="src/app/main.py")
    assert outcome.ok
    assert outcome.text.splitlines()[:2] == ["     1\tdef add(a, b):", "     2\t    return a + b"]
    assert "[lines" not in outcome.text


async def test_read_file_line_range(call: CallTool) -> None:
    outcome = await call("read_file", path="src/app/main.py", start_line=5, end_line=6)
    assert outcome.text == "     5\tdef sub(a, b):\n     6\t    return a - b\n[lines 5-6 of 6]"
    clamped = await call("read_file", path="src/app/main.py", start_line=6, end_line=99)
    assert clamped.text == "     6\t    return a - b\n[lines 6-6 of 6]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "missing.py"}, "no such file"),
        ({"path": "src"}, "is a directory"),
        ({"path": "image.png"}, "binary file"),
        ({"path": "README.md", "start_line": 10}, "past the end of README.md, which has 3 lines"),
        ({"path": "README.md", "start_line": 3, "end_line": 2}, "before start_line"),
        ({"path": "README.md", "start_line": 0}, "start_line: Input should be greater than or equal to 1"),
    ],
)
async def test_read_file_errors_are_clear(call: CallTool, args: dict[str, object], message: str) -> None:
    outcome = await call("read_file", **args)
    assert not outcome.ok
    assert message in outcome.text


async def test_read_file_of_an_empty_file(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file("empty.txt", b"")
    assert (await call("read_file", path="empty.txt")).text == "empty.txt is empty"


# -- write_file / edit_file --------------------------------------------------------------------


async def test_write_file_creates_parents_and_overwrites(call: CallTool, sandbox: Sandbox) -> None:
    outcome = await call("write_file", path="pkg/new/mod.py", content="x = 1\ny = 2\n")
    assert outcome.ok
    assert outcome.text == "wrote 12 bytes (2 lines) to pkg/new/mod.py"
    assert (sandbox.workspace / "pkg/new/mod.py").read_text() == "x = 1\ny = 2\n"
    await call("write_file", path="pkg/new/mod.py", content="é")
    assert (sandbox.workspace / "pkg/new/mod.py").read_bytes() == "é".encode()


async def test_write_file_onto_a_directory_fails(call: CallTool) -> None:
    outcome = await call("write_file", path="src", content="x")
    assert not outcome.ok
    assert "is a directory" in outcome.text


async def test_edit_file_replaces_a_unique_occurrence(call: CallTool, sandbox: Sandbox) -> None:
    target = sandbox.workspace / "src/app/main.py"
    target.chmod(0o750)
    outcome = await call(
        "edit_file", path="src/app/main.py", old="    return a - b\n", new="    c = a - b\n    return c\n"
    )
    assert outcome.ok, outcome.text
    assert outcome.text.startswith("edited src/app/main.py: lines 6-6 are now lines 6-7\n")
    assert "     7\t    return c" in outcome.text
    assert target.read_text().endswith("def sub(a, b):\n    c = a - b\n    return c\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


async def test_edit_file_can_delete_text(call: CallTool, sandbox: Sandbox) -> None:
    outcome = await call("edit_file", path="src/app/main.py", old="\n\ndef sub(a, b):\n    return a - b\n", new="")
    assert outcome.text == "edited src/app/main.py: removed lines 3-6"
    assert (sandbox.workspace / "src/app/main.py").read_text() == "def add(a, b):\n    return a + b\n"


async def test_edit_file_keeps_bytes_that_are_not_utf8(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file("latin1.txt", b"caf\xe9\nold\n")
    outcome = await call("edit_file", path="latin1.txt", old="old", new="new")
    assert outcome.ok
    assert await sandbox.read_file("latin1.txt") == b"caf\xe9\nnew\n"


async def test_edit_file_reports_a_missing_match(call: CallTool) -> None:
    outcome = await call("edit_file", path="src/app/main.py", old="return a * b", new="x")
    assert not outcome.ok
    assert outcome.error == "ToolError"
    assert "not found in src/app/main.py" in outcome.text
    assert "whitespace" not in outcome.text


async def test_edit_file_hints_at_whitespace_differences(call: CallTool) -> None:
    outcome = await call("edit_file", path="src/app/main.py", old="def add(a, b):\n  return a + b", new="x")
    assert not outcome.ok
    assert "not found" in outcome.text
    assert "match if whitespace is ignored" in outcome.text


async def test_edit_file_refuses_an_ambiguous_match(call: CallTool) -> None:
    outcome = await call("edit_file", path="src/app/main.py", old="(a, b):", new="(x, y):")
    assert not outcome.ok
    assert "found 2 times" in outcome.text
    assert "lines 1, 5" in outcome.text
    assert "include more surrounding lines" in outcome.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": "README.md", "old": "", "new": "x"}, "old is empty"),
        ({"path": "README.md", "old": "demo", "new": "demo"}, "identical"),
        ({"path": "image.png", "old": "PNG", "new": "GIF"}, "binary file"),
        ({"path": "nope.txt", "old": "a", "new": "b"}, "no such file"),
    ],
)
async def test_edit_file_argument_errors(call: CallTool, args: dict[str, str], message: str) -> None:
    outcome = await call("edit_file", **args)
    assert not outcome.ok
    assert message in outcome.text


# -- glob / grep -------------------------------------------------------------------------------


async def test_glob_lists_matching_files(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file(".corral/outputs/x.py", b"")
    outcome = await call("glob", pattern="**/*.py")
    assert outcome.text == "src/app/main.py\nsrc/app/util.py"
    assert (await call("glob", pattern="*.py", path="src/app")).text == "src/app/main.py\nsrc/app/util.py"
    assert (await call("glob", pattern="*.rs")).text == "no files match '*.rs' under ."


async def test_glob_caps_its_output_and_counts_the_rest(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.exec(
        f"mkdir many && cd many && for i in $(seq 1 {GLOB_LIMIT + 25}); do : > f$i.txt; done", timeout=30
    )
    lines = (await call("glob", pattern="many/*.txt")).text.splitlines()
    assert len(lines) == GLOB_LIMIT + 1
    assert lines[-1].startswith("[... and 25 more files")


async def test_glob_on_a_missing_directory_fails(call: CallTool) -> None:
    outcome = await call("glob", pattern="*", path="nope")
    assert not outcome.ok
    assert "no such file or directory" in outcome.text


async def test_grep_prints_file_line_and_text(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file(".corral/outputs/hit.txt", b"return a\n")
    outcome = await call("grep", pattern=r"return a [+-]")
    assert outcome.text == "src/app/main.py:2:     return a + b\nsrc/app/main.py:6:     return a - b"


async def test_grep_skips_binaries_and_git(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file(".git/config", b"PNG\n")
    outcome = await call("grep", pattern="PNG")
    assert outcome.text == "no matches for 'PNG' in ."


async def test_grep_filters_by_glob_and_path(call: CallTool) -> None:
    assert (await call("grep", pattern="VALUE|demo", glob="*.py")).text == "src/app/util.py:1: VALUE = 1"
    assert (await call("grep", pattern="demo", path="README.md")).text.startswith("README.md:1: # demo")
    assert (await call("grep", pattern="def", path="src", glob="util.py")).text.startswith("no matches")


async def test_grep_rejects_an_invalid_regex(call: CallTool) -> None:
    outcome = await call("grep", pattern="(unclosed")
    assert not outcome.ok
    assert outcome.error == "ToolError"
    assert "invalid regular expression" in outcome.text


async def test_grep_caps_matches_and_counts_the_rest(call: CallTool, sandbox: Sandbox) -> None:
    await sandbox.write_file("many.txt", b"hit\n" * (GREP_MATCH_LIMIT + 7))
    lines = (await call("grep", pattern="hit", path="many.txt")).text.splitlines()
    assert len(lines) == GREP_MATCH_LIMIT + 1
    assert lines[-1].startswith("[... and 7 more matches")


# -- execute / diff ----------------------------------------------------------------------------


async def test_execute_reports_exit_code_and_both_streams(call: CallTool) -> None:
    outcome = await call("execute", command="echo out; echo err >&2; exit 3")
    assert outcome.ok  # a failing command is a normal result
    assert outcome.text == "exit code: 3\n--- stdout ---\nout\n--- stderr ---\nerr"


async def test_execute_timeout_is_capped_by_the_context(ctx: ToolContext) -> None:
    ctx.exec_timeout = 0.3
    outcome = await run_tool(BUILTIN_TOOLS["execute"], ctx, {"command": "sleep 20", "timeout": 100})
    assert outcome.ok
    assert outcome.duration_ms < 3000
    assert "exit code: none (killed)" in outcome.text
    assert "[timed out after 0.3s" in outcome.text


async def test_execute_shows_head_and_tail_of_long_output_and_where_the_whole_of_it_is(
    call: CallTool, ctx: ToolContext, sandbox: Sandbox
) -> None:
    # Like `pytest -v` on a big suite: far more output than the model may see, the summary at the end.
    outcome = await call("execute", command="seq 1 100000; echo '== 3 failed, 997 passed ==' >&2; echo done")
    assert (outcome.ok, outcome.exit_code) == (True, 0)
    assert outcome.spilled_to == ".corral/output/1.log"  # journaled; within the limit, run_tool saves no more
    assert len(outcome.text) <= ctx.output_limit
    header, rest = outcome.text.split("\n--- stdout ---\n")
    assert header == "exit code: 0"
    stdout, rest = rest.split("\n--- stderr ---\n")
    stderr, note = rest.split("\n")
    assert stdout.startswith("1\n2\n3\n")
    assert stdout.endswith("\n99999\n100000\ndone")
    assert re.search(
        r"\n\[\.\.\. [\d,]+ bytes \([\d,]+ lines\) of stdout left out; the whole output is in "
        r"\.corral/output/1\.log \.\.\.\]\n",
        stdout,
    )
    assert stderr == "== 3 failed, 997 passed =="
    total = len("".join(f"{n}\n" for n in range(1, 100_001))) + len("done\n") + len("== 3 failed, 997 passed ==\n")
    assert note == (
        f"[whole output ({total:,} bytes, stdout and stderr as they came) saved to .corral/output/1.log; "
        "read it with read_file (line ranges) or grep]"
    )
    # The model can page through it and search it with its own tools.
    lines = await call("read_file", path=".corral/output/1.log", start_line=50_000, end_line=50_001)
    assert lines.text == " 50000\t50000\n 50001\t50001\n[lines 50000-50001 of 100002]"
    # Where the stderr line lands among stdout's last lines depends on when each pipe was read.
    found = (await call("grep", pattern="failed", path=".corral/output/1.log")).text
    assert re.fullmatch(r"\.corral/output/1\.log:\d+: == 3 failed, 997 passed ==", found)
    assert (await call("grep", pattern="^77777$", path=".corral/output")).text == ".corral/output/1.log:77777: 77777"


async def test_execute_says_when_only_part_of_the_output_was_saved(ctx: ToolContext, sandbox: Sandbox) -> None:
    sandbox.exec = functools.partial(sandbox.exec, spill_limit=10_000)  # type: ignore[method-assign]
    outcome = await run_tool(BUILTIN_TOOLS["execute"], ctx, {"command": "seq 1 100000"})
    assert outcome.exit_code == 0
    assert outcome.text.endswith(
        "[output was 588,895 bytes; its first 10,000 bytes are saved to .corral/output/1.log; "
        "read it with read_file (line ranges) or grep]"
    )


async def test_execute_output_never_kills_the_command(ctx: ToolContext) -> None:
    ctx.exec_output_limit = 1000
    outcome = await run_tool(BUILTIN_TOOLS["execute"], ctx, {"command": "yes | head -c 1000000; echo done"})
    assert (outcome.ok, outcome.exit_code) == (True, 0)
    assert outcome.text.splitlines()[:3] == ["exit code: 0", "--- stdout ---", "y"]
    assert "y\ndone\n--- stderr ---\n(empty)\n[whole output (1,000,005 bytes" in outcome.text
    assert len(outcome.text) < 2000


async def test_execute_output_within_the_limit_mentions_no_file(call: CallTool, sandbox: Sandbox) -> None:
    outcome = await call("execute", command="seq 1 1000")
    assert outcome.text.endswith("999\n1000\n--- stderr ---\n(empty)")
    assert not (sandbox.workspace / ".corral").exists()


async def test_grep_searches_a_named_file_beyond_the_directory_walk_size_cap(call: CallTool, sandbox: Sandbox) -> None:
    big = b"filler line\n" * (GREP_MAX_FILE_BYTES // 12 + 1000) + b"needle\n"
    await sandbox.write_file("big.log", big)
    assert (await call("grep", pattern="needle", path="big.log")).text.startswith("big.log:")
    walked = (await call("grep", pattern="needle")).text
    assert walked.startswith("no matches") and "[skipped 1 files over" in walked


async def test_execute_rejects_a_non_positive_timeout(call: CallTool) -> None:
    outcome = await call("execute", command="true", timeout=0)
    assert not outcome.ok
    assert "timeout" in outcome.text


async def test_diff_reports_no_changes_then_the_patch(call: CallTool) -> None:
    assert (await call("diff")).text == "no changes"
    await call("edit_file", path="src/app/util.py", old="VALUE = 1", new="VALUE = 2")
    patch = (await call("diff")).text
    assert "diff --git a/src/app/util.py b/src/app/util.py" in patch
    assert "-VALUE = 1\n+VALUE = 2" in patch


# -- confinement -------------------------------------------------------------------------------


def plant_escapes(ws: Path, outside: Path) -> None:
    (ws / "secret-link").symlink_to(outside / "secret.txt")
    (ws / "out-dir").symlink_to(outside, target_is_directory=True)
    (ws / "dangling").symlink_to(outside / "planted.txt")


ESCAPE_PATHS = {
    "dotdot": "../outside/secret.txt",
    "absolute": "{outside}/secret.txt",
    "symlink-to-file": "secret-link",
    "symlink-dir-component": "out-dir/secret.txt",
    "dangling-symlink-out": "dangling",
}

PATH_TOOL_CALLS = {
    "read_file": lambda p: {"path": p},
    "write_file": lambda p: {"path": p, "content": "pwned"},
    "edit_file": lambda p: {"path": p, "old": "host", "new": "pwned"},
    "glob": lambda p: {"pattern": "*", "path": p},
    "grep": lambda p: {"pattern": "secret", "path": p},
}


@pytest.mark.parametrize("kind", ESCAPE_PATHS)
@pytest.mark.parametrize("tool_name", PATH_TOOL_CALLS)
async def test_path_tools_never_leave_the_workspace(
    call: CallTool,
    sandbox: Sandbox,
    outside: Path,
    tree_digest: Callable[[Path], str],
    tool_name: str,
    kind: str,
) -> None:
    plant_escapes(sandbox.workspace, outside)
    path = ESCAPE_PATHS[kind].format(outside=outside)
    if kind == "dotdot":
        # Make "../outside" from the workspace land on the real outside directory.
        (sandbox.workspace.parent / "outside").symlink_to(outside, target_is_directory=True)
    if tool_name in ("glob", "grep") and kind != "dangling-symlink-out":
        path = str(Path(path).parent) if kind != "symlink-to-file" else path
    before = tree_digest(outside)
    outcome = await call(tool_name, **PATH_TOOL_CALLS[tool_name](path))
    assert not outcome.ok, outcome.text
    assert outcome.error == "PathEscapeError"
    assert "outside the workspace" in outcome.text
    assert "host secret" not in outcome.text
    assert tree_digest(outside) == before
    assert not (outside / "planted.txt").exists()


async def test_grep_over_the_workspace_skips_symlinks_leading_out(
    call: CallTool, sandbox: Sandbox, outside: Path
) -> None:
    plant_escapes(sandbox.workspace, outside)
    outcome = await call("grep", pattern="host secret")
    assert outcome.ok
    assert outcome.text.startswith("no matches")
