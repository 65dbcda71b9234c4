"""The bubblewrap backend's own promises: isolation, identity, seccomp, limits, network profiles, its workspace."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from corral.errors import SandboxError
from corral.sandbox import Limits, NetworkProfile, Sandbox, SandboxRequest, ScopedSecret, get_backend
from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend, bubblewrap_available
from corral.sandbox.bubblewrap.limits import cgroup_support, enforced_limits
from corral.sandbox.egress.proxy import NO_RETRY_ENV
from tests.sandbox.bubblewrap.conftest import MakeBwrap, simulate_reboot
from tests.sandbox.host import processes_with

pytestmark = pytest.mark.anyio

PY = "/usr/bin/python3"
privileged = pytest.mark.skipif(os.geteuid() != 0, reason="needs corral to run as root (own uid, overlay, images)")


async def sh(sandbox: Sandbox, command: str, seconds: float = 20) -> tuple[int | None, str, str]:
    result = await sandbox.exec(command, timeout=seconds)
    return result.exit_code, result.stdout, result.stderr


# -- discovery and doctor ----------------------------------------------------------------------


def test_backend_is_discovered_isolated_and_reports_how_it_runs() -> None:
    backend = get_backend("bubblewrap")
    assert isinstance(backend, BubblewrapSandboxBackend)
    assert (backend.name, backend.isolated) == ("bubblewrap", True)
    ok, detail = bubblewrap_available()
    assert isinstance(ok, bool) and detail
    limits = enforced_limits()
    assert set(limits) >= {"memory", "processes", "cpu_time", "wall_clock", "output", "disk", "tmp"}
    assert all(isinstance(how, str) and how for how in limits.values())


# -- isolation ---------------------------------------------------------------------------------


async def test_sandbox_sees_system_dirs_its_workspace_and_nothing_of_the_host(make: MakeBwrap, tmp_path: Path) -> None:
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("host secret\n")
    sandbox = await make()
    code, out, _ = await sh(sandbox, "ls -A /; echo ---; ls -A /home; echo ---; ls /etc")
    top, home, etc = (part.split() for part in out.split("---"))
    assert code == 0
    assert {"usr", "etc", "proc", "dev", "tmp", "home"} <= set(top)
    assert not {"root", "srv", "opt", "mnt", "work"} & set(top)
    assert home == ["corral"]
    assert {"passwd", "group", "hosts", "ld.so.cache"} <= set(etc)
    assert not {"shadow", "gshadow", "sudoers", "pip.conf", "npmrc", "gitconfig"} & set(etc)
    code, out, _ = await sh(sandbox, f"cat {outside} /etc/shadow /root/.bashrc; ls /etc/ssl")
    assert "host secret" not in out
    assert "private" not in out.split()


async def test_system_dirs_and_the_root_are_read_only(make: MakeBwrap) -> None:
    sandbox = await make()
    for target in ("/usr/bin/corral-x", "/etc/passwd", "/corral-x", "/etc/corral-x"):
        code, _, err = await sh(sandbox, f"echo x > {target}")
        assert code != 0, target
        assert "Read-only" in err or "Permission denied" in err, err


@privileged
async def test_commands_run_as_an_unprivileged_host_uid(make: MakeBwrap) -> None:
    sandbox = await make()
    token = f"71.{secrets.randbelow(10**6):06d}"
    task = asyncio.create_task(sandbox.exec(f"id -u; sleep {token}", timeout=10))
    uids: set[int] = set()
    for _ in range(200):
        pids = processes_with(token)
        sleeping = [pid for pid in pids if _cmdline(pid).startswith(b"sleep")]
        uids = {uid for pid in pids if (uid := _real_uid(pid)) is not None}
        if sleeping:  # the command itself is running, and with it every process on the way (setpriv, bwrap)
            break
        await asyncio.sleep(0.02)
    await sandbox.destroy()
    result = await task
    assert result.stdout.startswith("1000\n")
    assert uids and 0 not in uids and all(uid >= 1000 for uid in uids), uids


async def test_inside_identity_is_a_plain_user_without_capabilities(make: MakeBwrap) -> None:
    sandbox = await make()
    code, out, _ = await sh(sandbox, "id; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; hostname")
    assert code == 0
    assert "uid=1000(corral) gid=1000(corral)" in out
    assert out.count("0000000000000000") == 3
    assert out.strip().endswith("corral")


async def test_host_processes_are_invisible(make: MakeBwrap) -> None:
    sandbox = await make()
    code, out, _ = await sh(sandbox, "ls /proc | grep -E '^[0-9]+$' | wc -l")
    assert code == 0 and int(out) <= 7  # bwrap's pid 1, the egress relay, the resident init, sh, ls, grep, wc


async def test_home_and_tmp_are_private_to_the_sandbox_and_persist_across_execs(make: MakeBwrap) -> None:
    first, second = await make(), await make()
    assert (await sh(first, 'echo mine > /tmp/note && echo cfg > "$HOME/.cfg"'))[0] == 0
    assert (await sh(first, 'cat /tmp/note "$HOME/.cfg"'))[1] == "mine\ncfg\n"
    _, out, _ = await sh(second, 'cat /tmp/note "$HOME/.cfg" 2>&1; echo "$HOME $TMPDIR"')
    assert "mine" not in out and "cfg\n" not in out
    assert out.strip().endswith("/home/corral /tmp")
    assert "note" not in await first.diff()  # /tmp and home are not the workspace


async def test_environment_is_only_the_runs_variables_and_secrets_are_placeholders(
    make: MakeBwrap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOST_ONLY", "host-value")
    secret = ScopedSecret(
        name="API_TOKEN", value=SecretStr("s3cr3t-value"), hosts=("api.example.com",), placeholder="PH"
    )
    sandbox = await make(env={"GREETING": "hi", "LEAKY": "x-s3cr3t-value-y"}, secrets=(secret,))
    code, out, _ = await sh(sandbox, "env")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert code == 0
    assert env["API_TOKEN"] == "PH" and env["GREETING"] == "hi"
    assert "s3cr3t-value" not in out
    assert "CORRAL_HOST_ONLY" not in env
    shell = {"PWD", "SHLVL", "_", "OLDPWD"}
    base = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TMPDIR", "PYTHONDONTWRITEBYTECODE"}
    tools = {"npm_config_prefix", "npm_config_globalconfig", "npm_config_userconfig", "PIP_BREAK_SYSTEM_PACKAGES"}
    git = {f"GIT_{role}_{part}" for role in ("AUTHOR", "COMMITTER") for part in ("NAME", "EMAIL")} | {
        f"GIT_CONFIG_{part}" for part in ("COUNT", "KEY_0", "KEY_1", "KEY_2", "VALUE_0", "VALUE_1", "VALUE_2")
    }
    # Network "none" has a deny-all egress proxy: its variables make clients fail at once, naming the policy.
    proxy = {"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", *NO_RETRY_ENV}
    assert set(env) <= shell | base | tools | git | proxy | {"GREETING", "LEAKY", "API_TOKEN"}
    assert "placeholders" in sandbox.state() and "s3cr3t-value" not in json.dumps(sandbox.state())


async def test_an_intercepting_sandbox_points_every_client_at_its_ca(make: MakeBwrap) -> None:
    from corral.sandbox.egress.proxy import CA_ENV
    from corral.sandbox.types import NetworkProfile

    secret = ScopedSecret(name="API_TOKEN", value=SecretStr("s3cr3t"), hosts=("api.example.com",), placeholder="PH")
    sandbox = await make(
        network=NetworkProfile(mode="allowlist", allow=("api.example.com",)), secrets=(secret,)
    )  # a host-scoped secret: the proxy intercepts TLS
    code, out, _ = await sh(sandbox, "env; test -s /run/corral/ca.pem && echo CA-MOUNTED")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert code == 0 and "CA-MOUNTED" in out
    assert {name: env.get(name) for name in CA_ENV} == dict.fromkeys(CA_ENV, "/run/corral/ca.pem")
    assert {"PIP_CERT", "npm_config_cafile"} <= set(CA_ENV)  # pip's and npm's own settings, not only OpenSSL's
    assert env["HTTPS_PROXY"].startswith("http://127.0.0.1:")


# -- seccomp -----------------------------------------------------------------------------------

SECCOMP_PROBE = r"""
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    result = libc.syscall(number, *args)
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps({
    "mount": call(165, b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace": call(101, 0, 1, 0, 0),
    "unshare_user": call(272, 0x10000000),
    "unshare_net": call(272, 0x40000000),
    "keyctl": call(250, 0, -3, 0, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "userfaultfd": call(323, 0),
    "setns": call(308, 0, 0),
    "clone3": call(435, 0, 0),
    "no_aslr": call(135, 0x0040000),
    "personality_query": call(135, 0xFFFFFFFF),
}))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 system call numbers")
async def test_seccomp_refuses_what_a_build_never_needs(make: MakeBwrap) -> None:
    sandbox = await make()
    result = await sandbox.exec([PY, "-c", SECCOMP_PROBE], timeout=20)
    assert result.exit_code == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen.pop("personality_query") == "ok"
    assert seen.pop("clone3") == "ENOSYS"  # so libc falls back to clone, whose flags the filter can see
    assert set(seen.values()) == {"EPERM"}, seen
    code, _, err = await sh(sandbox, "unshare -U true")
    assert code != 0 and "Operation not permitted" in err


async def test_builds_still_work_under_the_filter(make: MakeBwrap) -> None:
    sandbox = await make()
    threads = f"{PY} -c \"import threading as t; x=t.Thread(target=print, args=('thread',)); x.start(); x.join()\""
    code, out, err = await sh(
        sandbox,
        f"{threads} && printf 'int main(void){{return 0;}}' > /tmp/m.c && cc /tmp/m.c -o /tmp/m && /tmp/m "
        "&& echo built && git init -q /tmp/g && echo git && (command -v node >/dev/null && node -e 'console.log(1+1)' "
        "|| echo 2) && printf 'all:\\n\\t@echo made\\n' > /tmp/Makefile && make -s -C /tmp",
        seconds=60,
    )
    assert code == 0, err
    assert out.split() == ["thread", "built", "git", "2", "made"]


# -- limits ------------------------------------------------------------------------------------


async def test_memory_bomb_hits_the_memory_limit(make: MakeBwrap) -> None:
    sandbox = await make(limits=Limits(memory_mb=96))
    result = await sandbox.exec([PY, "-c", "x = bytearray(400 * 1024 * 1024); print('survived')"], timeout=30)
    assert "survived" not in result.stdout
    assert result.exit_code not in (0, None)
    if "memory" in _cgroup_controllers():
        assert result.exit_code == 137
        assert "corral: memory limit (96 MB) exceeded" in result.stderr
    else:  # RLIMIT_DATA: the allocation fails inside the process
        assert "MemoryError" in result.stderr


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_fork_bomb_hits_the_process_limit_and_the_timeout_ends_it(make: MakeBwrap) -> None:
    sandbox = await make(limits=Limits(pids=24))
    result = await sandbox.exec("bomb() { bomb | bomb & }; bomb; sleep 2", timeout=3)
    assert result.timed_out or result.exit_code is not None
    assert "fork" in result.stderr
    if "pids" in _cgroup_controllers():
        assert "corral: process limit (24) reached" in result.stderr
    assert (await sh(sandbox, "echo alive"))[1] == "alive\n"


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_cpu_loop_hits_the_cpu_time_limit(make: MakeBwrap) -> None:
    sandbox = await make(limits=Limits(cpu_s=1))
    result = await sandbox.exec([PY, "-c", "while True: pass"], timeout=20)
    assert result.exit_code == 128 + 24  # SIGXCPU
    assert "corral: CPU time limit (1 s per process) exceeded" in result.stderr
    assert result.duration_ms < 10_000


async def test_disk_fill_hits_the_disk_limit(make: MakeBwrap) -> None:
    sandbox = await make(limits=Limits(disk_mb=40))
    result = await sandbox.exec("dd if=/dev/zero of=big bs=1M count=100 2>&1; echo dd=$?", timeout=30)
    assert "dd=0" not in result.stdout, result
    assert "corral:" in result.stderr and "40 MB" in result.stderr, result.stderr
    assert (await sh(sandbox, "rm -f big && echo freed"))[1] == "freed\n"


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_wall_timeout_kills_setsid_and_double_forked_children(make: MakeBwrap) -> None:
    sandbox = await make()
    token = f"72.{secrets.randbelow(10**6):06d}"
    command = f"setsid sleep {token} & (sleep {token} &) & sh -c 'sleep {token} & disown' ; sleep {token}"
    result = await sandbox.exec(command, timeout=1)
    assert result.timed_out and result.exit_code is None
    await asyncio.sleep(0.2)
    assert processes_with(token) == []


async def test_left_behind_daemons_die_when_the_command_exits(make: MakeBwrap) -> None:
    sandbox = await make()
    token = f"73.{secrets.randbelow(10**6):06d}"
    result = await sandbox.exec(f"setsid sh -c 'sleep {token}' & echo started", timeout=10)
    assert (result.exit_code, result.stdout) == (0, "started\n")
    await asyncio.sleep(0.2)
    assert processes_with(token) == []


# -- network -----------------------------------------------------------------------------------


NET_PROBE = r"""
import socket, sys
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
inner = socket.create_connection(server.getsockname(), timeout=2)
print("loopback-ok")
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    print("host-reached")
except OSError as exc:
    print("host-unreachable", exc.errno)
import os; print(sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else "no-sys")
"""


@pytest.fixture
def host_server() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    return server


async def test_network_none_has_loopback_only(make: MakeBwrap, host_server: socket.socket) -> None:
    sandbox = await make()
    port = host_server.getsockname()[1]
    result = await sandbox.exec([PY, "-c", NET_PROBE, str(port)], timeout=20)
    host_server.close()
    assert "loopback-ok" in result.stdout, result.stderr
    assert "host-unreachable" in result.stdout and "host-reached" not in result.stdout
    _, out, _ = await sh(sandbox, "cat /proc/net/dev | tail -n +3 | cut -d: -f1")
    assert out.split() == ["lo"]


async def test_network_host_shares_the_hosts_network_and_warns(
    make: MakeBwrap, host_server: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="corral.sandbox"):
        sandbox = await make(network=NetworkProfile(mode="host"))
    assert "network 'host'" in caplog.text
    port = host_server.getsockname()[1]
    result = await sandbox.exec([PY, "-c", NET_PROBE, str(port)], timeout=20)
    host_server.close()
    assert "host-reached" in result.stdout, result


async def test_allowlist_without_the_egress_proxy_is_a_clear_error(
    make: MakeBwrap, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "corral.sandbox.egress.proxy", None)  # as if egress.py were not installed
    with pytest.raises(SandboxError, match="allowlist needs the egress proxy"):
        await make(network=NetworkProfile(mode="allowlist", allow=("example.com",)))


# -- the workspace -----------------------------------------------------------------------------

EDITS = (
    "set -e; echo more >> README.md; chmod +x src/pkg/mod.py; rm -r src/pkg/data; mkdir src/pkg/data;"
    " echo replaced > src/pkg/data/deep.txt; rm readme-link; ln -s src/pkg readme-link; rm blob.bin;"
    " mkdir blob.bin; echo inside > blob.bin/f; echo '*.log' > .gitignore; echo noise > x.log;"
    " mv src/pkg src/moved; touch run.sh; printf 'a\\0b' > bin.dat"
)


@privileged
async def test_overlay_diff_matches_the_full_baseline_diff(make: MakeBwrap, tmp_path: Path) -> None:
    sandbox = await make()
    assert sandbox.state()["strategy"] == "overlay"
    local = await get_backend("local").create(SandboxRequest(repo=tmp_path / "repo", run_dir=tmp_path / "local-run"))
    try:
        for box in (sandbox, local):
            result = await box.exec(EDITS, timeout=30)
            assert result.exit_code == 0, result.stderr
        assert await sandbox.diff() == await local.diff()
    finally:
        await local.destroy()


@privileged
async def test_a_gitignore_edit_brings_unchanged_ignored_files_into_the_diff(make: MakeBwrap, tmp_path: Path) -> None:
    repo = tmp_path / "ignoring"
    (repo / "sub").mkdir(parents=True)
    (repo / ".gitignore").write_text("*.gen\n")
    (repo / "sub" / "kept.gen").write_text("generated\n")
    sandbox = await make(repo=repo)
    assert await sandbox.diff() == ""
    await sandbox.write_file(".gitignore", b"")
    patch = await sandbox.diff()
    assert "diff --git a/sub/kept.gen b/sub/kept.gen\nnew file mode 100644" in patch


@privileged
async def test_files_the_host_writes_stay_editable_by_the_sandbox(make: MakeBwrap) -> None:
    sandbox = await make()
    await sandbox.write_file("new/deeper/file.txt", b"from the host\n")
    await sandbox.write_file("README.md", b"rewritten by the host\n")
    code, out, err = await sh(sandbox, "echo edited >> new/deeper/file.txt && echo x >> README.md && ls -n new/deeper")
    assert code == 0, err
    assert " 1000 1000 " in out


@privileged
async def test_the_repos_corral_store_is_hidden_from_the_workspace(make: MakeBwrap, tmp_path: Path) -> None:
    repo = tmp_path / "with-store"
    (repo / ".corral").mkdir(parents=True)
    (repo / ".corral" / "corral.db").write_text("store")
    (repo / "code.py").write_text("x = 1\n")
    sandbox = await make(repo=repo)
    _, out, _ = await sh(sandbox, "ls -A")
    assert out.split() == ["code.py"]


async def test_run_dir_inside_the_repo_falls_back_to_a_copy(make: MakeBwrap, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sandbox = await make(run_dir=repo / ".corral" / "runs" / "r1")
    assert sandbox.state()["strategy"] == "copy"
    code, out, err = await sh(sandbox, "ls -A && echo more >> README.md")
    assert code == 0, err
    assert ".corral" not in out.split()
    assert "+more" in await sandbox.diff()


@privileged
async def test_attach_after_a_reboot_mounts_everything_again(make: MakeBwrap) -> None:
    sandbox = await make(env={"K": "v"})
    await sandbox.exec("echo kept > note.txt && echo home > ~/h", timeout=10)
    state = json.loads(json.dumps(sandbox.state()))
    simulate_reboot(sandbox)  # the run dir and the disk image stay
    assert not (sandbox.workspace / "note.txt").exists()
    attached = await BubblewrapSandboxBackend().attach({**state, "env": {"K": "v"}})
    code, out, _ = await sh(attached, 'cat note.txt ~/h; echo "$K"')
    assert (code, out) == (0, "kept\nhome\nv\n")
    assert "+kept" in await attached.diff()


# -- helpers -----------------------------------------------------------------------------------


def _cgroup_controllers() -> set[str]:
    support = cgroup_support()
    return set(support.bases) if support else set()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _real_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
