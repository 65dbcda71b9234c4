"""Submitting through the API: a run acts on behalf of the caller or as its agent, records who and with
which grants, and is refused (403, nothing recorded) when its spec reads a secret outside them."""

from __future__ import annotations

import pytest

from corral.store.accounts import Accounts
from tests.server.conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SPEC = {
    "name": "deployer",
    "model": "openai:gpt-6.1-terra",
    "base_url": "http://127.0.0.1:9/v1",
    "secrets": ["DEPLOY_KEY"],
    "subagents": {"helper": {"name": "helper", "model": "openai:gpt-6.1-terra", "secrets": ["GH_TOKEN"]}},
}


def test_identity_decides_which_secrets_a_submitted_run_may_use(served: Server) -> None:
    accounts = Accounts(served.store.engine)
    with served.client("admin") as client:
        assert client.post("/v1/specs", json={"spec": SPEC}).status_code == 201
        body = {"agent": "deployer", "task": "deploy", "repo": served.ids["repo"]}
        before = len(served.store.list_runs(limit=None))

        refused = client.post("/v1/runs", json=body)
        assert refused.status_code == 403, refused.text
        problem = refused.json()
        assert "on behalf of admin (agent deployer) may not use secret(s) DEPLOY_KEY, GH_TOKEN" in problem["detail"]
        assert "corral user grant admin --team default" in problem["hint"]
        as_agent = client.post("/v1/runs", json=body | {"acting_as": "agent"})
        assert as_agent.status_code == 403 and "has no identity of its own" in as_agent.json()["detail"]
        assert client.post("/v1/runs", json=body | {"acting_as": "root"}).status_code == 422
        assert len(served.store.list_runs(limit=None)) == before  # nothing recorded

        # On the user's behalf: what both hold. The user holds everything, the agent only one secret.
        accounts.grant_user("admin", "default", ["secret:*"])
        accounts.grant_agent("deployer", "default", ["secret:DEPLOY_KEY"])
        partly = client.post("/v1/runs", json=body)
        assert partly.status_code == 403 and "may not use secret(s) GH_TOKEN" in partly.json()["detail"]
        accounts.grant_agent("deployer", "default", ["secret:GH_TOKEN"])
        submitted = client.post("/v1/runs", json=body)
        assert submitted.status_code == 201, submitted.text
        identity = submitted.json()["identity"]
        assert identity == {
            "mode": "user",
            "agent": "deployer",
            "user": "admin",
            "team": "default",
            "grants": ["secret:DEPLOY_KEY", "secret:GH_TOKEN"],
        }
        assert client.get(f"/v1/runs/{submitted.json()['id']}").json()["identity"] == identity

        # As the agent: its own grants, whatever the user holds.
        accounts.grant_user("admin", "default", ["secret:*"], revoke=True)
        assert client.post("/v1/runs", json=body).status_code == 403
        employee = client.post("/v1/runs", json=body | {"acting_as": "agent"})
        assert employee.status_code == 201, employee.text
        assert employee.json()["identity"]["mode"] == "agent"
        assert employee.json()["identity"]["grants"] == ["secret:DEPLOY_KEY", "secret:GH_TOKEN"]
        for run in (submitted.json()["id"], employee.json()["id"]):
            assert client.post(f"/v1/runs/{run}/cancel").status_code == 200


def test_an_admin_manages_grants_through_the_api(served: Server) -> None:
    spec = {"name": "releaser", "model": "openai:gpt-6.1-terra", "base_url": "http://127.0.0.1:9/v1"}
    body = {"agent": "releaser", "task": "release", "repo": served.ids["repo"], "acting_as": "agent"}
    with served.client("admin") as client:
        assert client.post("/v1/specs", json={"spec": spec | {"secrets": ["RELEASE_KEY"]}}).status_code == 201
        assert client.post("/v1/runs", json=body).status_code == 403  # no identity of its own yet

        given = client.post("/v1/agents/releaser/grants", json={"grants": ["secret:RELEASE_KEY", "secret:OTHER"]})
        assert given.status_code == 200, given.text
        assert given.json() == {"name": "releaser", "grants": ["secret:OTHER", "secret:RELEASE_KEY"]}
        submitted = client.post("/v1/runs", json=body)
        assert submitted.status_code == 201, submitted.text
        assert submitted.json()["identity"]["grants"] == ["secret:OTHER", "secret:RELEASE_KEY"]
        assert client.post(f"/v1/runs/{submitted.json()['id']}/cancel").status_code == 200

        taken = client.delete("/v1/agents/releaser/grants/secret:RELEASE_KEY")
        assert taken.json() == {"name": "releaser", "grants": ["secret:OTHER"]}
        refused = client.post("/v1/runs", json=body)
        assert refused.status_code == 403 and "RELEASE_KEY" in refused.json()["detail"]

        mine = client.post("/v1/users/admin/grants", json={"grants": ["secret:*"]})
        assert mine.json() == {"name": "admin", "grants": ["secret:*", "secret:A_ONLY_GRANT"]}
        listed = client.get("/v1/grants").json()
        assert listed["team"] == "default"
        assert {"name": "admin", "grants": ["secret:*", "secret:A_ONLY_GRANT"]} in listed["users"]
        assert {"name": "releaser", "grants": ["secret:OTHER"]} in listed["agents"]
        back = client.delete("/v1/users/admin/grants/secret:*")
        assert back.json() == {"name": "admin", "grants": ["secret:A_ONLY_GRANT"]}

        # Bad input: a clear problem, and nothing changed.
        bad = client.post("/v1/agents/releaser/grants", json={"grants": ["secret:X;rm"]})
        assert bad.status_code == 400 and "is not a grant" in bad.json()["detail"]
        assert client.post("/v1/agents/releaser/grants", json={"grants": []}).status_code == 422
        assert client.post("/v1/agents/..%2Fx/grants", json={"grants": ["secret:A"]}).status_code in (400, 404)
        nobody = client.delete("/v1/agents/nobody/grants/secret:A")
        assert nobody.status_code == 404 and "has no identity of its own" in nobody.json()["detail"]
        assert client.post("/v1/users/nobody/grants", json={"grants": ["secret:A"]}).status_code == 404
        after = client.get("/v1/grants").json()
        assert after["agents"] == listed["agents"] and "nobody" not in {a["name"] for a in after["agents"]}
