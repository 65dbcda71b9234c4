"""``corral --server URL …``: the run commands through a real ``corral serve`` and ``corral worker`` on
PostgreSQL print what they print on a local store, and fail as clearly."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from corral.store import Store
from tests.e2e.cli_helpers import CORRAL, start_worker
from tests.orchestration.support import eval_script
from tests.postgres import ThrowawayPostgres
from tests.server.conftest import start_server, stop

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCRIPT = """
[[turns]]
text = "looking"
[[turns.tool_calls]]
name = "execute"
args = { command = "echo fixed >> a.py; git push 2>/dev/null || true" }
[turns.usage]
input_tokens = 120
output_tokens = 12

[[turns]]
delay = 0.2
text = "fixed it"
"""

SLOW = """
[[turns]]
delay = 30
text = "never"
"""

CONFIG = """
[agents.fixer]
model = "scripted:script.toml"
sandbox = "local"

[agents.asker]
model = "scripted:script.toml"
sandbox = "local"
[[agents.asker.policy.rules]]
name = "pushes"
tool = "execute"
args_regex = { command = '\\bgit\\s+push\\b' }
decision = "ask"
reason = "a push leaves the sandbox"

[agents.sleeper]
model = "scripted:slow.toml"
sandbox = "local"

[agents.lead]
model = "scripted:lead.toml"
sandbox = "local"
tools = ["read_file", "eval"]

[agents.keeper]
model = "scripted:keeper.toml"
sandbox = "local"
secrets = ["DEPLOY_KEY"]
"""

LEAD = (
    eval_script('review = await task("review calc.py", agent="reviewer")\nreview')
    + """
[[routes]]
match = "You review code"
[[routes.turns]]
output = { findings = [] }
"""
)

KEEPER = """
[[turns]]
[[turns.tool_calls]]
name = "execute"
args = { command = 'test -n "$DEPLOY_KEY" && echo has-the-key' }

