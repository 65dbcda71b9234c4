"""The worker checks a run's identity again before it reads a secret from its environment: a run
recorded without the grant (whatever wrote its row) never gets the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ForbiddenError
from corral.runtime.sandboxing import load_secrets
from corral.secrets.redact import Redactor
from corral.spec import AgentSpec
from corral.store import Store
from corral.store.records import Identity
from tests.store.runs import add_run


def test_a_secret_outside_the_runs_grants_is_never_read(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_KEY", "value-that-must-not-leak")
    monkeypatch.setenv("GH_TOKEN", "gh-value")
    store = Store.open(home=home)
    add_run(store, "r1")
    spec = AgentSpec(name="deployer", model="openai:gpt-6.1-terra", secrets={"GH_TOKEN": {}, "DEPLOY_KEY": {}})
    granted = Identity(mode="user", agent="deployer", user="bob", team="blue", grants=("secret:GH_TOKEN",))
    record = store.get_run("r1").model_copy(update={"identity": granted})
    redactor = Redactor()
    with pytest.raises(ForbiddenError, match="may not use secret\\(s\\) DEPLOY_KEY"):
        load_secrets(record, spec, redactor)
    assert len(redactor) == 0  # nothing was read, so nothing registered for redaction

    everything = granted.model_copy(update={"grants": ("secret:*",)})
    env, scoped = load_secrets(record.model_copy(update={"identity": everything}), spec, redactor)
    assert env == {"GH_TOKEN": "gh-value", "DEPLOY_KEY": "value-that-must-not-leak"} and scoped == ()
    local = store.get_run("r1")  # a local run (no identity): the spec's secrets, as before
    assert load_secrets(local, spec, Redactor())[0] == env
    store.close()
