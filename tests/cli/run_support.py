"""Helpers for the tests of ``corral run``/``continue``: a project on a scripted model, the command with stdin."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from corral.store import EventRecord, RunRecord, Store
from tests.e2e.cli_helpers import CORRAL


def scripted_project(directory: Path, script: str, *, agent_extra: str = "") -> Path:
    """``directory`` with ``script.toml`` and a ``corral.toml`` whose agent ``fixer`` runs it in the local sandbox."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "script.toml").write_text(script)
    (directory / "corral.toml").write_text(
        f'[agents.fixer]\nmodel = "scripted:script.toml"\nsandbox = "local"\n{agent_extra}'
    )
    return directory


def corral_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``corral`` subprocess: ``CORRAL_HOME`` set to ``home``, or unset (for ``--home``)."""
    env = {**os.environ, "COLUMNS": "120", **extra}
    env.pop("CORRAL_HOME", None)
    if home is not None:
        env["CORRAL_HOME"] = str(home)
    return env


def run_corral(
    *args: str, cwd: Path, home: Path | None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real ``corral`` with ``args``, ``stdin`` as its input (else none: reading it gives end of file)."""
    return subprocess.run(
        [*CORRAL, *args],
        cwd=cwd,
        env=corral_env(home),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_corral(*args: str, cwd: Path, home: Path | None) -> subprocess.Popen[str]:
    """The real ``corral`` with ``args``, started: its stdout and stderr are pipes to read while it runs."""
    return subprocess.Popen(
        [*CORRAL, *args],
        cwd=cwd,
        env=corral_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every line of ``stdout`` parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stdout.splitlines()]


def stored(home: Path, run_id: str | None = None) -> tuple[RunRecord, list[EventRecord]]:
    """A run of the store in ``home`` (the only one when no id is given) and its journal."""
    store = Store.open(home=home)
    try:
        if run_id is None:
            (record,) = store.list_runs()
        else:
            record = store.get_run(run_id)
        return record, store.events(record.id)
    finally:
        store.close()


def paste(command: str, *, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed ``corral ...`` command line exactly as a shell would."""
    words = shlex.split(command)
    assert words[0] == "corral"
    return subprocess.run(
        [*CORRAL, *words[1:]], cwd=cwd, env=corral_env(None), capture_output=True, text=True, timeout=120
    )
