"""Grants and run identities: on behalf of a user a run holds what both the user and the agent hold;
as the agent, the agent's own grants; secrets outside them are refused, saying how to grant them."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ForbiddenError, UsageError
from corral.store import Store
from corral.store.accounts import Accounts, Principal
from corral.store.identity import allows, check_grants, check_identity, intersect, missing
from corral.store.records import Identity

pytestmark = pytest.mark.usefixtures("database")  # on SQLite and on PostgreSQL


def test_grants_are_checked_and_sets_of_them_combine() -> None:
    assert check_grants(["secret:B", "secret:A", "secret:A", "secret:*"]) == ["secret:*", "secret:A", "secret:B"]
    for bad in ("secret:", "secret:1A", "secret:A B", "tool:execute", "secret:A;rm", "", "SECRET:A"):
        with pytest.raises(UsageError, match="is not a grant"):
            check_grants([bad])
    assert allows(["secret:*"], "ANY") and allows(["secret:A"], "A") and not allows(["secret:A"], "B")
    assert intersect(["secret:*"], ["secret:A"]) == ["secret:A"] == intersect(["secret:A"], ["secret:*"])
    assert intersect(["secret:A", "secret:B"], ["secret:B", "secret:C"]) == ["secret:B"]
    assert intersect(["secret:*"], ["secret:*"]) == ["secret:*"]
    assert intersect([], ["secret:*"]) == []
    assert missing(["secret:A"], ["A", "B", "C"]) == ["B", "C"]


def principal(accounts: Accounts, user: str, team: str) -> Principal:
    token, _ = accounts.create_token(user=user, team=team, scopes=["runs:write"])
    return accounts.authenticate(token)


def test_a_run_on_behalf_of_a_user_holds_what_both_hold_and_as_the_agent_its_own(home: Path) -> None:
    store = Store.open(home=home)
    accounts = Accounts(store.engine)
    accounts.create_team("blue")
    accounts.create_user("bob", ["blue"])
    bob = principal(accounts, "bob", "blue")

    nothing = accounts.identity(bob, "deployer", "user")  # no grants anywhere yet
    assert (nothing.mode, nothing.user, nothing.team, nothing.grants) == ("user", "bob", "blue", ())
    with pytest.raises(ForbiddenError, match="agent 'deployer' has no identity of its own in team 'blue'"):
        accounts.identity(bob, "deployer", "agent")

    assert accounts.grant_user("bob", "blue", ["secret:GH_TOKEN", "secret:NPM_TOKEN"]) == [
        "secret:GH_TOKEN",
        "secret:NPM_TOKEN",
    ]
    assert accounts.grant_agent("deployer", "blue", ["secret:GH_TOKEN", "secret:DEPLOY_KEY"]) == [
        "secret:DEPLOY_KEY",
        "secret:GH_TOKEN",
    ]
    assert accounts.identity(bob, "deployer", "user").grants == ("secret:GH_TOKEN",)  # the intersection
    as_agent = accounts.identity(bob, "deployer", "agent")
    assert (as_agent.mode, as_agent.grants) == ("agent", ("secret:DEPLOY_KEY", "secret:GH_TOKEN"))
    assert as_agent.user == "bob"  # who asked is recorded in agent mode too

    accounts.grant_user("bob", "blue", ["secret:*"])
    assert accounts.identity(bob, "deployer", "user").grants == ("secret:DEPLOY_KEY", "secret:GH_TOKEN")
    assert accounts.grant_agent("deployer", "blue", ["secret:GH_TOKEN"], revoke=True) == ["secret:DEPLOY_KEY"]
    assert accounts.identity(bob, "deployer", "user").grants == ("secret:DEPLOY_KEY",)
    assert accounts.agents("blue") == [("deployer", ["secret:DEPLOY_KEY"])]
    assert accounts.members("blue") == [("bob", ["secret:*", "secret:GH_TOKEN", "secret:NPM_TOKEN"])]

    # Grants are per team: another team's agent of the same name holds nothing of these.
    accounts.create_team("red")
    accounts.add_member("bob", "red")
    assert accounts.identity(principal(accounts, "bob", "red"), "deployer", "user").grants == ()
    store.close()


def test_grants_are_refused_to_strangers_and_bad_names(home: Path) -> None:
    store = Store.open(home=home)
    accounts = Accounts(store.engine)
    accounts.create_team("blue")
    accounts.create_user("eve")
    with pytest.raises(UsageError, match="user 'eve' is not a member of team 'blue'"):
        accounts.grant_user("eve", "blue", ["secret:A"])
    with pytest.raises(UsageError, match="no team 'nope'"):
        accounts.grant_agent("deployer", "nope", ["secret:A"])
    with pytest.raises(UsageError, match="cannot name an agent"):
        accounts.grant_agent("../x", "blue", ["secret:A"])
    with pytest.raises(UsageError, match="is not a grant"):
        accounts.grant_agent("deployer", "blue", ["secret:*;"])
    with pytest.raises(UsageError, match="agent 'deployer' has no identity of its own in team 'blue'"):
        accounts.grant_agent("deployer", "blue", ["secret:A"], revoke=True)  # made nothing on the way
    assert accounts.agents("blue") == []
    assert accounts.members("blue") == []
    store.close()


def test_secrets_outside_the_grants_are_refused_with_the_way_to_grant_them() -> None:
    on_behalf = Identity(mode="user", agent="deployer", user="bob", team="blue", grants=("secret:GH_TOKEN",))
    check_identity(on_behalf, ["GH_TOKEN"], "deployer")
    with pytest.raises(ForbiddenError) as refused:
        check_identity(on_behalf, ["GH_TOKEN", "DEPLOY_KEY"], "deployer")
    assert "acting on behalf of bob (agent deployer) may not use secret(s) DEPLOY_KEY" in refused.value.message
    assert "corral user grant bob --team blue secret:DEPLOY_KEY" in (refused.value.hint or "")
    assert "corral agent grant deployer --team blue secret:DEPLOY_KEY" in (refused.value.hint or "")
    as_agent = Identity(mode="agent", agent="deployer", user="bob", team="blue", grants=())
    with pytest.raises(ForbiddenError, match=r"as agent deployer \(submitted by bob\) .* \(its grants: none\)"):
        check_identity(as_agent, ["X"], "deployer")
