"""What a command finds in a bubblewrap sandbox: /workspace, a read-only /sys with its own limits, a normal
environment (shell, git identity, writable user prefixes), and none of the host's tool configuration."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from corral.sandbox import Limits, Sandbox, SandboxRequest, get_backend
from corral.sandbox.bubblewrap import rootfs
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend
from corral.sandbox.bubblewrap.dirs import SandboxDirs
from corral.sandbox.bubblewrap.limits import cgroup_support, rlimits
from corral.sandbox.types import GitUser
from tests.sandbox.bubblewrap.conftest import MakeBwrap
from tests.sandbox.conftest import build_repo, skip_unless_bubblewrap_runs

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # real sandboxes or git: the full suite runs them

PY = "/usr/bin/python3"


async def sh(sandbox: Sandbox, command: str, seconds: float = 30, **options: object) -> tuple[int | None, str, str]:
    result = await sandbox.exec(command, timeout=seconds, **options)  # type: ignore[arg-type]
    return result.exit_code, result.stdout, result.stderr


def inside_env(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# -- /workspace ----------------------------------------------------------------------------------


async def test_commands_see_the_workspace_at_slash_workspace_whatever_its_host_path(make: MakeBwrap) -> None:
    sandbox = await make()
    assert not str(sandbox.workspace).startswith("/workspace")
    code, out, err = await sh(sandbox, 'pwd -P; echo "$PWD"; ls', cwd="src/pkg")
    assert code == 0, err
    assert out.splitlines()[:3] == ["/workspace/src/pkg", "/workspace/src/pkg", "data"]
    assert str(sandbox.workspace) not in out
    # A path a command printed is a path the file tools accept.
    assert sandbox.resolve("/workspace/src/pkg/mod.py") == sandbox.workspace / "src/pkg/mod.py"
    assert await sandbox.read_file("/workspace/README.md") == (sandbox.workspace / "README.md").read_bytes()


@pytest.mark.slow  # makes a virtualenv: a few seconds
async def test_a_virtualenv_made_inside_works_after_a_resume(make: MakeBwrap) -> None:
    sandbox = await make()
    code, _, err = await sh(sandbox, f"{PY} -m venv --without-pip .venv", seconds=60)
    assert code == 0, err
    assert (sandbox.workspace / ".venv/bin/python").is_symlink()
    attached = await BubblewrapSandboxBackend().attach(json.loads(json.dumps(sandbox.state())))
    code, out, err = await sh(attached, ".venv/bin/python -c 'import sys; print(sys.prefix)'")
    assert (code, out) == (0, "/workspace/.venv\n"), err


# -- /sys and /proc: the sandbox's own limits ------------------------------------------------------


async def test_sys_is_read_only_and_shows_only_the_sandboxs_own_cgroups(make: MakeBwrap) -> None:
    support = cgroup_support()
    if support is None or "memory" not in support.bases:
        pytest.skip("no memory cgroup here: nothing of the sandbox's to show under /sys/fs/cgroup")
    sandbox = await make(limits=Limits(memory_mb=300, pids=123))
    memory, pids = (
        ("memory.max", "pids.max") if support.version == 2 else ("memory/memory.limit_in_bytes", "pids/pids.max")
    )
    code, out, err = await sh(
        sandbox,
        f"cat /sys/fs/cgroup/{memory}; cat /sys/fs/cgroup/{pids} 2>/dev/null || echo no-pids; "
        "cut -d: -f3 /proc/self/cgroup | sort -u; ls /sys; ls /sys/class/net | wc -l; touch /sys/fs/cgroup/x",
    )
    lines = out.splitlines()
    assert lines[0] == str(300 * 1024 * 1024)
    assert lines[1] in ("123", "no-pids")
    assert lines[2] == "/"  # the cgroup namespace is rooted at the sandbox's group
    assert "Read-only file system" in err and code != 0
    listed = set(lines[3:-1])
    assert {"devices", "fs", "class"} <= listed and "firmware" not in listed
    assert lines[-1] == "0"  # the host's interfaces are not the sandbox's
    code, out, _ = await sh(sandbox, "ls /sys/fs/cgroup")
    host_groups = set(os.listdir("/sys/fs/cgroup"))
    assert set(out.split()) < host_groups or support.version == 2
    assert "corral" not in out.split()


async def test_memory_tools_see_the_memory_limit_and_cpu_counts_stay_true(make: MakeBwrap) -> None:
    sandbox = await make(limits=Limits(memory_mb=768))
    probe = "import os; print(os.cpu_count(), len(os.sched_getaffinity(0)))"
    node = "node -e 'console.log(require(\"os\").totalmem())'" if shutil.which("node") else "echo none"
    code, out, err = await sh(sandbox, f"free -m | awk '/^Mem:/ {{print $2}}'; {PY} -c '{probe}'; nproc; {node}")
    assert code == 0, err
    total, counts, nproc, node_total = out.splitlines()
    assert total == "768"
    assert counts.split() == [str(len(os.sched_getaffinity(0)))] * 2  # no CPU quota: the host's CPUs are true
    assert nproc == str(len(os.sched_getaffinity(0)))
    assert node_total in ("none", str(768 * 1024 * 1024))
    meminfo = dict(line.split(":", 1) for line in rootfs.meminfo_file(768).read_text().splitlines())
    assert meminfo["MemTotal"].split() == meminfo["MemAvailable"].split() == ["786432", "kB"]
    assert meminfo["SwapTotal"].split() == ["0", "kB"]


# -- the environment -------------------------------------------------------------------------------


async def test_the_environment_is_a_normal_login_without_a_terminal(make: MakeBwrap) -> None:
    sandbox = await make()
    code, out, err = await sh(
        sandbox, 'env; test -d "$HOME" && test -w "$HOME" && echo HOME-OK; getent passwd "$USER" | cut -d: -f7'
    )
    assert code == 0, err
    env = inside_env(out)
    assert env["SHELL"] == ("/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh")
    assert out.splitlines()[-1] == env["SHELL"]
    assert (env["TERM"], env["LANG"], env["USER"], env["LOGNAME"]) == ("dumb", "C.UTF-8", "corral", "corral")
    assert "HOME-OK" in out
    assert env["PATH"].split(":")[0] == "/home/corral/.local/bin"
    assert "PIP_USER" not in env  # it would break pip inside every virtualenv


@pytest.mark.parametrize("backend", ["bubblewrap", "local"])
async def test_git_commit_works_and_names_the_profiles_identity(backend: str, tmp_path: Path) -> None:
    if backend == "bubblewrap":
        skip_unless_bubblewrap_runs()
    repo = build_repo(tmp_path / "repo", with_git=True)
    request = SandboxRequest(repo=repo, run_dir=tmp_path / "run", git_user=GitUser(name="Ada", email="ada@example.org"))
    sandbox = await get_backend(backend).create(request)
    try:
        commit = "echo x >> README.md && git commit -qam change && git log -1 --format=%an/%ce"
        code, out, err = await sh(sandbox, commit)
        assert (code, out) == (0, "Ada/ada@example.org\n"), err
    finally:
        await sandbox.destroy()


async def test_git_trusts_the_workspace_and_ignores_the_hosts_stat_data(make: MakeBwrap) -> None:
    sandbox = await make()
    code, out, err = await sh(
        sandbox,
        "git status --porcelain; git config core.checkStat; git config core.trustctime; git log -1 --format=%an",
    )
    assert code == 0, err
    assert out.splitlines() == ["minimal", "false", "t"]  # clean; the repo's own commit keeps its author


@pytest.mark.slow  # pip and npm start slowly
async def test_pip_user_and_npm_global_install_into_the_home_and_onto_path(make: MakeBwrap, tmp_path: Path) -> None:
    repo = build_repo(tmp_path / "tools-repo", with_git=False)
    _write_wheel(repo / "pytool-1.0-py3-none-any.whl")
    (repo / "npmtool").mkdir()
    (repo / "npmtool/package.json").write_text('{"name": "npmtool", "version": "1.0.0", "bin": {"npmtool": "cli.js"}}')
    (repo / "npmtool/cli.js").write_text('#!/usr/bin/env node\nconsole.log("npmtool-ran")\n')
    sandbox = await make(repo=repo)
    code, out, err = await sh(
        sandbox, f"{PY} -m pip install -q --user --no-index pytool-1.0-py3-none-any.whl && pytool", seconds=120
    )
    assert (code, out) == (0, "pytool-ran\n"), err
    if not shutil.which("npm"):
        return
    install = "npm install -g -q --offline --no-audit --no-fund ./npmtool >/dev/null"
    code, out, err = await sh(sandbox, f"{install} && command -v npmtool && npmtool")
    assert (code, out) == (0, "/home/corral/.local/bin/npmtool\nnpmtool-ran\n"), err


def _write_wheel(path: Path) -> None:
    """A minimal wheel with one console script, so pip installs it without a network or a build."""
    files = {
        "pytool.py": "def main():\n    print('pytool-ran')\n",
        "pytool-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: pytool\nVersion: 1.0\n",
        "pytool-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "pytool-1.0.dist-info/entry_points.txt": "[console_scripts]\npytool = pytool:main\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(text)}")
        wheel.writestr("pytool-1.0.dist-info/RECORD", "\n".join([*record, "pytool-1.0.dist-info/RECORD,,"]) + "\n")


# -- the host's tool configuration -----------------------------------------------------------------


async def test_host_tool_configuration_under_usr_is_hidden(make: MakeBwrap) -> None:
    present = [name for name in rootfs.HOST_CONFIG_FILES if os.path.isfile(os.path.realpath(name))]
    sandbox = await make()
    sizes = " ".join(f"$(wc -c < {name})" for name in present)
    code, out, err = await sh(sandbox, f"echo {sizes} end; npm config get globalconfig 2>/dev/null || echo no-npm")
    assert code == 0, err
    assert out.split()[: len(present) + 1] == ["0"] * len(present) + ["end"]
    assert out.split()[-1] in ("/home/corral/.local/etc/npmrc", "no-npm")
    if shutil.which("npm") and os.path.isfile("/usr/etc/npmrc"):
        host = subprocess.run(["npm", "config", "get", "cafile"], capture_output=True, text=True, timeout=60)
        inside = (await sh(sandbox, "npm config get cafile"))[1]
        assert host.stdout.strip() not in ("", "null") and inside.strip() == "null"


# -- processes -------------------------------------------------------------------------------------


@pytest.mark.slow  # 700 threads
async def test_the_default_process_limit_fits_a_test_suite_of_700_threads(make: MakeBwrap) -> None:
    sandbox = await make()
    threads = (
        "import threading; e = threading.Event(); ts = [threading.Thread(target=e.wait) for _ in range(700)]\n"
        "[t.start() for t in ts]; e.set(); [t.join() for t in ts]; print(len(ts))"
    )
    result = await sandbox.exec([PY, "-c", threads], timeout=60)
    assert (result.exit_code, result.stdout) == (0, "700\n"), result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC counts per uid: only a sandbox's own uid makes it exact")
async def test_without_a_pids_cgroup_the_process_limit_is_an_rlimit(
    make: MakeBwrap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SandboxDirs, "cgroup", lambda self: None)
    sandbox = await make(limits=Limits(pids=40))
    threads = (
        "import threading; e = threading.Event()\n"
        "[threading.Thread(target=e.wait, daemon=True).start() for _ in range(100)]"
    )
    result = await sandbox.exec([PY, "-c", threads], timeout=30)
    assert result.exit_code != 0 and "can't start new thread" in result.stderr
    assert (await sh(sandbox, "echo alive"))[1] == "alive\n"
    assert (4096, 4096) in dict(rlimits(Limits(), cgroup_controllers=frozenset())).values()
