"""Usage errors exit 2 with a message, never 70 "internal error"; `corral init` paths; run-id prefixes are literal."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.spec import load_config
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import corral
from tests.store.runs import add_run

pytestmark = pytest.mark.slow  # each case starts the real `corral` entry point


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "Missing argument 'agent'"),
        (["runs", "--limit", "abc"], "Invalid value for '--limit'"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["show"], "Missing argument"),
        (["sandbox", "exec"], "Run one command in a fresh sandbox"),  # no command: its help
        (["sandbox", "exec", "--repo", "/nonexistent/repo", "--", "true"], "--repo /nonexistent/repo: not a directory"),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    done = corral(*args, cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stdout + done.stderr
    assert "internal error" not in done.stderr


def test_version(tmp_path: Path) -> None:
    import corral as package

    done = corral("--version", cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 0
    assert done.stdout.strip() == f"corral {package.__version__}"


def test_run_id_prefixes_are_matched_literally(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store.open(home=home)
    try:
        add_run(store, "abcjd4dai", status=RunStatus.SUCCEEDED)
        add_run(store, "xyzjd4dai", status=RunStatus.SUCCEEDED)
    finally:
        store.close()
    for pattern in ("%jd4dai", "_bcjd4dai", "%"):
        done = corral("show", pattern, cwd=tmp_path, home=home)
        assert done.returncode == 2, (pattern, done.stdout)
        assert "no run" in done.stderr
    assert corral("show", "abc", cwd=tmp_path, home=home).returncode == 0


def test_init_into_a_directory_writes_its_corral_toml(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    done = corral("init", str(project), cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert "fixer" in load_config(project / "corral.toml").agents
    again = corral("init", str(project), cwd=tmp_path, home=tmp_path / "home")
    assert again.returncode == 2
    assert f"{project / 'corral.toml'} already exists" in again.stderr


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("missing/dir/x.toml", "missing/dir: no such directory"),
        ("a-file/x.toml", "a-file is not a directory"),
        ("x" * 300 + ".toml", "File name too long"),
        ("/proc/corral.toml", "cannot write /proc/corral.toml"),
    ],
)
def test_init_where_it_cannot_write_is_a_usage_error(tmp_path: Path, path: str, message: str) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    done = corral("init", path, cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "internal error" not in done.stderr
    assert not (tmp_path / "missing").exists()
