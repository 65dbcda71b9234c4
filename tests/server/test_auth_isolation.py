"""Attacks on the API's auth: every operation in the OpenAPI document, tried with no token, a forged one,
an expired and a revoked one, another team's token and a token whose scopes are too narrow. Each is
denied (401 or 403; another team's lists come back without our team's data) and leaks nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.server.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

#: What team default holds that no one else may read: its run's task, its event, its approval.
TEAM_A_SECRETS = ("SECRET-TASK-A", "A-ONLY", "A_ONLY_GRANT")  # ids asked for may be echoed; contents never

#: The scope each operation needs (the document's every path must be here: a new one must be added).
SCOPE = {
    ("get", "/v1/specs"): "runs:read",
    ("post", "/v1/specs"): "specs:write",
    ("get", "/v1/specs/{name}"): "runs:read",
    ("post", "/v1/runs"): "runs:write",
    ("get", "/v1/runs"): "runs:read",
    ("get", "/v1/runs/{run_id}"): "runs:read",
    ("get", "/v1/runs/{run_id}/children"): "runs:read",
    ("post", "/v1/runs/{run_id}/cancel"): "runs:write",
    ("post", "/v1/runs/{run_id}/resume"): "runs:write",
    ("delete", "/v1/runs/{run_id}"): "runs:write",
    ("get", "/v1/runs/{run_id}/verify"): "runs:read",
    ("get", "/v1/runs/{run_id}/events"): "runs:read",
    ("get", "/v1/runs/{run_id}/events/stream"): "runs:read",
    ("get", "/v1/approvals"): "runs:read",
    ("post", "/v1/approvals/{approval_id}/approve"): "approvals:decide",
    ("post", "/v1/approvals/{approval_id}/deny"): "approvals:decide",
    ("get", "/v1/costs"): "runs:read",
    ("post", "/v1/teams"): "admin",
    ("post", "/v1/users"): "admin",
    ("post", "/v1/tokens"): "admin",
    ("get", "/v1/tokens"): "admin",
    ("delete", "/v1/tokens/{token_id}"): "admin",
    ("get", "/v1/grants"): "admin",
    ("post", "/v1/users/{user}/grants"): "admin",
    ("delete", "/v1/users/{user}/grants/{grant}"): "admin",
    ("post", "/v1/agents/{agent}/grants"): "admin",
    ("delete", "/v1/agents/{agent}/grants/{grant}"): "admin",
}
PUBLIC = {("get", "/v1/health")}
LISTS = {"/v1/specs", "/v1/runs", "/v1/approvals", "/v1/costs", "/v1/tokens", "/v1/grants"}
#: What another team's token may do, in its own team: register its own spec, make a new team, give
#: an agent of the same name an identity in its own team (and take the grant back).
OWN_TEAM = {
    ("post", "/v1/specs"): 201,
    ("post", "/v1/teams"): 201,
    ("post", "/v1/agents/{agent}/grants"): 200,
    ("delete", "/v1/agents/{agent}/grants/{grant}"): 200,
}


def operations(server: Server) -> list[tuple[str, str]]:
    with server.client() as client:
        document = client.get("/openapi.json").json()
    return [(method, path) for path, item in document["paths"].items() for method in item]


def request(server: Server, token: str | None, method: str, path: str) -> Any:
    """The operation on team default's resources, with a body it would accept."""
    filled = (
        path.replace("{run_id}", server.ids["run"])
        .replace("{approval_id}", "ap-team-a")
        .replace("{name}", "fixer")
        .replace("{token_id}", server.ids["admin_token"])
        .replace("{user}", "admin")
        .replace("{agent}", "fixer")
        .replace("{grant}", "secret:DEPLOY_KEY")
    )
    bodies: dict[tuple[str, str], Any] = {
        ("post", "/v1/specs"): {"spec": {"name": "intruder", "model": "openai:gpt-6.1-terra"}},
        ("post", "/v1/runs"): {"agent": "fixer", "task": "t", "repo": server.ids["repo"]},
        ("post", "/v1/approvals/{approval_id}/deny"): {"reason": "no"},
        ("post", "/v1/teams"): {"name": "intruders"},
        ("post", "/v1/users"): {"name": "mallory", "teams": ["default"]},
        ("post", "/v1/tokens"): {"user": "admin", "team": "default", "scopes": ["admin"]},
        ("post", "/v1/users/{user}/grants"): {"grants": ["secret:DEPLOY_KEY"]},
        ("post", "/v1/agents/{agent}/grants"): {"grants": ["secret:DEPLOY_KEY"]},
    }
    with server.client(token) as client:
        sent = client.build_request(method.upper(), filled, json=bodies.get((method, path)), timeout=30)
        response = client.send(sent, stream=True)
        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                return response  # a live stream does not end: its status and headers are the answer
            response.read()
            return response
        finally:
            response.close()


def assert_nothing_leaked(response: Any) -> None:
    """Nothing of team default's in the answer (a problem's ``instance`` only repeats the path asked for)."""
    text = response.text
    if response.headers.get("content-type") == "application/problem+json":
        text = json.dumps({k: v for k, v in response.json().items() if k != "instance"})
    for secret in TEAM_A_SECRETS:
        assert secret not in text, (response.request.url, text)


def test_every_operation_is_listed_here(served: Server) -> None:
    assert set(operations(served)) == set(SCOPE) | PUBLIC


