"""Text from tasks, models, tools and files is shown as text: never rich markup, never terminal control.

Each command prints a hostile run (square brackets that look like markup, an escape sequence that
sets the window title, one that clears the screen, a carriage return, a file name with an escape
sequence) through the real entry point. In a pipe there is no ESC byte at all; in a terminal the
only escape sequences are rich's own styling (and the live view's cursor movements); either way the
hostile characters are visible (``␛``, ``␇``, ``␍``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from corral.events import (
    EgressAttempted,
    ModelRequested,
    ModelResponded,
    ModelRetried,
    RunFinished,
    RunStarted,
    ToolCalled,
    ToolReturned,
)
from corral.store import RunStatus, Store
from tests.cli.test_widths import SGR, run_in_terminal
from tests.e2e.cli_helpers import CORRAL, corral
from tests.store.runs import add_run

pytestmark = pytest.mark.slow

HOSTILE = "fix [/] and [bold]x[/bold] \x1b]0;title\x07 \x1b[2J \r done"
SHOWN = "fix [/] and [bold]x[/bold] ␛]0;title␇ ␛[2J ␍ done"
RAW_CONTROL = ("\x1b", "\x07", "\r", "\x9b")
RUN_ID = "agrechostile000001"
PATCH = "diff --git a/x b/evil\x1b[31m.txt\n--- a/x\n+++ b/evil\x1b[31m.txt\n@@ -1 +1 @@\n-old\n+new \x1b[2J\n"


def hostile_store(home: Path) -> None:
    store = Store.open(home=home)
    add_run(
        store,
        RUN_ID,
        status=RunStatus.FAILED,
        task=HOSTILE,
        agent="fixer\x1b[2J",
        error=HOSTILE,
        result={"text": HOSTILE, "output": {"note": HOSTILE}, "patch": PATCH, "files_changed": 1},
        started_at=1.0,
        finished_at=2.0,
    )
    for event in [
        RunStarted(
            key="run.started", agent="fixer", task=HOSTILE, model="m", engine="native", spec_hash="h", repo="/r"
        ),
        ModelRequested(key="model:0:request", call=0, model="m", message_count=1, new_messages=[], tools=["execute"]),
        ModelRetried(key="model:0:retry:1", call=0, attempt=1, error=HOSTILE, status_code=503, wait_s=0.1),
        ModelResponded(key="model:0:response", call=0, model="m", parts=[{"part_kind": "text", "content": HOSTILE}]),
        ToolCalled(key="tool:0:call", call_id="c0", tool="execute", args={"command": HOSTILE}),
        ToolReturned(key="tool:0:result", call_id="c0", tool="execute", ok=True, text=HOSTILE, exit_code=1),
        ToolCalled(key="tool:1:call", call_id="c1", tool="read\x1b[2J", args=HOSTILE),
        ToolReturned(key="tool:1:result", call_id="c1", tool="read", ok=False, text=HOSTILE, error="ToolError"),
        ModelRequested(
            key="model:1:request",
            call=1,
            model="m",
            message_count=3,
            new_messages=[{"parts": [{"part_kind": "retry-prompt", "tool_name": "final_result", "content": HOSTILE}]}],
            tools=[],
        ),
        EgressAttempted(key="egress:0", host="evil\x1b[2J.example", port=443, allowed=False, reason=HOSTILE),
        RunFinished(key="run.finished", status="failed", text=HOSTILE, error=HOSTILE),
    ]:
        store.journal.append(RUN_ID, event)
    store.close()


def env(home: Path) -> dict[str, str]:
    return {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "120"}


def task_in_json(args: tuple[str, ...], text: str) -> str:
    if "--follow" in args:
        return json.loads(text.splitlines()[0])["data"]["task"]  # run.started
    data = json.loads(text)
    return {"runs": lambda: data[0], "show": lambda: data, "trace": lambda: data["run"]}[args[0]]()["task"]


def assert_no_raw_control(data: bytes) -> None:
    text = data.decode()
    for char in RAW_CONTROL:
        assert char not in text, (char, text)


@pytest.mark.parametrize(
    "args",
    [
        ("runs",),
        ("show", RUN_ID),
        ("trace", RUN_ID),
        ("trace", RUN_ID, "--follow"),
        ("runs", "--json"),
        ("show", RUN_ID, "--json"),
        ("trace", RUN_ID, "--json"),
        ("trace", RUN_ID, "--follow", "--json"),
    ],
    ids=" ".join,
)
def test_a_pipe_gets_hostile_text_visible_and_no_control_characters(args, tmp_path: Path, home: Path) -> None:
    hostile_store(home)
    proc = subprocess.run([*CORRAL, *args], cwd=tmp_path, capture_output=True, env=env(home), timeout=60, check=False)
    assert proc.returncode in (0, 1), proc.stderr  # trace --follow exits 1: the run failed
    assert_no_raw_control(proc.stdout + proc.stderr)
    text = proc.stdout.decode()
    if "--json" in args:
        assert task_in_json(args, text) == HOSTILE  # escaped in the JSON, whole once parsed
    elif args[0] == "runs":
        assert "fix [/] and [bold]x[/bold] ␛]0;title␇ ␛[2J" in text and "fixer␛[2J" in text
    else:
        assert SHOWN in text or SHOWN.replace(" ␍ ", " ") in text  # a trace shows text on one line
    if args == ("show", RUN_ID):
        assert "+++ b/evil␛[31m.txt" in text and "+new ␛[2J" in text
        assert f"error    {SHOWN}" in text
    if args[0] == "trace" and "--json" not in args:
        assert "evil␛[2J.example" in text  # egress hosts
        assert "output rejected: fix [/] and [bold]x[/bold] ␛]0;title␇ ␛[2J done" in text
        assert "read␛[2J" in text and "✗ ToolError: fix [/]" in text


@pytest.mark.parametrize("args", [("runs",), ("show", RUN_ID), ("trace", RUN_ID)], ids=" ".join)
def test_a_terminal_gets_only_richs_own_styling(args, tmp_path: Path, home: Path) -> None:
    hostile_store(home)
    code, raw = run_in_terminal([*CORRAL, *args], columns=200, cwd=tmp_path, env={"CORRAL_HOME": str(home)})
    assert code == 0, raw
    assert_no_raw_control(SGR.sub(b"", raw))
    text = SGR.sub(b"", raw).decode()
    assert "␛]0;title␇" in text and "[bold]x[/bold]" in text


HOSTILE_SCRIPT = r"""
[[turns]]
text = "answer [/] [bold]x[/bold] \u001b]0;title\u0007 \u001b[2J \r end"
[[turns.tool_calls]]
name = "execute"
args = { command = "printf '\\033]0;pwned\\007\\033[2J'; touch \"$(printf 'evil\\033[31m.txt')\"" }
[[turns.tool_calls]]
name = "read_file"
args = { path = "missing-\u001b[2J.txt" }

