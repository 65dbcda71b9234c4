"""The sandbox contract: every backend in conftest.BACKENDS must pass these tests unchanged."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import secrets
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from corral.errors import PathEscapeError, SandboxError
from corral.sandbox import Sandbox, SandboxBackend, SandboxRequest, mark_run_ended, run_ended
from corral.sandbox.base import OUTPUT_LIMIT
from tests.sandbox.host import processes_with

pytestmark = pytest.mark.anyio

both_repo_kinds = pytest.mark.parametrize("repo", ["plain-dir", "git-repo"], indirect=True)

MakeSandbox = Callable[..., Awaitable[Sandbox]]
Digest = Callable[[Path], str]


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


# -- creation ----------------------------------------------------------------------------------


@both_repo_kinds
async def test_workspace_is_a_copy_with_symlinks_modes_and_binaries(sandbox: Sandbox, repo: Path) -> None:
    ws = sandbox.workspace
    assert ws.is_dir()
    assert ws != repo
    assert (ws / "src/pkg/data/deep.txt").read_text() == "deep\n"
    assert os.readlink(ws / "readme-link") == "README.md"
    assert (ws / "pkg-link").is_symlink()
    assert stat.S_IMODE((ws / "run.sh").stat().st_mode) == 0o755
    assert (ws / "blob.bin").read_bytes() == (repo / "blob.bin").read_bytes()
    assert (ws / ".git").is_dir() == (repo / ".git").is_dir()


@pytest.mark.parametrize("repo", ["git-repo"], indirect=True)
async def test_workspace_keeps_the_repos_own_git_usable(sandbox: Sandbox) -> None:
    result = await sandbox.exec("git status --porcelain && git log --format=%s", timeout=30)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "initial"


@both_repo_kinds
async def test_original_repo_is_never_modified(make_sandbox: MakeSandbox, repo: Path, tree_digest: Digest) -> None:
    before = tree_digest(repo)
    sandbox = await make_sandbox()
    await sandbox.write_file("README.md", b"changed\n")
    await sandbox.write_file("src/new.txt", b"new\n")
    await sandbox.exec("rm -rf src run.sh; chmod 600 blob.bin; git init -q . 2>/dev/null; true", timeout=30)
    await sandbox.diff()
    await sandbox.destroy()
    assert tree_digest(repo) == before


async def test_create_again_in_the_same_run_dir_starts_fresh(
    backend: SandboxBackend, repo: Path, tmp_path: Path
) -> None:
    # Creation is a durable step that may run twice; a second create replaces the leftovers.
    request = SandboxRequest(repo=repo, run_dir=tmp_path / "run")
    first = await backend.create(request)
    await first.write_file("half-done.txt", b"from the first attempt")
    second = await backend.create(request)
    try:
        assert second.workspace == first.workspace
        assert not (second.workspace / "half-done.txt").exists()
        assert await second.diff() == ""
    finally:
        await second.destroy()


async def test_create_rejects_a_missing_repo(backend: SandboxBackend, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not a directory"):
        await backend.create(SandboxRequest(repo=tmp_path / "nope", run_dir=tmp_path / "run"))


# -- exec --------------------------------------------------------------------------------------


async def test_exec_reports_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    result = await sandbox.exec("echo out; echo err >&2; exit 7", timeout=10)
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert (result.timed_out, result.truncated) == (False, False)
    assert result.duration_ms > 0


async def test_exec_runs_in_the_workspace_root(sandbox: Sandbox) -> None:
    result = await sandbox.exec("./run.sh && cat src/pkg/data/deep.txt", timeout=10)
    assert result.stdout == "running\ndeep\n"


async def test_exec_takes_an_argv_without_a_shell(sandbox: Sandbox) -> None:
    result = await sandbox.exec(["printf", "%s|", "a b", "$HOME"], timeout=10)
    assert result.stdout == "a b|$HOME|"


async def test_exec_stdin_is_empty(sandbox: Sandbox) -> None:
    result = await sandbox.exec("cat; echo done", timeout=5)
    assert result.stdout == "done\n"


async def test_exec_decodes_invalid_utf8_with_replacement(sandbox: Sandbox) -> None:
    result = await sandbox.exec(r"printf 'ok \377\n'", timeout=5)
    assert result.stdout == "ok \ufffd\n"


async def test_exec_does_not_see_the_host_environment(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOST_ONLY", "host-value")
    sandbox = await make_sandbox(env={"GREETING": "hello"})
    result = await sandbox.exec('echo "${CORRAL_HOST_ONLY:-unset} $GREETING"; env', timeout=10)
    first, *env_lines = result.stdout.splitlines()
    assert first == "unset hello"
    names = {line.split("=", 1)[0] for line in env_lines if "=" in line}
    assert {"PATH", "HOME", "LANG", "GREETING"} <= names
    assert "CORRAL_HOST_ONLY" not in names


async def test_exec_env_argument_adds_to_the_request_env(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox(env={"A": "from-request", "B": "kept"})
    result = await sandbox.exec('echo "$A $B $C"', timeout=10, env={"A": "from-call", "C": "new"})
    assert result.stdout == "from-call kept new\n"


@pytest.mark.slow  # waits out a timeout on each backend
async def test_timeout_kills_the_whole_process_tree(sandbox: Sandbox) -> None:
    token = f"61.{secrets.randbelow(10**6):06d}"
    # The shell starts a child shell, which starts a grandchild sleep; all share the exec's group.
    command = f"sh -c 'sleep {token}; echo never' & wait"
    started = time.monotonic()
    task = asyncio.create_task(sandbox.exec(command, timeout=0.5))
    assert await wait_until(lambda: len(processes_with(token)) >= 3), "tree did not start"
    result = await asyncio.wait_for(task, 10)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code is None
    assert elapsed < 1.5
    assert await wait_until(lambda: not processes_with(token), within=2.0), processes_with(token)


async def test_exec_returns_when_the_command_exits_and_kills_what_it_left_running(sandbox: Sandbox) -> None:
    token = f"62.{secrets.randbelow(10**6):06d}"
    started = time.monotonic()
    result = await sandbox.exec(f"sleep {token} & echo started", timeout=20)
    assert (result.exit_code, result.stdout) == (0, "started\n")
    assert time.monotonic() - started < 3
    assert await wait_until(lambda: not processes_with(token), within=2.0)


async def test_cancelling_an_exec_at_any_point_of_its_start_leaves_no_process(sandbox: Sandbox) -> None:
    # The shell forks its sleep: cancelled between the fork and the hand-over of the process,
    # asyncio alone would kill the shell and leave the sleep running.
    token = f"63.{secrets.randbelow(10**6):06d}"
    for ticks in range(12):
        task = asyncio.create_task(sandbox.exec(f"sleep {token}; echo never", timeout=60))
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_until(lambda: not processes_with(token), within=5.0), (ticks, processes_with(token))


def numbers(first: int, last: int) -> bytes:
    """What ``seq first last`` prints."""
    return "".join(f"{n}\n" for n in range(first, last + 1)).encode()


MARKER = re.compile(r"\[\.\.\. ([\d,]+) bytes \(([\d,]+) lines\) of (stdout|stderr) left out; (.*) \.\.\.\]\n")


def split_at_marker(text: str) -> tuple[str, re.Match[str], str]:
    """Head, marker and tail of a stream that was cut."""
    [marker] = list(MARKER.finditer(text))
    return text[: marker.start()], marker, text[marker.end() :]


async def test_output_over_the_limit_never_kills_the_command(sandbox: Sandbox) -> None:
    # 3 MB, then one more line: the command must run to its end and exit on its own.
    result = await sandbox.exec("seq 1 430000; echo done", timeout=60)
    whole = numbers(1, 430_000) + b"done\n"
    assert (result.exit_code, result.timed_out, result.truncated) == (0, False, True)
    assert (result.stdout_bytes, result.stderr_bytes, result.stderr) == (len(whole), 0, "")
    head, marker, tail = split_at_marker(result.stdout)
    assert len(head) + len(tail) <= OUTPUT_LIMIT
    assert len(head) > OUTPUT_LIMIT // 4 and len(tail) > OUTPUT_LIMIT // 4
    # Whole lines at both ends, and the marker counts exactly what is missing between them.
    assert whole.startswith(head.encode()) and head.endswith("\n")
    assert whole.endswith(tail.encode()) and whole[-len(tail) - 1 : -len(tail)] == b"\n"
    assert tail.endswith("429999\n430000\ndone\n")
    left_out = whole[len(head) : -len(tail)]
    assert int(marker[1].replace(",", "")) == len(left_out)
    assert int(marker[2].replace(",", "")) == left_out.count(b"\n")
    assert result.output_path is not None and result.output_path.startswith(".corral/output/")
    assert marker[4] == f"the whole output is in {result.output_path}"
    assert result.saved_bytes == len(whole)
    assert (sandbox.workspace / result.output_path).read_bytes() == whole
    # The sandbox's own commands can read the file, and delete it.
    again = await sandbox.exec(f"wc -c < {result.output_path} && rm {result.output_path}", timeout=30)
    assert (again.exit_code, again.stdout.strip()) == (0, str(len(whole))), again
    assert not (sandbox.workspace / result.output_path).exists()


async def test_on_stdout_sees_all_of_stdout_as_it_comes_whatever_is_kept(sandbox: Sandbox) -> None:
    seen: list[bytes] = []
    result = await sandbox.exec("seq 1 430000; echo oops >&2", timeout=60, on_stdout=seen.append, spill_limit=0)
    assert result.truncated and len(seen) > 1  # chunks as they arrived; far more than what was kept
    assert b"".join(seen) == numbers(1, 430_000)  # stdout only, whole, in order


async def test_an_on_stdout_that_raises_is_raised_once_the_command_has_ended(sandbox: Sandbox) -> None:
    calls: list[bytes] = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise OSError("the journal cannot be written")

    with pytest.raises(OSError, match="the journal cannot be written"):
        await sandbox.exec("echo one; sleep 0.2; echo two; echo done > finished", timeout=30, on_stdout=broken)
    assert len(calls) == 1  # not called again
    assert (await sandbox.read_file("finished")) == b"done\n"  # the command ran to its end


async def test_output_within_the_limit_is_whole_and_saves_no_file(sandbox: Sandbox) -> None:
    result = await sandbox.exec("head -c 50000 /dev/zero | tr '\\0' y; echo err >&2", timeout=10)
    assert (result.truncated, result.exit_code) == (False, 0)
    assert (result.stdout, result.stderr) == ("y" * 50_000, "err\n")
    assert (result.stdout_bytes, result.stderr_bytes) == (50_000, 4)
    assert (result.output_path, result.saved_bytes) == (None, 0)
    assert not (sandbox.workspace / ".corral").exists()


async def test_stderr_over_the_limit_is_cut_alone_and_the_file_holds_both_streams(sandbox: Sandbox) -> None:
    result = await sandbox.exec("seq 1 30000 >&2; echo out", timeout=30, output_limit=10_000)
    assert (result.exit_code, result.truncated, result.stdout) == (0, True, "out\n")
    head, marker, tail = split_at_marker(result.stderr)
    assert marker[3] == "stderr"
    assert head.startswith("1\n2\n3\n") and tail.endswith("29999\n30000\n")
    assert len(head) + len(tail) <= 10_000
    assert result.output_path is not None
    saved = (sandbox.workspace / result.output_path).read_bytes()
    assert result.saved_bytes == len(saved) == result.stdout_bytes + result.stderr_bytes
    # The two pipes are read as data arrives, so where "out" lands among the last lines may vary.
    assert sorted(saved.splitlines()) == sorted([b"out", *numbers(1, 30_000).splitlines()])


async def test_the_output_file_interleaves_the_streams_line_by_line(sandbox: Sandbox) -> None:
    # Every line is written in two pieces; the file must still hold whole lines of one stream each.
    command = "for i in $(seq 1 3000); do printf o$i; printf e$i >&2; echo; echo >&2; done"
    result = await sandbox.exec(command, timeout=60, output_limit=1000)
    assert (result.exit_code, result.truncated) == (0, True)
    assert result.output_path is not None
    lines = (sandbox.workspace / result.output_path).read_text().splitlines()
    assert [line for line in lines if line.startswith("o")] == [f"o{i}" for i in range(1, 3001)]
    assert [line for line in lines if line.startswith("e")] == [f"e{i}" for i in range(1, 3001)]
    assert len(lines) == 6000


async def test_the_output_file_stops_at_the_spill_limit_and_says_so(sandbox: Sandbox) -> None:
    result = await sandbox.exec("yes | head -c 3000000; echo done", timeout=60, output_limit=1000, spill_limit=100_000)
    assert (result.exit_code, result.stdout_bytes, result.saved_bytes) == (0, 3_000_005, 100_000)
    _head, marker, tail = split_at_marker(result.stdout)
    assert tail.endswith("y\ny\ndone\n")
    assert marker[4] == (
        f"only the first 100,000 bytes of the output are in {result.output_path} "
        "(it stops at the 100,000-byte spill limit)"
    )
    assert result.output_path is not None
    saved = (sandbox.workspace / result.output_path).read_bytes()
    assert saved.startswith(b"y\n" * 50_000)
    assert saved[100_000:] == (
        b"\n[corral: 2,900,005 more bytes of output are not in this file: it stops at the 100,000-byte spill limit]\n"
    )


@pytest.mark.slow  # floods for its whole timeout on each backend
async def test_a_flooding_command_runs_until_its_timeout(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = await sandbox.exec("yes", timeout=0.5, output_limit=1000, spill_limit=1_000_000)
    assert time.monotonic() - started < 5
    assert (result.timed_out, result.exit_code, result.truncated) == (True, None, True)
    assert result.stdout_bytes > 1_000_000 and result.saved_bytes == 1_000_000
    assert len(result.stdout) < 1300
    assert result.output_path is not None
    assert (sandbox.workspace / result.output_path).stat().st_size < 1_000_200


async def test_a_spill_limit_of_zero_saves_no_file(sandbox: Sandbox) -> None:
    result = await sandbox.exec("seq 1 10000", timeout=30, output_limit=1000, spill_limit=0)
    assert (result.exit_code, result.truncated, result.output_path) == (0, True, None)
    assert "left out; saving it is off (spill limit 0) ...]" in result.stdout
    assert not (sandbox.workspace / ".corral").exists()


async def test_output_files_are_numbered_and_never_overwritten_after_attach(
    sandbox: Sandbox, backend: SandboxBackend
) -> None:
    first = await sandbox.exec("seq 1 1000", timeout=30, output_limit=100)
    second = await sandbox.exec("seq 1 2000", timeout=30, output_limit=100)
    assert (first.output_path, second.output_path) == (".corral/output/1.log", ".corral/output/2.log")
    attached = await backend.attach(sandbox.state())
    third = await attached.exec("seq 1 3000", timeout=30, output_limit=100)
    assert third.output_path == ".corral/output/3.log"
    for n, result in enumerate((first, second, third), start=1):
        assert (sandbox.workspace / f".corral/output/{n}.log").read_bytes() == numbers(1, n * 1000), result


async def test_a_command_cannot_read_its_own_output_file_while_it_runs(sandbox: Sandbox) -> None:
    # Otherwise `grep -r x .` in the workspace could feed on its own output until the spill limit.
    if (await sandbox.exec("id -u", timeout=10)).stdout.strip() == "0":
        pytest.skip("commands run as the host's root here, whom file modes do not stop")
    command = "seq 1 100000; cat .corral/output/1.log >/dev/null 2>&1 && echo READ || echo REFUSED"
    result = await sandbox.exec(command, timeout=30, output_limit=1000)
    assert result.stdout.endswith("REFUSED\n"), result.stdout[-200:]
    assert (sandbox.workspace / ".corral/output/1.log").read_bytes().endswith(b"100000\nREFUSED\n")


SPILL_ATTACKS = {
    "output-dir-to-outside": "mkdir -p .corral && ln -s {outside} .corral/output",
    "scratch-dir-to-etc": "ln -s /etc .corral",
    "scratch-dir-to-outside": "ln -s {outside} .corral",
    "output-dir-into-the-workspace": "mkdir -p .corral && ln -s ../src .corral/output",
    "output-dir-is-a-file": "mkdir -p .corral && echo planted > .corral/output",
}


@pytest.mark.parametrize("attack", SPILL_ATTACKS)
async def test_a_planted_symlink_never_redirects_the_output_file(
    sandbox: Sandbox, outside: Path, tree_digest: Digest, attack: str
) -> None:
    planted = await sandbox.exec(SPILL_ATTACKS[attack].format(outside=outside), timeout=10)
    assert planted.exit_code == 0, planted
    before, etc_before = tree_digest(outside), sorted(os.listdir("/etc"))
    src_before = sorted(p.name for p in (sandbox.workspace / "src").iterdir())
    result = await sandbox.exec("seq 1 100000; echo done", timeout=30, output_limit=1000)
    assert (result.exit_code, result.truncated, result.output_path, result.saved_bytes) == (0, True, None, 0)
    assert "left out; it could not be saved: " in result.stdout
    assert result.stdout.endswith("done\n")
    assert tree_digest(outside) == before
    assert sorted(os.listdir("/etc")) == etc_before
    assert sorted(p.name for p in (sandbox.workspace / "src").iterdir()) == src_before


async def test_a_planted_output_file_symlink_is_skipped_not_followed(
    sandbox: Sandbox, outside: Path, tree_digest: Digest
) -> None:
    plant = f"mkdir -p .corral/output && ln -s {outside}/secret.txt .corral/output/1.log"
    assert (await sandbox.exec(plant, timeout=10)).exit_code == 0
    before = tree_digest(outside)
    result = await sandbox.exec("seq 1 100000", timeout=30, output_limit=1000)
    assert result.output_path == ".corral/output/2.log"
    assert (sandbox.workspace / result.output_path).read_bytes() == numbers(1, 100_000)
    assert tree_digest(outside) == before
    assert (outside / "secret.txt").read_text() == "host secret\n"


async def test_exec_cwd_is_workspace_relative(sandbox: Sandbox) -> None:
    result = await sandbox.exec("pwd -P", timeout=5, cwd="src/pkg")
    # The path a command sees may differ from the host's (bubblewrap: /workspace/...); resolve maps it back.
    assert result.stdout.strip().endswith("/src/pkg")
    assert sandbox.resolve(result.stdout.strip()) == sandbox.workspace / "src/pkg"


@pytest.mark.parametrize("cwd", ["..", "/tmp", "src/../..", "pkg-link/../../.."])
async def test_exec_cwd_cannot_leave_the_workspace(sandbox: Sandbox, cwd: str) -> None:
    with pytest.raises(PathEscapeError):
        await sandbox.exec("pwd", timeout=5, cwd=cwd)


async def test_exec_cwd_must_be_an_existing_directory(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError):
        await sandbox.exec("pwd", timeout=5, cwd="missing")
    with pytest.raises(SandboxError):
        await sandbox.exec("pwd", timeout=5, cwd="README.md")


# -- files -------------------------------------------------------------------------------------


async def test_read_write_and_list_files(sandbox: Sandbox) -> None:
    assert await sandbox.read_file("src/pkg/mod.py") == b"def greet():\n    return 'hi'\n"
    await sandbox.write_file("new/dir/file.bin", b"\x00\x01")
    assert (sandbox.workspace / "new/dir/file.bin").read_bytes() == b"\x00\x01"
    await sandbox.write_file("README.md", b"replaced")
    assert await sandbox.read_file("README.md") == b"replaced"
    await sandbox.write_file(".corral/outputs/x.txt", b"scratch")
    files = await sandbox.list_files()
    assert files == sorted(files)
    assert {"README.md", "blob.bin", "new/dir/file.bin", "readme-link", "run.sh", "src/pkg/mod.py"} <= set(files)
    assert not any(f.startswith((".git/", ".corral/")) for f in files)
    assert not {"src", "pkg-link"} & set(files)  # directories (and dir symlinks) are not files


async def test_list_files_takes_a_directory_and_a_glob(sandbox: Sandbox) -> None:
    assert await sandbox.list_files("src", "**/*.txt") == ["src/pkg/data/deep.txt"]
    assert await sandbox.list_files(".", "*.md") == ["README.md"]
    assert await sandbox.list_files("src/pkg", "*") == ["src/pkg/mod.py"]
    with pytest.raises(SandboxError):
        await sandbox.list_files("README.md")


async def test_file_errors_are_sandbox_errors(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="no such file"):
        await sandbox.read_file("missing.txt")
    with pytest.raises(SandboxError, match="directory"):
        await sandbox.read_file("src")
    with pytest.raises(SandboxError, match="directory"):
        await sandbox.write_file("src", b"x")
    with pytest.raises(SandboxError, match="not a directory"):
        await sandbox.write_file("README.md/child", b"x")


async def test_resolve_maps_inside_paths_to_host_paths(sandbox: Sandbox) -> None:
    ws = sandbox.workspace
    assert sandbox.resolve(".") == ws
    assert sandbox.resolve("src/pkg/mod.py") == ws / "src/pkg/mod.py"
    assert sandbox.resolve(str(ws / "README.md")) == ws / "README.md"
    assert sandbox.resolve("readme-link") == ws / "README.md"
    assert sandbox.resolve("pkg-link/mod.py") == ws / "src/pkg/mod.py"
    assert sandbox.resolve("src/../README.md") == ws / "README.md"
    assert sandbox.resolve("not/yet/there.txt") == ws / "not/yet/there.txt"
    with pytest.raises(SandboxError):
        sandbox.resolve("not/yet/there.txt", must_exist=True)


def make_escapes(ws: Path, outside: Path) -> dict[str, str]:
    """Plant symlinks leading out of the workspace; return escape attempts by name."""
    (ws / "to-etc").symlink_to("/etc")
    (ws / "to-secret").symlink_to(outside / "secret.txt")
    (ws / "hop1").symlink_to("hop2")
    (ws / "hop2").symlink_to("src/hop3")
    (ws / "src" / "hop3").symlink_to("../../..")
    (ws / "dangling-out").symlink_to(outside / "created-through-symlink.txt")
    (ws / "src" / "out-dir").symlink_to(outside, target_is_directory=True)
    return {
        "dotdot": "../x",
        "deep-dotdot": "src/pkg/../../../x",
        "absolute": "/etc/passwd",
        "symlink-to-etc": "to-etc",
        "symlink-to-file": "to-secret",
        "symlink-chain": "hop1/etc/passwd",
        "dir-symlink-component": "src/out-dir/secret.txt",
        "dangling-symlink-out": "dangling-out",
    }


ESCAPES = [
    "dotdot",
    "deep-dotdot",
    "absolute",
    "symlink-to-etc",
    "symlink-to-file",
    "symlink-chain",
    "dir-symlink-component",
    "dangling-symlink-out",
]


@pytest.mark.parametrize("kind", ESCAPES)
async def test_resolve_rejects_paths_leading_out(sandbox: Sandbox, outside: Path, kind: str) -> None:
    path = make_escapes(sandbox.workspace, outside)[kind]
    with pytest.raises(PathEscapeError):
        sandbox.resolve(path)


@pytest.mark.parametrize("kind", ESCAPES)
async def test_file_operations_never_leave_the_workspace(
    sandbox: Sandbox, outside: Path, kind: str, tree_digest: Digest
) -> None:
    path = make_escapes(sandbox.workspace, outside)[kind]
    before = tree_digest(outside)
    with pytest.raises(PathEscapeError):
        await sandbox.read_file(path)
    with pytest.raises(PathEscapeError):
        await sandbox.write_file(path, b"pwned")
    with pytest.raises(PathEscapeError):
        await sandbox.list_files(path)
    assert tree_digest(outside) == before


# -- diff --------------------------------------------------------------------------------------


@both_repo_kinds
async def test_diff_is_empty_for_an_untouched_workspace(sandbox: Sandbox) -> None:
    assert await sandbox.diff() == ""


@both_repo_kinds
async def test_diff_shows_modifications_additions_deletions_and_modes(sandbox: Sandbox) -> None:
    await sandbox.write_file("README.md", b"# sample\nhello world\n")
    await sandbox.write_file("src/added.py", b"x = 1\n")
    await sandbox.write_file("added.bin", b"\x00\xffbinary")
    await sandbox.write_file(".corral/outputs/spill.txt", b"never in the diff")
    result = await sandbox.exec("rm src/pkg/data/deep.txt && chmod +x src/pkg/mod.py", timeout=10)
    assert result.exit_code == 0
    patch = await sandbox.diff()
    assert "diff --git a/README.md b/README.md" in patch
    assert "-hello\n+hello world\n" in patch
    assert "diff --git a/src/added.py b/src/added.py\nnew file mode 100644" in patch
    assert "+x = 1" in patch
    assert "diff --git a/src/pkg/data/deep.txt b/src/pkg/data/deep.txt\ndeleted file mode 100644" in patch
    assert "old mode 100644\nnew mode 100755" in patch
    assert "GIT binary patch" in patch
    assert ".corral" not in patch


@both_repo_kinds
async def test_diff_ignores_what_the_agent_does_to_git(sandbox: Sandbox) -> None:
    await sandbox.exec("rm -rf .git && git init -q && echo more >> README.md", timeout=30)
    patch = await sandbox.diff()
    assert "diff --git a/README.md b/README.md" in patch
    assert ".git/" not in patch


@both_repo_kinds
async def test_a_patch_applied_to_the_workspace_is_the_sandboxs_own_to_edit(sandbox: Sandbox) -> None:
    """A child run's patch merged into its parent's workspace (``apply_patch``): the parent's commands can
    edit what it made — new directories included — and a symlink it adds changes nothing on the host."""
    host_file = Path("/etc/hostname")
    before = os.stat(host_file)
    patch = (
        "diff --git a/new dir/new.txt b/new dir/new.txt\nnew file mode 100644\n--- /dev/null\n"
        "+++ b/new dir/new.txt\n@@ -0,0 +1 @@\n+hello\n"
        "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1,2 +1,3 @@\n"
        " # sample\n hello\n+merged\n"
        "diff --git a/host-link b/host-link\nnew file mode 120000\n--- /dev/null\n+++ b/host-link\n"
        "@@ -0,0 +1 @@\n+/etc/hostname\n\\ No newline at end of file\n"
    )
    report = await sandbox.apply_patch(patch)
    assert report.applies, report.problems
    assert (await sandbox.read_file("new dir/new.txt")) == b"hello\n"
    edit = "echo more >> 'new dir/new.txt' && echo y >> README.md && touch 'new dir/another' && rm host-link"
    result = await sandbox.exec(edit)
    assert result.exit_code == 0, result.stderr
    after = os.stat(host_file)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    again = await sandbox.apply_patch(patch)  # a conflict changes nothing and says why
    assert not again.applies and again.problems


async def test_diff_applies_to_the_original_repo(sandbox: Sandbox, repo: Path, tmp_path: Path) -> None:
    await sandbox.write_file("src/pkg/mod.py", b"def greet():\n    return 'hello'\n")
    await sandbox.write_file("docs/new.md", b"new\n")
    await sandbox.write_file("blob.bin", bytes(range(255, -1, -1)))
    await sandbox.exec("rm readme-link && ln -s src/pkg/mod.py mod-link && chmod 700 run.sh", timeout=10)
    patch = await sandbox.diff()
    copy = tmp_path / "apply-target"
    await asyncio.to_thread(subprocess.run, ["cp", "-a", str(repo), str(copy)], check=True, timeout=30)
    env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    applied = await asyncio.to_thread(
        subprocess.run,
        ["git", "apply", "--binary", "-"],
        cwd=copy,
        input=patch.encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert applied.returncode == 0, applied.stderr.decode()
    for rel in ("src/pkg/mod.py", "docs/new.md", "blob.bin"):
        assert (copy / rel).read_bytes() == (sandbox.workspace / rel).read_bytes()
    assert os.readlink(copy / "mod-link") == "src/pkg/mod.py"
    assert not (copy / "readme-link").exists()
    assert stat.S_IMODE((copy / "run.sh").stat().st_mode) == 0o755  # git records only the x bit


# -- lifecycle ---------------------------------------------------------------------------------


async def test_state_is_json_and_attach_reopens_the_sandbox(make_sandbox: MakeSandbox, backend: SandboxBackend) -> None:
    sandbox = await make_sandbox(env={"GREETING": "still here"})
    await sandbox.write_file("note.txt", b"persisted\n")
    state = json.loads(json.dumps(sandbox.state()))
    assert "still here" not in json.dumps(state)  # state is recorded; the environment may hold secrets
    workspace = sandbox.workspace
    del sandbox
    gc.collect()
    attached = await backend.attach({**state, "env": {"GREETING": "still here"}})
    assert attached.workspace == workspace
    assert await attached.read_file("note.txt") == b"persisted\n"
    result = await attached.exec('echo "$GREETING"', timeout=10)
    assert result.stdout == "still here\n"
    assert "+persisted" in await attached.diff()


async def test_attach_fails_when_the_sandbox_is_gone(make_sandbox: MakeSandbox, backend: SandboxBackend) -> None:
    sandbox = await make_sandbox()
    state = sandbox.state()
    await sandbox.destroy()
    with pytest.raises(SandboxError, match="gone"):
        await backend.attach(state)
    with pytest.raises(SandboxError):
        await backend.attach({"backend": backend.name})


async def test_attach_refuses_the_sandbox_of_an_ended_run(
    make_sandbox: MakeSandbox, backend: SandboxBackend, tmp_path: Path
) -> None:
    sandbox = await make_sandbox()
    state = sandbox.state()
    assert not run_ended(sandbox.run_dir)
    mark_run_ended(sandbox.run_dir)
    mark_run_ended(sandbox.run_dir)
    assert run_ended(sandbox.run_dir)
    with pytest.raises(SandboxError, match="has ended"):  # a sweep may be removing it
        await backend.attach(state)
    mark_run_ended(tmp_path / "never-made")  # nothing to mark: no error, nothing created
    assert not (tmp_path / "never-made").exists()


async def test_destroy_is_idempotent_and_removes_everything(make_sandbox: MakeSandbox) -> None:
    sandbox = await make_sandbox()
    workspace = sandbox.workspace
    await sandbox.exec("chmod -R a-w src", timeout=10)  # read-only parts must not stop removal
    await sandbox.destroy()
    await sandbox.destroy()
    assert not workspace.exists()
    assert not any(workspace.parent.iterdir()), list(workspace.parent.iterdir())
    with pytest.raises(SandboxError, match="destroyed"):
        await sandbox.exec("true", timeout=5)


async def test_destroy_kills_commands_still_running(sandbox: Sandbox) -> None:
    token = f"63.{secrets.randbelow(10**6):06d}"
    task = asyncio.create_task(sandbox.exec(f"sleep {token}", timeout=30))
    assert await wait_until(lambda: bool(processes_with(token)))
    await sandbox.destroy()
    result = await asyncio.wait_for(task, 5)
    assert result.exit_code is None
    assert not processes_with(token)


async def test_concurrent_sandboxes_do_not_share_workspaces(make_sandbox: MakeSandbox) -> None:
    sandboxes = await asyncio.gather(*(make_sandbox(name=f"c{i}") for i in range(4)))
    assert len({sandbox.workspace for sandbox in sandboxes}) == 4
    await asyncio.gather(*(sandbox.exec(f"echo {i} > mine.txt", timeout=10) for i, sandbox in enumerate(sandboxes)))
    for i, sandbox in enumerate(sandboxes):
        assert await sandbox.read_file("mine.txt") == f"{i}\n".encode()
        assert f"+{i}" in await sandbox.diff()
