"""Host directories a profile lends a sandbox: read-only mounts at the same path, and the package cache."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.errors import SandboxError
from corral.sandbox import Sandbox
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.dirs import SandboxDirs
from corral.sandbox.bubblewrap.overlay import unmount_all
from corral.spec import SandboxProfile
from tests.sandbox.bubblewrap.conftest import MakeBwrap
from tests.sandbox.conftest import build_repo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # real sandboxes or git: the full suite runs them

privileged = pytest.mark.skipif(os.geteuid() != 0, reason="needs corral to run as root (own uid per sandbox)")


@pytest.fixture
def toolchain() -> Iterator[Path]:
    """A host directory outside /tmp (which the sandbox has its own of), holding one tool."""
    root = Path.home() / f".corral-test-toolchain-{secrets.token_hex(4)}"
    (root / "bin").mkdir(parents=True)
    tool = root / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool-ran\n")
    tool.chmod(0o755)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "package-cache"
    monkeypatch.setenv("CORRAL_PACKAGE_CACHE_DIR", str(root))
    return root


# -- what a profile accepts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mounts", "message"),
    [
        (["opt/tools"], "must be an absolute path"),
        (["/opt/tools/"], "not in normal form"),
        (["/opt/../etc"], "not in normal form"),
        (["/"], "may not be mounted"),
        (["/home"], "may not be mounted"),
        (["/root"], "may not be mounted"),
        (["/etc/ssl"], "under /etc, which the sandbox provides itself"),
        (["/proc/1"], "under /proc"),
        (["/sys"], "under /sys"),
        (["/dev/shm"], "under /dev"),
        (["/run/corral"], "under /run"),
        (["/tmp/x"], "under /tmp"),
        (["/workspace"], "under /workspace"),
        (["/home/corral/x"], "under /home/corral"),
        (["/usr/local/lib"], "already sees read-only"),
        (["/opt/a", "/opt/a"], "mounted more than once: /opt/a"),
    ],
)
def test_a_profile_refuses_mounts_the_sandbox_cannot_or_must_not_take(mounts: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        SandboxProfile.model_validate({"mounts": mounts})


def test_a_profile_takes_mounts_cache_and_git_identity() -> None:
    profile = SandboxProfile.model_validate(
        {
            "mounts": ["/opt/venvs/tools", "/root/.pyenv/versions/3.12.1"],
            "package_cache": "read-only",
            "git_user": {"name": "Ada", "email": "ada@example.org"},
        }
    )
    assert profile.mounts == ("/opt/venvs/tools", "/root/.pyenv/versions/3.12.1")
    assert (profile.package_cache, profile.git_user.name) == ("read-only", "Ada")
    assert SandboxProfile().package_cache == "off" and SandboxProfile().git_user.email == "agent@corral.invalid"
    with pytest.raises(ValidationError, match="package_cache"):
        SandboxProfile.model_validate({"package_cache": "shared"})
    with pytest.raises(ValidationError, match="one non-empty line"):
        SandboxProfile.model_validate({"git_user": {"name": "a\nb"}})


# -- mounts ----------------------------------------------------------------------------------------


async def test_a_mount_is_read_only_at_the_same_path_and_recorded(make: MakeBwrap, toolchain: Path) -> None:
    sandbox = await make(mounts=(str(toolchain),))
    code, out, err = await _sh(sandbox, f"{toolchain}/bin/tool; touch {toolchain}/new")
    assert out == "tool-ran\n"
    assert code != 0 and "Read-only file system" in err
    assert not (toolchain / "new").exists()
    assert sandbox.state()["mounts"] == [str(toolchain)]


@pytest.mark.parametrize("problem", ["missing", "a file", "a symlink"])
async def test_a_mount_that_is_missing_or_not_a_plain_directory_is_refused(
    make: MakeBwrap, toolchain: Path, problem: str
) -> None:
    link = toolchain.with_name(toolchain.name + "-link")
    link.symlink_to(toolchain)
    try:
        path, message = {
            "missing": (toolchain / "nope", "does not exist"),
            "a file": (toolchain / "bin" / "tool", "is not a directory"),
            "a symlink": (link, "leads through a symlink"),
        }[problem]
        with pytest.raises(SandboxError, match=message):
            await make(mounts=(str(path),))
    finally:
        link.unlink()


@privileged
async def test_a_mount_the_sandboxs_user_could_not_read_is_refused(make: MakeBwrap, toolchain: Path) -> None:
    toolchain.chmod(0o700)  # root's own: every sandbox uid would get "Permission denied" inside
    try:
        with pytest.raises(SandboxError, match=r"not readable by the sandbox's user \(mode 700\)") as caught:
            await make(mounts=(str(toolchain),))
        assert caught.value.hint is not None and "chmod o+rx" in caught.value.hint
    finally:
        toolchain.chmod(0o755)


@pytest.mark.parametrize("problem", ["the repo", "inside the repo", "the store", "inside the store"])
async def test_a_mount_that_shows_the_repo_or_corrals_store_is_refused(
    make: MakeBwrap, toolchain: Path, problem: str
) -> None:
    repo = build_repo(toolchain / "repo", with_git=False)
    home = toolchain / "corral-home"
    (home / "runs").mkdir(parents=True)
    (home / "cache").mkdir()
    mount = {
        "the repo": toolchain,
        "inside the repo": repo / "src",
        "the store": home,
        "inside the store": home / "cache",
    }[problem]
    with pytest.raises(SandboxError, match=f"mount {mount} would show"):
        await make(repo=repo, run_dir=home / "runs" / "r1", mounts=(str(mount),))


@privileged
async def test_mounts_come_back_after_a_reboot(make: MakeBwrap, toolchain: Path, cache: Path) -> None:
    sandbox = await make(mounts=(str(toolchain),), package_cache="read-write")
    state = json.loads(json.dumps(sandbox.state()))
    assert (state["mounts"], state["package_cache"]) == ([str(toolchain)], "read-write")
    dirs = SandboxDirs(sandbox.run_dir, privileged=True)
    assert dirs.portal is not None
    unmount_all(dirs.portal)  # a reboot takes every mount away
    attached = await BubblewrapSandboxBackend().attach(state)
    code, out, err = await _sh(attached, f"{toolchain}/bin/tool && echo kept > /var/cache/corral/pip/note")
    assert (code, out) == (0, "tool-ran\n"), err
    assert (cache / "pip" / "note").read_text() == "kept\n"


# -- the package cache -------------------------------------------------------------------------------


async def test_a_read_write_cache_is_shared_between_sandboxes(make: MakeBwrap, cache: Path) -> None:
    first = await make(package_cache="read-write")
    second = await make(package_cache="read-write")
    show = 'echo "$PIP_CACHE_DIR $npm_config_cache $UV_CACHE_DIR"'
    code, out, err = await _sh(first, f'{show} && echo a > "$PIP_CACHE_DIR/a"')
    assert (code, out) == (0, "/var/cache/corral/pip /var/cache/corral/npm /var/cache/corral/uv\n"), err
    code, out, err = await _sh(second, 'cat "$PIP_CACHE_DIR/a" && echo b > "$npm_config_cache/b"')
    assert (code, out) == (0, "a\n"), err
    # On the host the files belong to the cache's owner (this user), whichever sandbox uid wrote them.
    assert {(cache / "pip/a").stat().st_uid, (cache / "npm/b").stat().st_uid} == {os.geteuid()}
    assert oct(cache.stat().st_mode & 0o777) == "0o700"


async def test_a_read_only_cache_is_read_but_never_written(make: MakeBwrap, cache: Path) -> None:
    (cache / "pip").mkdir(parents=True)
    (cache / "pip" / "wheel").write_text("cached\n")
    sandbox = await make(package_cache="read-only")
    _, out, _ = await _sh(sandbox, 'cat "$PIP_CACHE_DIR/wheel"; echo poisoned > "$PIP_CACHE_DIR/wheel"; echo $?')
    assert out.startswith("cached\n")
    assert (cache / "pip" / "wheel").read_text() == "cached\n"
    if os.geteuid() == 0:  # copy-on-write: the sandbox's own writes work and stay its own
        assert out.endswith("0\n")
        assert (await _sh(sandbox, 'cat "$PIP_CACHE_DIR/wheel"'))[1] == "poisoned\n"
        other = await make(package_cache="read-only")
        assert (await _sh(other, 'cat "$PIP_CACHE_DIR/wheel"'))[1] == "cached\n"
    else:
        assert not out.endswith("0\n")


async def test_no_cache_unless_asked(make: MakeBwrap, cache: Path) -> None:
    sandbox = await make()
    _, out, _ = await _sh(sandbox, 'ls /var/cache/corral 2>&1; echo "[$PIP_CACHE_DIR]"')
    assert "No such file" in out and out.endswith("[]\n")
    assert not cache.exists()


@privileged
async def test_a_cache_another_user_owns_is_refused(make: MakeBwrap, cache: Path) -> None:
    cache.mkdir()
    os.chown(cache, 12345, 12345)
    with pytest.raises(SandboxError, match="belongs to uid 12345"):
        await make(package_cache="read-write")


async def _sh(sandbox: Sandbox, command: str) -> tuple[int | None, str, str]:
    result = await sandbox.exec(command, timeout=30)
    return result.exit_code, result.stdout, result.stderr