[[turns]]
text = "deployed"
"""


@dataclass
class Setup:
    url: str  # the server
    database: str
    home: Path
    project: Path
    repo: Path
    token: str
    worker: subprocess.Popen[str]

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "COLUMNS": "120", "CORRAL_HOME": str(self.home)}
        for name in ("CORRAL_SERVER", "CORRAL_TOKEN", "CORRAL_DATABASE_URL"):
            env.pop(name, None)
        return env | extra

    def remote(self, *args: str, token: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``corral --server URL ARGS`` with the token in ``CORRAL_TOKEN``."""
        env = self.env(CORRAL_TOKEN=token if token is not None else self.token)
        return self._run(["--server", self.url, *args], env, timeout)

    def local(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``corral --database-url DB ARGS``: the same database, read or run in this process."""
        return self._run(["--database-url", self.database, *args], self.env(), timeout)

    def _run(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CORRAL, *argv],
            cwd=self.project,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def setup(postgres: ThrowawayPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("remote")
    project, repo, home = root / "project", root / "repo", root / "home"
    project.mkdir()
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.py").write_text("x = 1\n")
    (project / "script.toml").write_text(SCRIPT)
    (project / "slow.toml").write_text(SLOW)
    (project / "keeper.toml").write_text(KEEPER)
    (project / "lead.toml").write_text(LEAD)
    (project / "corral.toml").write_text(CONFIG)
    database = postgres.database(template=postgres.store_template())
    process, url, token = start_server(database, home, project)
    env = {"CORRAL_DATABASE_URL": database, "DEPLOY_KEY": "k3y-v4lue"}
    setup = Setup(url, database, home, project, repo, token, start_worker(root, home, "-n", "4", env=env))
    try:
        yield setup
    finally:
        stop(setup.worker)  # the one running now: a test may have replaced the first
        stop(process)
        postgres.drop(database)


RUN_ID = re.compile(r"\b[0-9a-f]{8,}(?:-[0-9a-f]{4,})*\b")
TIMES = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s)\b")


def same_shape(text: str, run_ids: list[str]) -> str:
    """Output with what differs between two runs of one script made equal: ids, durations, the journal's place."""
    for n, run_id in enumerate(run_ids):
        text = text.replace(run_id, f"<run{n}>")
    text = TIMES.sub("<t>", text)
    # The local process's own log of its local sandbox (a worker logs it remotely, in its own output).
    text = re.sub(r"^WARNING  local sandbox: .*\n(?: {9}.*\n)*", "", text, flags=re.MULTILINE)
    text = re.sub(r"corral --server \S+ ", "corral ", text)  # hints name the server given on the command line
    return re.sub(r"journal: \S+", "journal: <where>", text)


def test_run_prints_what_a_local_run_prints_and_the_views_match(setup: Setup) -> None:
    remote = setup.remote("run", "fixer", "fix it", "--repo", str(setup.repo))
    local = setup.local("run", "fixer", "fix it", "--repo", str(setup.repo))
    assert (remote.returncode, local.returncode) == (0, 0), remote.stderr + local.stderr
    remote_id = re.search(r"run (\S+) succeeded", remote.stdout)[1]  # type: ignore[index]
    local_id = re.search(r"run (\S+) succeeded", local.stdout)[1]  # type: ignore[index]
    assert same_shape(remote.stdout, [remote_id]) == same_shape(local.stdout, [local_id])
    assert f"journal: {setup.url}" in remote.stdout and "fixed it" in remote.stdout

    # The same run read through the server and from the database prints the same.
    for args in (
        ["show", remote_id],
        ["show", remote_id, "--json"],
        ["trace", remote_id],
        ["trace", remote_id, "--json"],
        ["trace", remote_id, "--follow"],
        ["trace", remote_id, "--follow", "--json"],
        ["diff", remote_id],
    ):
        through, here = setup.remote(*args), setup.local(*args)
        assert (through.returncode, through.stdout) == (here.returncode, here.stdout), args
    listed = json.loads(setup.remote("runs", "--json").stdout)
    assert remote_id in {r["id"] for r in listed} and local_id not in {r["id"] for r in listed}  # the team's only
    everything = json.loads(setup.local("runs", "--json", "--limit", "100").stdout)
    assert listed == [r for r in everything if r["id"] in {r["id"] for r in listed}]
    table = setup.remote("runs", "--agent", "fixer")
    assert remote_id in table.stdout and local_id not in table.stdout

    # --json, --quiet and --submit as locally.
    streamed = setup.remote("run", "fixer", "fix it", "--repo", str(setup.repo), "--json")
    lines = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert [line["type"] for line in lines][-1] == "result" and lines[-1]["status"] == "succeeded"
    assert [line["seq"] for line in lines[:-1]] == list(range(1, len(lines)))
    quiet = setup.remote("run", "fixer", "fix it", "--repo", str(setup.repo), "--quiet")
    assert (quiet.returncode, quiet.stdout) == (0, "fixed it\n")
    submitted = setup.remote("run", "fixer", "fix it", "--repo", str(setup.repo), "--submit", "--json")
    assert json.loads(submitted.stdout)["status"] == "queued"
    told = setup.remote("run", "fixer", "fix it", "--repo", str(setup.repo), "--submit")
    run_id = told.stdout.split()[1]
    assert f"follow it: corral --server {setup.url} trace {run_id} --follow" in told.stdout
    followed = setup.remote("trace", run_id, "--follow")
    assert followed.returncode == 0 and f"run {run_id}" in followed.stdout


def test_approvals_are_listed_and_decided_through_the_server(setup: Setup) -> None:
    submitted = setup.remote("run", "asker", "push it", "--repo", str(setup.repo), "--submit", "--json")
    run_id = json.loads(submitted.stdout)["id"]
    deadline = time.monotonic() + 60
    while not (pending := json.loads(setup.remote("approvals", "--json").stdout)):
        assert time.monotonic() < deadline, "no approval request appeared"
        time.sleep(0.2)
    [request] = pending
    assert request["run_id"] == run_id
    assert setup.remote("approvals", "--json").stdout == setup.local("approvals", "--json").stdout
    ages = re.compile(r"\b\d+[smhd]\b")  # age and expiry, read a moment apart
    assert ages.sub("<age>", setup.remote("approvals").stdout) == ages.sub("<age>", setup.local("approvals").stdout)
    denied = setup.remote("deny", request["id"])
    assert denied.returncode == 2 and "needs --reason" in denied.stderr
    approved = setup.remote("approve", request["id"], "--reason", "ok by me")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith(f"approved {request['id']} (run {run_id}, execute)")
    again = setup.remote("approve", request["id"])
    assert again.returncode == 2 and "already approved by admin" in again.stderr
    followed = setup.remote("trace", run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    store = Store(setup.database, home=setup.home)
    try:
        assert store.get_approval(request["id"]).decided_by == "admin"  # the token's user
    finally:
        store.close()


def test_cancel_and_resume_through_the_server(setup: Setup, tmp_path: Path) -> None:
    submitted = setup.remote("run", "sleeper", "sleep", "--repo", str(setup.repo), "--submit", "--json")
    run_id = json.loads(submitted.stdout)["id"]
    cancelled = setup.remote("cancel", run_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"run {run_id} cancelled\n"), cancelled.stderr
    again = setup.remote("cancel", run_id)
    here = setup.local("cancel", run_id)
    assert (again.returncode, again.stderr) == (here.returncode, here.stderr) == (2, again.stderr)
    assert "already cancelled" in again.stderr

    nothing = setup.remote("resume")
    assert (nothing.returncode, nothing.stdout) == (0, "no interrupted runs\n")
    running = setup.remote("resume", run_id)
    assert running.returncode == 2 and "already cancelled" in running.stderr


def test_a_run_whose_worker_died_is_resumed_and_shown_to_its_end(setup: Setup, tmp_path: Path) -> None:
    (setup.project / "slowish.toml").write_text('[[turns]]\ndelay = 3\ntext = "slow answer"\n')
    with (setup.project / "corral.toml").open("a") as config:
        config.write('\n[agents.slowish]\nmodel = "scripted:slowish.toml"\nsandbox = "local"\n')
    submitted = setup.remote("run", "slowish", "take your time", "--repo", str(setup.repo), "--submit", "--json")
    run_id = json.loads(submitted.stdout)["id"]
    deadline = time.monotonic() + 60
    while json.loads(setup.remote("show", run_id, "--json").stdout)["status"] != "running":
        assert time.monotonic() < deadline, "the worker never took the run"
        time.sleep(0.1)
    setup.worker.send_signal(signal.SIGKILL)
    setup.worker.wait(10)
    assert json.loads(setup.remote("show", run_id, "--json").stdout)["interrupted"] is True
    resume = subprocess.Popen(
        [*CORRAL, "--server", setup.url, "resume", run_id],
        cwd=setup.project,
        env=setup.env(CORRAL_TOKEN=setup.token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)  # asked of the workers, and none is there yet: one starts
        env = {"CORRAL_DATABASE_URL": setup.database, "DEPLOY_KEY": "k3y-v4lue"}
        setup.worker = start_worker(tmp_path, setup.home, "-n", "4", env=env)
        out, err = resume.communicate(timeout=120)
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.wait()
    assert resume.returncode == 0, out + err
    assert f"run {run_id} succeeded" in out and "slow answer" in out


def test_errors_are_clear_and_local_only_commands_refuse_a_server(setup: Setup, tmp_path: Path) -> None:
    missing = setup._run(["--server", setup.url, "runs"], setup.env(XDG_CONFIG_HOME=str(tmp_path / "cfg")), 60)
    assert missing.returncode == 2 and f"no token for {setup.url}" in missing.stderr
    assert "corral login" in missing.stderr
    forged = setup.remote("runs", token="corral_nope_nope")
    assert forged.returncode == 2 and "the server refused the token" in forged.stderr
    gone = setup._run(["--server", "http://127.0.0.1:9", "runs"], setup.env(CORRAL_TOKEN="t"), 60)
    assert gone.returncode == 1 and "cannot reach the corral server at http://127.0.0.1:9" in gone.stderr
    unknown = setup.remote("show", "no-such-run")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr
    bad = setup._run(["--server", "ftp://x", "runs"], setup.env(CORRAL_TOKEN="t"), 60)
    assert bad.returncode == 2 and "is not an http(s) address" in bad.stderr
    refused = setup.remote("rm", "whatever")
    assert refused.returncode == 2 and "`corral rm` works on a local store, not through a server" in refused.stderr
    interactive = setup.remote("run", "fixer", "x", "--repo", str(setup.repo), "--interactive")
    assert interactive.returncode == 2 and "corral approve" in interactive.stderr
    hostile = setup.remote("show", "../../v1/tokens")
    assert hostile.returncode == 2 and "no run" in hostile.stderr


def test_login_keeps_the_token_for_the_owner_only(setup: Setup, tmp_path: Path) -> None:
    env = setup.env(XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    wrong = subprocess.run(
        [*CORRAL, "login", setup.url], input="corral_x_y\n", env=env, capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr
    assert not (tmp_path / "cfg").exists()
    login = subprocess.run(
        [*CORRAL, "login", setup.url + "/"], input=setup.token + "\n", env=env, capture_output=True, text=True
    )
    assert login.returncode == 0, login.stderr
    kept = tmp_path / "cfg" / "corral" / "credentials.toml"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and setup.token in kept.read_text()
    listed = setup._run(["--server", setup.url, "runs"], env, 60)
    assert listed.returncode == 0, listed.stderr
    kept.chmod(0o644)
    loose = setup._run(["--server", setup.url, "runs"], env, 60)
    assert loose.returncode == 2 and "readable by others" in loose.stderr and "chmod 600" in loose.stderr

    # A file edited by hand with more than corral writes is never rewritten (what it holds would be lost).
    kept.chmod(0o600)
    by_hand = kept.read_text() + '\n[defaults]\nserver = "http://elsewhere"\n'
    kept.write_text(by_hand)
    again = subprocess.run(
        [*CORRAL, "login", setup.url], input=setup.token + "\n", env=env, capture_output=True, text=True
    )
    assert again.returncode == 2 and "corral will not rewrite it" in again.stderr
    assert kept.read_text() == by_hand
    assert [p.name for p in kept.parent.iterdir()] == ["credentials.toml"]  # no temporary file left


def test_a_run_acts_as_its_agent_or_for_its_user_with_the_grants_recorded(setup: Setup) -> None:
    refused = setup.remote("run", "keeper", "deploy", "--repo", str(setup.repo))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "may not use secret(s) DEPLOY_KEY" in refused.stderr and "corral agent grant keeper" in refused.stderr

    granted = setup.local("agent", "grant", "keeper", "--team", "default", "secret:DEPLOY_KEY")
    assert (granted.returncode, granted.stdout) == (0, "agent keeper in default holds: secret:DEPLOY_KEY\n")
    ran = setup.remote("run", "keeper", "deploy", "--repo", str(setup.repo), "--as-agent")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = re.search(r"run (\S+) succeeded", ran.stdout)[1]  # type: ignore[index]
    assert "has-the-key" in setup.remote("trace", run_id).stdout and "k3y-v4lue" not in ran.stdout
    shown = setup.remote("show", run_id).stdout
    assert "as agent keeper (submitted by admin) in default; grants: secret:DEPLOY_KEY" in shown
    journal = json.loads(setup.remote("trace", run_id, "--json").stdout)
    [started] = [e for e in journal["events"] if e["type"] == "run.started"]
    assert started["data"]["identity"] == {
        "mode": "agent",
        "agent": "keeper",
        "user": "admin",
        "team": "default",
        "grants": ["secret:DEPLOY_KEY"],
    }
    # On the user's behalf the admin holds nothing: refused until the user is granted it too.
    assert setup.remote("run", "keeper", "deploy", "--repo", str(setup.repo)).returncode == 2
    assert setup.local("user", "grant", "admin", "--team", "default", "secret:DEPLOY_KEY").returncode == 0
    for_user = setup.remote("run", "keeper", "deploy", "--repo", str(setup.repo))
    assert for_user.returncode == 0, for_user.stderr
    as_local = setup.local("run", "keeper", "deploy", "--repo", str(setup.repo), "--as-agent")
    assert as_local.returncode == 2 and "--as-agent chooses who a run acts as on a server" in as_local.stderr


def streamed_tree(stdout: str) -> tuple[str, list[list[tuple[str, int]]]]:
    """A ``run --json`` stream: its run's id, and each run's events (type, seq), the streamed run's first."""
    lines = [json.loads(line) for line in stdout.splitlines()]
    root = lines[-1]["run_id"]
    runs: dict[str, list[tuple[str, int]]] = {}
    for line in lines[:-1]:
        runs.setdefault(line["run_id"], []).append((line["type"], line["seq"]))
    return root, [runs.pop(root), *runs.values()]


def test_the_runs_a_submitted_run_dispatches_are_its_teams_and_act_as_it(setup: Setup) -> None:
    ran = setup.remote("run", "lead", "review", "--repo", str(setup.repo), "--json")
    assert ran.returncode == 0, ran.stderr
    run_id, remote_runs = streamed_tree(ran.stdout)
    # --json streams the dispatched run's events too, as a local run does; each run's in order.
    here = setup.local("run", "lead", "review", "--repo", str(setup.repo), "--json")
    assert here.returncode == 0, here.stderr
    assert remote_runs == streamed_tree(here.stdout)[1]
    assert len(remote_runs) == 2 and ("run.finished", len(remote_runs[1])) in remote_runs[1]
    assert all([seq for _, seq in events] == list(range(1, len(events) + 1)) for events in remote_runs)
    with httpx.Client(base_url=setup.url, headers={"Authorization": f"Bearer {setup.token}"}) as client:
        parent = client.get(f"/v1/runs/{run_id}").json()
        [child] = client.get(f"/v1/runs/{run_id}/children").json()
        shown = client.get(f"/v1/runs/{child['id']}")
        assert shown.status_code == 200, shown.text  # the team's token reads the tree's every run
        assert (shown.json()["team_id"], shown.json()["identity"]) == (parent["team_id"], parent["identity"])
        assert shown.json()["agent"] == "reviewer" and shown.json()["status"] == "succeeded"
