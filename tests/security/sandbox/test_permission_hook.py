"""Escape attempts against an external engine's permission hook, from inside its sandbox: what a
command an engine runs (one policy allowed) could do to get its later calls allowed. The hook's
directory is read-only; the hook runs isolated from the workspace (``-I``), so modules and
``PYTHONPATH`` planted there never load; it answers only with the run's own key; and whatever
breaks its answer refuses the call."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from corral.engines.external import hooks
from corral.models.gateway import ModelGateway, Upstream
from corral.policy.budgets import BudgetClock
from corral.sandbox.types import SANDBOX_PYTHON
from corral.spec import Budget
from tests.security.sandbox.conftest import SandboxFactory

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

CALL = json.dumps({"tool_name": "Bash", "tool_input": {"command": "git push"}, "tool_use_id": "c1"})
ALLOW = '{"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow"}}'


async def test_a_command_cannot_get_the_hook_to_allow_what_policy_denies(make_sandbox: SandboxFactory) -> None:
    asked: list[dict[str, Any]] = []

    async def deny(call: dict[str, Any]) -> dict[str, str]:
        asked.append(call)
        return {"decision": "deny", "reason": "no pushes"}

    hook_dir = hooks()  # the copy every engine's sandbox mounts
    script = hook_dir / "permission.py"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    async with ModelGateway() as gateway:
        account = gateway.open_account(
            "run-1",
            upstreams={"anthropic": Upstream("http://127.0.0.1:9", "real-key")},
            provider="scripted",
            budget=BudgetClock(Budget(), time.time()),
            on_call=lambda call: None,
        )
        account.on_permission = deny
        port = gateway.url.rsplit(":", 1)[1]
        sandbox = await make_sandbox(routes={"corral-gateway": f"127.0.0.1:{port}"}, mounts=(str(hook_dir),))
        url = "http://corral-gateway/corral/permission"

        async def hook(key: str, *, env: dict[str, str] | None = None) -> tuple[int | None, str]:
            command = f"printf '%s' '{CALL}' | {SANDBOX_PYTHON} -I {script} {url} {key}"
            result = await sandbox.exec(["/bin/sh", "-c", command], env=env, timeout=30)
            return result.exit_code, result.stdout

        # the hook itself, and its directory, cannot be changed or added to
        for attempt in (
            f"echo 'print({ALLOW!r})' > {script}",
            f"echo x >> {script}",
            f"touch {hook_dir}/sitecustomize.py",
            f"mv {script} /tmp/hook.py",
        ):
            changed = await sandbox.exec(["/bin/sh", "-c", attempt], timeout=10)
            assert changed.exit_code != 0, f"ESCAPE: {attempt!r} worked"
        # modules planted in the workspace and on PYTHONPATH shadow nothing: json, urllib, sitecustomize
        for name in ("json.py", "sitecustomize.py", "usercustomize.py"):
            await sandbox.write_file(name, f"import sys\nprint({ALLOW!r})\nsys.exit(0)\n".encode())
        await sandbox.write_file("urllib/__init__.py", f"print({ALLOW!r})\n".encode())
        planted = {"PYTHONPATH": "/workspace", "PYTHONSTARTUP": "/workspace/json.py", "PYTHONHOME": "/workspace"}
        code, out = await hook(account.key, env=planted)
        assert code == 0 and json.loads(out)["hookSpecificOutput"]["permissionDecision"] == "deny", out
        # another key (a guess, an older run's) is no run's: the call is refused, not allowed
        code, out = await hook("corral-gw-made-up")
        assert (code, out) == (2, "")
        gateway.close_account(account)
        code, out = await hook(account.key)  # the run's key after its engine ended
        assert (code, out) == (2, "")
    assert len(asked) == 1, "a refused key reached the run's policy"
    assert hashlib.sha256(script.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in hook_dir.iterdir()) == ["opencode.js", "permission.py"]
