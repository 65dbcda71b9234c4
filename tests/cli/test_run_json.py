"""``corral run --json``: one JSON event per line as the journal commits them, then the result; ``--quiet``;
``--output-last-message``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from corral.cli.stream import STREAM_VERSION
from tests.cli.run_support import json_lines, run_corral, scripted_project, start_corral, stored
from tests.conftest import FIX_SCRIPT

pytestmark = pytest.mark.slow  # every case starts the real `corral` entry point

HOSTILE = "dict[str, int] [/] [bold]done[/bold] \\u001b]0;owned\\u0007\\u001b[2J \\u202e"
"""A model answer with rich markup, an OSC title, a clear-screen sequence and a bidi override (TOML escapes)."""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return scripted_project(tmp_path / "project", FIX_SCRIPT)


def test_every_line_is_json_in_journal_order_and_the_last_is_the_result(project: Path, repo: Path) -> None:
    home = project / "home"
    done = run_corral("run", "fixer", "fix the test", "--repo", str(repo), "--json", cwd=project, home=home)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    assert all(line["v"] == STREAM_VERSION for line in lines)
    *events, result = lines

    record, journal = stored(home)
    assert [(e["run_id"], e["seq"], e["key"], e["type"]) for e in events] == [
        (j.run_id, j.seq, j.key, j.type) for j in journal
    ]
    assert [e["data"] for e in events] == [j.data for j in journal]
    assert events[0]["type"] == "run.started" and events[-1]["type"] == "run.finished"

    assert result["type"] == "result"
    assert result["run_id"] == record.id
    assert (result["status"], result["exit_code"], result["error"]) == ("succeeded", 0, None)
    assert result["text"] == "Fixed add() to return a + b; the tests pass."
    assert "+    return a + b" in result["patch"] and result["files_changed"] == 1
    assert result["usage"]["input_tokens"] == 11600 == record.usage.input_tokens
    assert (result["cost_usd"], result["cost_known"]) == (0.0, True)
    assert result["turns"] == 6 and result["branch"] is None


def test_events_are_written_as_they_happen(project: Path, repo: Path) -> None:
    slow = '[[turns]]\ntext = "first"\n[[turns.tool_calls]]\nname = "glob"\nargs = { pattern = "*" }\n'
    slow += '[[turns]]\ndelay = 3.0\ntext = "second"\n'
    (project / "script.toml").write_text(slow)
    proc = start_corral("run", "fixer", "task", "--repo", str(repo), "--json", cwd=project, home=project / "home")
    try:
        assert proc.stdout is not None
        seen = []
        while not seen or seen[-1]["type"] != "tool.result":
            seen.append(json.loads(proc.stdout.readline()))
        tool_result_at = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # The tool's result came while the model still "thought" about turn 2 (3 s), not with the rest at the end.
    assert time.monotonic() - tool_result_at > 2.0
    assert json_lines(out)[-1]["text"] == "second"


def test_hostile_text_arrives_escaped_and_nothing_else_is_on_stdout(project: Path, repo: Path) -> None:
    (project / "script.toml").write_text(f'[[turns]]\ntext = "{HOSTILE}"\n')
    done = run_corral("run", "fixer", "a [red]task[/red]", "--repo", str(repo), "--json", cwd=project, home=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.isascii() and "\x1b" not in done.stdout
    result = json_lines(done.stdout)[-1]
    assert result["text"] == "dict[str, int] [/] [bold]done[/bold] \x1b]0;owned\x07\x1b[2J \u202e"


def test_a_reader_that_goes_away_does_not_fail_the_run(project: Path, repo: Path) -> None:
    home = project / "home"
    with start_corral("run", "fixer", "task", "--repo", str(repo), "--json", cwd=project, home=home) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["type"] == "run.started"
        proc.stdout.close()  # like `corral run --json | head -n 1`
        err = proc.stderr.read()
        proc.wait(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert stored(home)[0].status.value == "succeeded"


def test_quiet_prints_only_the_answer_and_nothing_on_stderr(project: Path, repo: Path) -> None:
    (project / "script.toml").write_text(f'[[turns]]\ntext = "{HOSTILE}"\n')
    done = run_corral("run", "fixer", "task", "--repo", str(repo), "--quiet", cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not even the local sandbox's warning
    assert done.stdout == "dict[str, int] [/] [bold]done[/bold] ␛]0;owned␇␛[2J \\u202e\n"


def test_quiet_reports_a_failed_run_on_stderr_only(project: Path, repo: Path) -> None:
    failing = '[[turns]]\nfail = [ { status = 500, times = 50 } ]\ntext = "x"\n'
    scripted_project(project, failing, agent_extra="retry = { max_attempts = 1 }\n")
    done = run_corral("run", "fixer", "task", "--repo", str(repo), "-q", cwd=project, home=project / "home")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: run ") and " failed: " in done.stderr and "500" in done.stderr


def test_output_last_message_writes_the_answer_exactly(project: Path, repo: Path) -> None:
    (project / "script.toml").write_text(f'[[turns]]\ntext = "{HOSTILE}"\n')
    answer = project / "answer.txt"
    done = run_corral(
        "run", "fixer", "task", "--repo", str(repo), "--output-last-message", str(answer), cwd=project, home=None
    )
    assert done.returncode == 0, done.stderr
    assert answer.read_text() == "dict[str, int] [/] [bold]done[/bold] \x1b]0;owned\x07\x1b[2J \u202e"


def test_output_last_message_writes_typed_output_as_json(project: Path, repo: Path) -> None:
    (project / "script.toml").write_text('[[turns]]\noutput = { verdict = "fixed", files = 1 }\n')
    schema = {"type": "object", "properties": {"verdict": {"type": "string"}, "files": {"type": "integer"}}}
    (project / "schema.json").write_text(json.dumps(schema))
    answer = project / "out.json"
    args = ["--output-schema", "schema.json", "--output-last-message", str(answer), "-q"]
    done = run_corral("run", "fixer", "task", "--repo", str(repo), *args, cwd=project, home=project / "home")
    assert done.returncode == 0, done.stderr
    assert json.loads(answer.read_text()) == {"verdict": "fixed", "files": 1}
    assert json.loads(done.stdout) == {"verdict": "fixed", "files": 1}  # --quiet prints the same answer


def test_output_last_message_in_a_missing_directory_is_refused_before_the_run(project: Path, repo: Path) -> None:
    home = project / "home"
    args = ["--output-last-message", str(project / "nowhere" / "answer.txt")]
    done = run_corral("run", "fixer", "task", "--repo", str(repo), *args, cwd=project, home=home)
    assert done.returncode == 2
    assert "its directory does not exist" in done.stderr
    assert not (home / "corral.db").exists()
