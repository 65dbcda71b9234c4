"""Every example in README.md and docs/*.md works as written.

TOML and JSON parse; a TOML agent spec loads as `corral run` loads it, and a TOML model script as
the scripted model loads it; Python compiles; shell (``bash``, ``sh``, the commands of ``console``)
passes ``bash -n``; and the blocks marked ``<!-- run ... -->`` run, offline. One test per block, its
id the page and line of the block's fence. The markers are described in tests/docs/examples.py.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import corral
from corral.models.scripted import load_script
from corral.spec import load_config
from tests.docs.examples import Block, Run, all_blocks, console_commands, read_blocks
from tests.sandbox.conftest import skip_unless_bubblewrap_runs

BLOCKS = all_blocks()
SHELLS = {"bash", "sh", "console"}
BASH = ["bash", "-e", "-o", "pipefail"]  # a failing command fails the example
#: Languages shown but not checked: output, diagrams, diffs.
UNCHECKED = {"", "text", "diff"}


def blocks(*langs: str) -> list[object]:
    """The blocks in ``langs`` as pytest parameters; shell checks start a process, so they are slow."""
    return [
        pytest.param(block, id=block.id, marks=[pytest.mark.slow] if block.lang in SHELLS else [])
        for block in BLOCKS
        if block.lang in langs
    ]


def test_every_block_is_in_a_language_this_test_knows() -> None:
    checked = {"toml", "json", "python", *SHELLS}
    assert [(block.id, block.lang) for block in BLOCKS if block.lang not in checked | UNCHECKED] == []
    assert any(block.run for block in BLOCKS)


def test_markers_say_how_a_block_is_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- file: s.toml -->\n```toml\na = 1\n```\n\n"
        "<!-- fragment -->\n```python\ndef f() -> int\n```\n\n"
        '<!-- run server needs=bubblewrap after="corral demo" -->\n```bash\ncorral model serve s.toml\n```\n'
    )
    saved, fragment, served = read_blocks(page)
    assert (saved.saved_as, saved.text, saved.line) == ("s.toml", "a = 1\n", 2)
    assert fragment.fragment and fragment.run is None
    assert served.run == Run(server=True, needs_bubblewrap=True, after="corral demo")
    assert served.files == {"s.toml": "a = 1\n"}
    page.write_text("<!-- fragmnet -->\n```toml\na = 1\n```\n")
    with pytest.raises(ValueError, match="unknown marker <!-- fragmnet -->"):
        read_blocks(page)


def test_console_blocks_are_checked_by_their_commands() -> None:
    text = "$ corral sandbox prune\nremoved portal /run/x\n$ echo a \\\n  b\nout (put\n"
    assert console_commands(text) == "corral sandbox prune\necho a \\\n  b\n"


@pytest.mark.parametrize("block", blocks("toml", "json"))
def test_data_example_parses(block: Block, tmp_path: Path) -> None:
    data = json.loads(block.text) if block.lang == "json" else tomllib.loads(block.text)
    if block.fragment or not isinstance(data, dict):
        return
    if block.lang == "toml" and "agents" in data:  # an agent spec: load it as `corral run` would
        path = tmp_path / "corral.toml"
        path.write_text(block.text)
        assert load_config(path).agents
    if isinstance(data.get("turns"), list) or isinstance(data.get("routes"), list):  # a scripted model's script
        path = tmp_path / f"script.{block.lang}"
        path.write_text(block.text)
        load_script(path)


@pytest.mark.parametrize("block", blocks("python"))
def test_python_example_compiles(block: Block) -> None:
    if block.fragment:  # an API listing: signatures, not code
        return
    compile(block.text, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


@pytest.mark.parametrize("block", blocks(*SHELLS))
def test_shell_example_is_valid_bash(block: Block) -> None:
    text = console_commands(block.text) if block.lang == "console" else block.text
    done = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


RUNNABLE = [
    pytest.param(
        block, id=block.id, marks=[pytest.mark.slow, *([pytest.mark.registry] if block.run.needs_registry else [])]
    )
    for block in BLOCKS
    if block.run
]


@pytest.mark.parametrize("block", RUNNABLE)
def test_example_runs(block: Block, tmp_path: Path) -> None:
    run = block.run
    assert run is not None
    if run.needs_bubblewrap:
        skip_unless_bubblewrap_runs()
    work = tmp_path / "work"
    work.mkdir()
    env = clone_env(work, tmp_path / "bin")
    for name, text in block.files.items():
        (work / name).write_text(text)
    if run.after:
        assert_succeeds([*BASH, "-c", run.after], cwd=work, env=env, log=tmp_path / "after.log")
    script = tmp_path / ("example.py" if block.lang == "python" else "example.sh")
    script.write_text(block.text)
    argv = [sys.executable, str(script)] if block.lang == "python" else [*BASH, "-x", str(script)]
    if run.server:
        assert_serves(argv, cwd=work, env=env, log=tmp_path / "example.log")
    else:
        assert_succeeds(argv, cwd=work, env=env, log=tmp_path / "example.log")


def clone_env(work: Path, bin_dir: Path) -> dict[str, str]:
    """A run block's environment: ``corral`` on PATH and ``work/.venv/bin/corral`` are the corral under test.

    The store and the debug switch come from the docs' defaults, not from this test's environment.
    """
    shim = f'#!/bin/sh\nexec "{sys.executable}" -m corral "$@"\n'
    for directory in (bin_dir, work / ".venv" / "bin"):
        directory.mkdir(parents=True)
        (directory / "corral").write_text(shim)
        (directory / "corral").chmod(0o755)
    source = str(Path(corral.__file__).resolve().parents[1])  # this checkout's src/, first on the path
    env = {k: v for k, v in os.environ.items() if k not in {"CORRAL_HOME", "CORRAL_DATABASE_URL", "CORRAL_DEBUG"}}
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")])),
        "COLUMNS": "120",
    }


@contextmanager
def started(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in a session of its own, output to ``log``; at the end stop the whole session.

    A block may leave a process behind (``corral model serve ... &``): it goes with the session, and
    since the output is a file, nothing waits for such a process to close a pipe.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_session(proc)


def assert_succeeds(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float = 300) -> None:
    with started(argv, cwd=cwd, env=env, log=log) as proc:
        code = proc.wait(timeout=timeout)
    assert code == 0, f"{argv} exited {code}:\n{log.read_text(errors='replace')}"


def assert_serves(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float = 60) -> None:
    """A block that serves until stopped must print its address and keep running."""
    with started(argv, cwd=cwd, env=env, log=log) as proc:
        deadline = time.monotonic() + timeout
        while "http://127.0.0.1:" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no server address (exit {proc.poll()}):\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, f"the server stopped (exit {proc.returncode}):\n{log.read_text(errors='replace')}"


def stop_session(proc: subprocess.Popen[bytes]) -> None:
    """End every process of the session this test started: SIGTERM, then SIGKILL after 5 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 5
        try:
            os.killpg(proc.pid, sig)
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader, so that only live processes keep the group
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            return
