"""``corral demo`` removes only what it created: its own marked sub-directory, never the user's files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.demo import DEMO_DIR_NAME, MARKER_NAME, prepare_demo_dir
from corral.errors import UsageError
from corral.store import RunStatus, Store
from tests.e2e.cli_helpers import CORRAL


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content (symlinks as their target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_text(errors="replace")
    return found


def demo(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CORRAL_HOME", None)
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- the directory the demo owns -------------------------------------------------------------


def test_the_demo_marks_its_directory_and_copies_the_sample_into_it(tmp_path: Path) -> None:
    repo = prepare_demo_dir(tmp_path / "home")
    assert repo == tmp_path / "home" / DEMO_DIR_NAME / "sample_repo"
    assert (repo.parent / MARKER_NAME).is_file()
    assert (repo / "inventory" / "stock.py").is_file()


def test_a_demo_directory_it_did_not_create_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / DEMO_DIR_NAME / "mine").mkdir(parents=True)
    (home / DEMO_DIR_NAME / "mine" / "thesis.tex").write_text("years of work")
    before = tree(home)
    with pytest.raises(UsageError, match="was not created by corral demo"):
        prepare_demo_dir(home)
    assert tree(home) == before


def test_a_symlink_in_place_of_its_directory_is_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER_NAME).write_text("looks like a demo directory, but is not where the demo puts one")
    (elsewhere / "data.csv").write_text("1,2,3")
    home = tmp_path / "home"
    home.mkdir()
    (home / DEMO_DIR_NAME).symlink_to(elsewhere)
    with pytest.raises(UsageError, match="is not a directory"):
        prepare_demo_dir(home)
    assert (elsewhere / "data.csv").read_text() == "1,2,3"


def test_an_empty_directory_is_reused_and_a_half_cleared_one_is_finished(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / DEMO_DIR_NAME).mkdir(parents=True)
    repo = prepare_demo_dir(home)  # empty: nothing could be lost
    # A demo killed while replacing its directory leaves its mark and part of the old copy.
    (repo / "inventory" / "stock.py").unlink()
    (repo / "leftover.txt").write_text("from the old copy")
    repo = prepare_demo_dir(home)
    assert (repo / "inventory" / "stock.py").is_file()
    assert not (repo / "leftover.txt").exists()


# --- the command -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_in_a_home_holding_user_files_replaces_only_its_own_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "projects" / "app").mkdir(parents=True)
    (home / "notes.txt").write_text("do not lose this")
    (home / "projects" / "app" / "main.py").write_text("print('mine')")
    user_files = tree(home)

    first = demo("--home", str(home), "demo", "--sandbox", "local", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = tree(home)
    assert {k: after_first.get(k) for k in user_files} == user_files
    (home / DEMO_DIR_NAME / "sample_repo" / "stray.txt").write_text("left in the demo's copy")

    second = demo("--home", str(home), "demo", "--sandbox", "local", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    after_second = tree(home)
    assert {k: after_second.get(k) for k in user_files} == user_files
    assert not (home / DEMO_DIR_NAME / "sample_repo" / "stray.txt").exists()  # its own copy was replaced
    store = Store.open(home=home)
    try:
        runs = store.list_runs()
    finally:
        store.close()
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED]  # the store was kept


@pytest.mark.slow
def test_demo_with_an_unknown_sandbox_fails_before_touching_anything(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("do not lose this")

    for args in (["demo", "--sandbox", "nope"], ["--home", str(home), "demo", "--sandbox", "nope"]):
        proc = demo(*args, cwd=cwd, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "unknown sandbox backend 'nope'" in proc.stderr
    assert list(cwd.iterdir()) == []  # no ./.corral/demo either
    assert tree(home) == {"notes.txt": "do not lose this"}


@pytest.mark.slow
def test_demo_refuses_a_demo_directory_it_did_not_create(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / DEMO_DIR_NAME).mkdir(parents=True)
    (home / DEMO_DIR_NAME / "slides.md").write_text("my own demo")
    proc = demo("--home", str(home), "demo", "--sandbox", "local", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "was not created by corral demo" in proc.stderr
    assert tree(home) == {f"{DEMO_DIR_NAME}/slides.md": "my own demo"}
