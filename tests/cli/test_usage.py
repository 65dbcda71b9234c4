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


def test_a_path_with_terminal_control_is_shown_not_obeyed(tmp_path: Path) -> None:
    done = corral("init", "\x1b]0;owned\x07\x1b[2Jdir/x.toml", cwd=tmp_path, home=tmp_path / "home")
    assert done.returncode == 2
    assert "\x1b" not in done.stderr
    assert "␛]0;owned␇␛[2Jdir: no such directory" in done.stderr


def test_debug_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    plain = corral("show", "nosuch", cwd=tmp_path, home=tmp_path / "home")
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    for debug in (["--debug"], []):
        env = {} if debug else {"CORRAL_DEBUG": "1"}
        done = corral("show", "nosuch", *debug, cwd=tmp_path, home=tmp_path / "home", env=env)
        assert "Traceback" in done.stderr, (debug, done.stderr)
        assert "RunNotFoundError: no run 'nosuch'" in done.stderr


def test_home_after_the_command_wins_over_the_environment(tmp_path: Path) -> None:
    store = Store.open(home=tmp_path / "other")
    try:
        add_run(store, "r-other", status=RunStatus.SUCCEEDED)
    finally:
        store.close()
    env_home = tmp_path / "home"
    assert "r-other" not in corral("runs", cwd=tmp_path, home=env_home).stdout
    done = corral("runs", "--home", str(tmp_path / "other"), cwd=tmp_path, home=env_home)
    assert done.returncode == 0, done.stderr
    assert "r-other" in done.stdout


def test_config_after_the_command(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "corral.toml").write_text('[agents.alpha]\nmodel = "scripted:demo"\nsandbox = "local"\n')
    done = corral("run", "beta", "a task", "--config", str(other / "corral.toml"), cwd=tmp_path, home=tmp_path / "h")
    assert done.returncode == 2
    assert "no agent named 'beta'" in done.stderr
    assert "(defined: alpha)" in done.stderr


def test_words_after_double_dash_belong_to_the_command(tmp_path: Path) -> None:
    done = corral("sandbox", "exec", "--backend", "local", "--", "echo", "--debug", cwd=tmp_path, home=tmp_path / "h")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "--debug"
    assert "Traceback" not in done.stderr


def test_errors_are_not_wrapped_at_the_terminal_width(tmp_path: Path) -> None:
    missing = tmp_path / "a-directory-with-a-rather-long-name" / "and-another-one-below-it"
    done = corral("init", str(missing / "x.toml"), cwd=tmp_path, home=tmp_path / "home", env={"COLUMNS": "40"})
    assert done.returncode == 2
    assert f"error: {missing}: no such directory\n" in done.stderr
