"""The bundled demo: a small sample repository with one bug, and a scripted model session that fixes it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from corral.errors import UsageError

_HERE = Path(__file__).parent

SAMPLE_REPO: Path = _HERE / "sample_repo"
"""A tiny stdlib-only Python project whose test suite has exactly one failing test."""

DEMO_SCRIPT: Path = _HERE / "demo_script.toml"
"""The scripted-model session that explores SAMPLE_REPO, fixes its bug with the built-in tools, tests it."""

DEMO_DIR_NAME = "demo"
"""The sub-directory of the store's home that ``corral demo`` owns (and replaces on its next run)."""

MARKER_NAME = ".created-by-corral-demo"
"""The file that marks a directory as made by ``corral demo``; the demo removes nothing without it."""

_MARKER_TEXT = (
    "This directory was created by `corral demo`, which replaces its contents on its next run.\n"
    "Nothing outside this directory is ever removed by the demo.\n"
)


def prepare_demo_dir(home: Path) -> Path:
    """A fresh copy of the sample repository in ``home/demo/``; returns the copy's path.

    Only a ``demo/`` directory that an earlier demo marked as its own is cleared (an empty one is
    reused); anything else there is left alone and raises :class:`UsageError`.
    """
    workdir = home / DEMO_DIR_NAME
    try:
        clear_demo_dir(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        # The mark comes first and goes never, so a demo killed at any moment leaves a directory
        # the next demo recognizes as its own.
        (workdir / MARKER_NAME).write_text(_MARKER_TEXT, encoding="utf-8")
        repo = workdir / "sample_repo"
        shutil.copytree(SAMPLE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    except OSError as exc:
        where = exc.filename or workdir
        raise UsageError(f"cannot prepare the demo in {workdir}: {where}: {exc.strerror}") from exc
    return repo


def clear_demo_dir(workdir: Path) -> None:
    """Empty ``workdir`` but for its marker, if an earlier demo made it; refuse if it did not."""
    if not os.path.lexists(workdir):
        return
    if workdir.is_symlink() or not workdir.is_dir():
        raise _not_ours(workdir, "is not a directory")
    entries = list(workdir.iterdir())
    if not entries:
        return  # empty: nothing in it can be lost
    marker = workdir / MARKER_NAME
    if marker.is_symlink() or not marker.is_file():
        raise _not_ours(workdir, "was not created by corral demo")
    for entry in entries:
        if entry.name == MARKER_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _not_ours(workdir: Path, why: str) -> UsageError:
    return UsageError(
        f"{workdir} {why}; corral demo leaves it alone",
        hint="move it away, or give the demo another store directory with --home",
    )
