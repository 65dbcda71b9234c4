"""``corral sandbox exec`` takes a spec's sandbox options: from ``--agent``'s table, with flags on top, validated
by the spec's own model (so a flag is wrong exactly when the same key in corral.toml would be)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli.sandbox import _exec_profile
from corral.errors import UsageError
from tests.e2e.cli_helpers import corral
from tests.sandbox.conftest import skip_unless_bubblewrap_runs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"mounts": ["/etc"]}, "--mount: mount '/etc' is under /etc"),
        ({"mounts": ["relative/dir"]}, "--mount:"),
        ({"package_cache": "sometimes"}, "--cache: Input should be 'off', 'read-only' or 'read-write'"),
        ({"network": "allowlist", "allow": ["https://pypi.org/"]}, "--network and its options: not a host pattern"),
        ({"allow": ["pypi.org"]}, 'allow is only used with mode = "allowlist"'),
        ({"network": "everywhere"}, "--network must be none, allowlist or host"),
        ({"exec_timeout_s": 0}, "--timeout: Input should be greater than 0"),
        ({"memory_mb": "lots"}, "not a size: 'lots'"),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_the_flag(flags: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        _exec_profile(None, flags)
    assert message in caught.value.message


def test_flags_override_the_agents_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corral.toml").write_text(
        '[agents.builder]\nmodel = "scripted:demo"\n'
        '[agents.builder.sandbox]\nnetwork = "allowlist"\nallow = ["pypi.org"]\nmemory_mb = 2048\n'
        'exec_timeout_s = 300\npackage_cache = "read-only"\n'
    )
    monkeypatch.chdir(tmp_path)
    from corral.cli.app import state

    monkeypatch.setattr(state, "config", None)
    same = _exec_profile("builder", {})
    assert same.network.mode == "allowlist" and same.network.allow == ("pypi.org",)
    assert (same.limits.memory_mb, same.exec_timeout_s, same.package_cache) == (2048, 300, "read-only")

    changed = _exec_profile("builder", {"memory_mb": "1G", "network": "none", "exec_timeout_s": 5})
    assert changed.network.mode == "none" and changed.network.allow == ()  # a new mode, no allowlist carried over
    assert (changed.limits.memory_mb, changed.exec_timeout_s, changed.package_cache) == (1024, 5, "read-only")
    with pytest.raises(UsageError, match="no agent named 'nobody'"):
        _exec_profile("nobody", {})


@pytest.fixture
def toolchain() -> Iterator[Path]:
    """A toolchain directory outside /tmp (which the sandbox has its own of), removed afterwards."""
    cache = Path.home() / ".cache"
    cache.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="corral-test-toolchain-", dir=cache))
    root.chmod(0o755)  # mkdtemp makes it 0700: no other user, the sandbox's included, could read it
    try:
        (root / "bin").mkdir()
        (root / "bin" / "hello").write_text("#!/bin/sh\necho hello from the toolchain\n")
        (root / "bin" / "hello").chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


@pytest.mark.slow  # the real entry point and a bubblewrap sandbox
def test_the_agents_sandbox_runs_the_command(tmp_path: Path, toolchain: Path) -> None:
    skip_unless_bubblewrap_runs()
    (tmp_path / "corral.toml").write_text(
        f'[agents.builder]\nmodel = "scripted:demo"\n[agents.builder.sandbox]\nmemory_mb = 512\n'
        f'mounts = ["{toolchain}"]\n'
    )
    script = f"{toolchain}/bin/hello; touch {toolchain}/x || echo read-only; pwd; free -m | awk '/Mem/ {{print $2}}'"
    done = corral("sandbox", "exec", "--agent", "builder", "--", "sh", "-c", script, cwd=tmp_path, home=tmp_path / "h")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello from the toolchain", "read-only", "/workspace", "512"]
