"""A real ``corral serve`` process on a throwaway PostgreSQL database, with two teams and their tokens."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import update

from corral.events import ToolCalled
from corral.store import Store
from corral.store.accounts import Accounts
from corral.store.models import TokenRow
from tests.e2e.cli_helpers import CORRAL
from tests.postgres import ThrowawayPostgres


@dataclass
class Server:
    """A served API: its address, the store behind it, and tokens by name."""

    url: str
    store: Store
    process: subprocess.Popen[str]
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens.get(token, token)}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def start_server(url: str, home: Path, cwd: Path) -> tuple[subprocess.Popen[str], str, str]:
    """``corral serve`` on a port it picks (``--port 0``); the process, its address (announced once it
    listens) and the admin token it printed."""
    env = {**os.environ, "CORRAL_DATABASE_URL": url, "CORRAL_HOME": str(home)}
    process = subprocess.Popen([*CORRAL, "serve", "--port", "0"], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "admin token (shown once" in first, first
        token = first.split()[-1]
        announced = re.search(r"corral serve on (http://127\.0\.0\.1:\d+) ", process.stdout.readline())
        assert announced, "corral serve did not say where it listens"
        address = announced[1]
        assert httpx.get(address + "/v1/health", timeout=10).status_code == 200
    except BaseException:
        stop(process)
        raise
    return process, address, token


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def served(postgres: ThrowawayPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Team ``default`` (the bootstrap admin's) with a run, an event, an approval, a spec and grants
    (``secret:A_ONLY_GRANT`` to user admin and agent fixer); team ``blue``
    with a user of its own; tokens: ``admin``, ``blue`` (every scope, team blue), ``reader`` (runs:read
    only, team default), ``expired`` and ``revoked`` (every scope, team default)."""
    root = tmp_path_factory.mktemp("served")
    repo = root / "repo"
    repo.mkdir()
    (repo / "a.py").write_text("x = 1\n")
    url = postgres.database(template=postgres.store_template())
    process, address, admin = start_server(url, root / "home", root)
    store = Store(url, home=root / "home")
    server = Server(address, store, process, tokens={"admin": admin})
    try:
        accounts = Accounts(store.engine)
        accounts.create_team("blue")
        accounts.create_user("bob", ["blue"])
        every = ["runs:read", "runs:write", "approvals:decide", "specs:write", "admin"]
        server.tokens["blue"], _ = accounts.create_token(user="bob", team="blue", scopes=every)
        server.tokens["reader"], _ = accounts.create_token(user="admin", team="default", scopes=["runs:read"])
        server.tokens["expired"], expired = accounts.create_token(user="admin", team="default", scopes=every)
        with store.engine.begin() as conn:
            conn.execute(update(TokenRow).where(TokenRow.id == expired.id).values(expires_at=time.time() - 1))
        server.tokens["revoked"], revoked = accounts.create_token(user="admin", team="default", scopes=every)
        accounts.revoke(revoked.id)
        server.ids["admin_token"] = admin.split("_")[1]
        accounts.grant_user("admin", "default", ["secret:A_ONLY_GRANT"])
        accounts.grant_agent("fixer", "default", ["secret:A_ONLY_GRANT"])

        with server.client("admin") as client:
            spec = {"name": "fixer", "model": "openai:gpt-6.1-terra", "base_url": "http://127.0.0.1:9/v1"}
            assert client.post("/v1/specs", json={"spec": spec}).status_code == 201
            run = client.post("/v1/runs", json={"agent": "fixer", "task": "SECRET-TASK-A", "repo": str(repo)})
            assert run.status_code == 201, run.text
        run_id = run.json()["id"]
        server.ids["run"] = run_id
        server.ids["repo"] = str(repo)
        store.journal.append(run_id, ToolCalled(key="call-a", call_id="a", tool="execute", args={"command": "A-ONLY"}))
        store.journal.flush()
        now = time.time()
        store.request_approval(
            id="ap-team-a",
            run_id=run_id,
            call_id="a",
            agent="fixer",
            tool="execute",
            arguments={"command": "A-ONLY"},
            rule=None,
            reason="asks",
            created_at=now,
            expires_at=now + 3600,
        )
        yield server
    finally:
        stop(process)
        store.close()
        postgres.drop(url)