@pytest.mark.parametrize("token", [None, "corral_0123456789abcdef_" + "x" * 43, "Bearer", "expired", "revoked"])
def test_no_valid_token_gets_401_and_no_data(served: Server, token: str | None) -> None:
    for method, path in SCOPE:
        response = request(served, token, method, path)
        assert response.status_code == 401, (method, path, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_nothing_leaked(response)


def test_another_teams_token_reaches_none_of_our_runs_events_approvals_or_costs(served: Server) -> None:
    for method, path in SCOPE:
        response = request(served, "blue", method, path)
        if path in LISTS and method == "get":
            assert response.status_code == 200, (path, response.text)
        elif (method, path) in OWN_TEAM:  # made in team blue, not ours
            assert response.status_code == OWN_TEAM[method, path], (path, response.text)
        else:
            assert response.status_code in (403, 404), (method, path, response.status_code, response.text)
        assert_nothing_leaked(response)
    # Team default's run, its events and its approval are as they were: nothing was cancelled or decided.
    with served.client("admin") as client:
        run = client.get(f"/v1/runs/{served.ids['run']}").json()
        assert run["status"] == "queued"
        (pending,) = client.get("/v1/approvals").json()
        assert pending["id"] == "ap-team-a" and pending["status"] == "pending"
        assert [t["name"] for t in client.get("/v1/tokens").json() if t["user"] == "mallory"] == []
        assert [s["name"] for s in client.get("/v1/specs").json()] == ["fixer"]  # blue's spec is blue's
        grants = client.get("/v1/grants").json()
        assert {u["name"]: u["grants"] for u in grants["users"]}["admin"] == ["secret:A_ONLY_GRANT"]
        assert grants["agents"] == [{"name": "fixer", "grants": ["secret:A_ONLY_GRANT"]}]


def test_another_teams_listings_come_back_empty(served: Server) -> None:
    with served.client("blue") as client:
        assert client.get("/v1/runs").json() == {"runs": [], "next_cursor": None}
        assert client.get("/v1/approvals").json() == []
        assert "fixer" not in {spec["name"] for spec in client.get("/v1/specs").json()}
        assert client.get("/v1/costs?by=run").json() == {"by": "run", "rows": []}
        assert {t["team"] for t in client.get("/v1/tokens").json()} == {"blue"}
        grants = client.get("/v1/grants").json()
        assert (grants["team"], [u["name"] for u in grants["users"]]) == ("blue", ["bob"])


def test_a_narrow_token_gets_403_for_what_its_scopes_do_not_cover(served: Server) -> None:
    for (method, path), scope in SCOPE.items():
        response = request(served, "reader", method, path)
        if scope == "runs:read":
            assert response.status_code == 200, (method, path, response.text)
            continue
        assert response.status_code == 403, (method, path, response.status_code, response.text)
        body = response.json()
        assert body["type"].endswith("/forbidden") and scope in body["detail"]


def test_an_admin_cannot_reach_into_another_team(served: Server) -> None:
    with served.client("blue") as client:
        token = client.post("/v1/tokens", json={"user": "admin", "team": "default", "scopes": ["admin"]})
        assert token.status_code == 403 and "token" not in json.loads(token.text)
        member = client.post("/v1/users", json={"name": "mole", "teams": ["default"]})
        assert member.status_code == 403
        revoke = client.delete(f"/v1/tokens/{served.ids['admin_token']}")
        assert revoke.status_code == 403
        for path in ("/v1/users/admin/grants", "/v1/users/nobody-at-all/grants"):  # the same answer: no one is named
            grant = client.post(path, json={"grants": ["secret:*"]})
            assert grant.status_code == 404 and "in team 'blue'" in grant.json()["detail"]
    with served.client("admin") as client:
        assert client.get("/v1/health").status_code == 200
        assert client.get("/v1/runs").status_code == 200  # the admin token still works


def test_a_revoked_token_stops_working_at_once(served: Server) -> None:
    with served.client("admin") as client:
        made = client.post("/v1/tokens", json={"user": "admin", "team": "default", "scopes": ["runs:read"]})
        assert made.status_code == 201
        token, token_id = made.json()["token"], made.json()["id"]
        assert token.startswith(f"corral_{token_id}_")
    with served.client(token) as client:
        assert client.get("/v1/runs").status_code == 200  # checked once: remembered by the server
    with served.client("admin") as client:
        assert client.delete(f"/v1/tokens/{token_id}").status_code == 204
        assert client.delete(f"/v1/tokens/{token_id}").status_code == 409
        listed = {t["id"]: t for t in client.get("/v1/tokens").json()}
        assert listed[token_id]["revoked_at"] is not None and "token" not in json.dumps(listed[token_id])
    with served.client(token) as client:
        assert client.get("/v1/runs").status_code == 401
    # A token with the right id and another secret is refused too.
    forged = token[:-5] + ("AAAAA" if not token.endswith("AAAAA") else "BBBBB")
    with served.client(forged) as client:
        assert client.get("/v1/runs").status_code == 401


def test_tokens_are_stored_only_as_argon2_hashes(served: Server) -> None:
    from sqlalchemy import text

    with served.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT id, secret_hash FROM corral_tokens")).all()
    for name, token in served.tokens.items():
        secret = token.split("_", 2)[2]
        assert all(secret not in h for _, h in stored), name
    assert all(h.startswith("$argon2id$") for _, h in stored)
