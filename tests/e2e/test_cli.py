"""The ``corral`` command end to end: run, runs, show, trace, init, errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.models.scripted import ScriptedServer, load_script
from tests.e2e.cli_helpers import corral, corral_json, write_config

pytestmark = pytest.mark.slow


def test_run_then_inspect_with_runs_show_and_trace(tmp_path: Path, repo: Path, fix_script: Path) -> None:
    home = tmp_path / "home"
    with ScriptedServer(load_script(fix_script)) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        proc = corral("run", "fixer", "fix the failing test", "--repo", str(repo), cwd=tmp_path, home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout
    assert "cost $" in proc.stdout
    assert "journal:" in proc.stdout

    (listed,) = corral_json("runs", cwd=tmp_path, home=home)
    run_id = listed["id"]
    assert listed["status"] == "succeeded"

    shown = corral_json("show", run_id[:6], cwd=tmp_path, home=home)
    assert shown["result"]["files_changed"] >= 1
    assert "+    return a + b" in shown["result"]["patch"]
    assert shown["usage"]["input_tokens"] == 11600

    trace = corral_json("trace", run_id, cwd=tmp_path, home=home)
    calls = trace["model_calls"]
    assert len(calls) == 6
    assert all(c["input_tokens"] > 0 and c["output_tokens"] > 0 and c["duration_ms"] is not None for c in calls)
    assert [c["cache_read_tokens"] for c in calls] == [0, 1000, 1400, 1800, 2200, 2500]
    tools = trace["tool_calls"]
    assert [t["tool"] for t in tools] == ["glob", "execute", "read_file", "edit_file", "execute"]
    assert all(t["duration_ms"] is not None and t["ok"] for t in tools)

    human = corral("trace", run_id, cwd=tmp_path, home=home)
    assert human.returncode == 0 and "model call 1" in human.stdout and "edit_file" in human.stdout
    assert corral("show", run_id, cwd=tmp_path, home=home).returncode == 0


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert corral("init", cwd=tmp_path, home=home).returncode == 0
    assert (tmp_path / "corral.toml").exists()
    again = corral("init", cwd=tmp_path, home=home)
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("[agents.fixer\nmodel=1", "not valid TOML"),
        ('[agents.fixer]\nmodel = "mystery:model"\nsandbox = "local"\n', "unknown model provider 'mystery'"),
        ('[agents.other]\nmodel = "openai:gpt-6.1-sol"\n', "no agent named 'fixer'"),
        (
            '[agents.fixer]\nmodel = "openai:gpt-6.1-sol"\n[agents.fixer.budget]\nmax_turns = -1\n',
            "field 'budget.max_turns'",
        ),
    ],
)
def test_bad_input_is_a_usage_error_without_traceback(tmp_path: Path, repo: Path, config: str, expected: str) -> None:
    (tmp_path / "corral.toml").write_text(config)
    proc = corral("run", "fixer", "task", "--repo", str(repo), cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_run_exits_1_and_says_why(tmp_path: Path, repo: Path) -> None:
    script = tmp_path / "s.toml"
    script.write_text('[[turns]]\nfail = [ { status = 500, times = 50 } ]\ntext = "x"\n')
    with ScriptedServer(load_script(script)) as server:
        write_config(tmp_path, base_url=server.openai_base_url, extra="[agents.fixer.budget]\nmax_turns = 5\n")
        (tmp_path / "corral.toml").write_text(
            (tmp_path / "corral.toml")
            .read_text()
            .replace("initial_backoff_s = 0.01", "initial_backoff_s = 0.01\nmax_attempts = 2")
        )
        proc = corral("run", "fixer", "task", "--repo", str(repo), cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed" in proc.stdout and "500" in proc.stdout


def test_unknown_run_id_is_a_usage_error(tmp_path: Path) -> None:
    proc = corral("show", "nope", cwd=tmp_path, home=tmp_path / "home")
    assert proc.returncode == 2
    assert "no run 'nope'" in proc.stderr


def test_cancel_stops_a_running_run_from_another_process(tmp_path: Path, repo: Path) -> None:
    import os
    import subprocess
    import time

    from corral.events import RunFinished
    from corral.store import RunStatus, Store
    from tests.e2e.cli_helpers import CORRAL

    turns = "".join(
        f'\n[[turns]]\ndelay = 0.5\n[[turns.tool_calls]]\nname = "glob"\nargs = {{ pattern = "*{i}" }}\n'
        for i in range(30)
    )
    script = tmp_path / "slow.toml"
    script.write_text(turns + '\n[[turns]]\ntext = "never reached"\n')
    home = tmp_path / "home"
    with ScriptedServer(load_script(script)) as server:
        write_config(tmp_path, base_url=server.openai_base_url)
        proc = subprocess.Popen(
            [*CORRAL, "run", "fixer", "slow task", "--repo", str(repo)],
            cwd=tmp_path,
            env={**os.environ, "CORRAL_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server.wait_for_requests(2, timeout=60)
            store = Store.open(home=home)
            (record,) = store.list_runs()
            cancelled = corral("cancel", record.id, cwd=tmp_path, home=home)
            assert cancelled.returncode == 0, cancelled.stderr
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        sent_at_cancel = len(server.requests)
        time.sleep(1.0)
        assert len(server.requests) <= sent_at_cancel + 1
    assert proc.returncode == 3, out + err
    assert "cancelled" in out
    record = store.get_run(record.id)
    assert record.status is RunStatus.CANCELLED
    events = store.events(record.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finished = [e.event for e in events if isinstance(e.event, RunFinished)]
    assert len(finished) == 1 and finished[0].status == "cancelled"
    store.close()


def _offline_prefix() -> list[str]:
    """``unshare -n`` when this machine lets us make a network namespace: the demo must not need one."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n"]
    return []


def test_demo_runs_offline_and_its_patch_fixes_the_sample(tmp_path: Path) -> None:
    import os
    import re
    import subprocess

    from tests.e2e.cli_helpers import CORRAL

    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CORRAL_HOME", None)
    proc = subprocess.run(
        [*_offline_prefix(), *CORRAL, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded · 1 file(s) changed" in proc.stdout
    assert re.search(r"cost \$0\.\d{4} · \d+ input tokens", proc.stdout)
    assert "journal: sqlite:///" in proc.stdout

    home = tmp_path / ".corral" / "demo"
    sample = home / "demo" / "sample_repo"
    failing = subprocess.run(["python3", "-m", "unittest", "-q"], cwd=sample, capture_output=True, text=True)
    assert failing.returncode != 0  # the demo never touches the sample itself
    (patch,) = (home / "runs").glob("*/patch.diff")
    subprocess.run(["git", "apply", str(patch)], cwd=sample, check=True)
    fixed = subprocess.run(["python3", "-m", "unittest", "-q"], cwd=sample, capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