[[turns]]
text = "done [/] \u001b]0;title\u0007"
"""


def hostile_session(tmp_path: Path) -> Path:
    (tmp_path / "hostile.toml").write_text(HOSTILE_SCRIPT)
    (tmp_path / "corral.toml").write_text(
        '[agents.fixer]\nmodel = "scripted:hostile.toml"\nsandbox = "local"\n', encoding="utf-8"
    )
    return tmp_path


def test_the_live_view_of_a_real_run_shows_hostile_text_visibly(tmp_path: Path, repo: Path, home: Path) -> None:
    hostile_session(tmp_path)
    proc = subprocess.run(
        [*CORRAL, "run", "fixer", HOSTILE, "--repo", str(repo), "--json"],
        cwd=tmp_path,
        capture_output=True,
        env=env(home),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert_no_raw_control(proc.stdout + proc.stderr)
    live = proc.stderr.decode()  # with --json the live view prints its lines on stderr
    assert "turn 1: answer [/] [bold]x[/bold] ␛]0;title␇ ␛[2J end" in live
    assert 'read_file(path="missing-\\u001b[2J.txt")' in live  # JSON's own escape
    assert re.search(r"← read_file  ✗ \w+Error: .*missing-␛\[2J\.txt", live)
    run_id = json.loads(proc.stdout.decode().splitlines()[-1])["run_id"]  # the stream's result line

    shown = corral("show", run_id, cwd=tmp_path, home=home)
    assert "\x1b" not in shown.stdout
    assert "evil\\033[31m.txt" in shown.stdout  # git quotes the file name; shown as git wrote it
    assert "done [/] ␛]0;title␇" in shown.stdout
    traced = corral("trace", run_id, cwd=tmp_path, home=home)
    assert "\x1b" not in traced.stdout and "✓ exit 0" in traced.stdout


def test_the_live_view_in_a_terminal_never_passes_hostile_sequences_through(
    tmp_path: Path, repo: Path, home: Path
) -> None:
    hostile_session(tmp_path)
    code, raw = run_in_terminal(
        [*CORRAL, "run", "fixer", HOSTILE, "--repo", str(repo), "--json"],
        columns=200,
        cwd=tmp_path,
        env={"CORRAL_HOME": str(home)},
        timeout=120,
    )
    assert code == 0, raw
    for sequence in (b"\x1b]0;", b"\x1b[2J", b"\x07"):
        assert sequence not in raw, sequence
    assert "␛]0;title␇" in raw.decode()
