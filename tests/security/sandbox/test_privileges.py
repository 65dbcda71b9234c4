"""Privilege escalation and kernel attack surface: capabilities, setuid, devices, mounts, namespaces, syscalls."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import socket
import stat
from pathlib import Path

import pytest

from tests.security.sandbox.attacks import DENIED_BY_POLICY, Attack, run_attack, syscall_table
from tests.security.sandbox.conftest import HostProcess, SandboxFactory

# Real escape attempts in real sandboxes: the full suite (and CI) runs them, the fast lane does not.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60), pytest.mark.slow]

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user")
SETUID_CANDIDATES = [
    "/usr/bin/su",
    "/usr/bin/passwd",
    "/usr/bin/mount",
    "/usr/bin/umount",
    "/usr/bin/newgrp",
    "/usr/bin/chsh",
    "/usr/bin/chfn",
    "/usr/bin/gpasswd",
    "/usr/bin/sudo",
    "/usr/lib/openssh/ssh-keysign",
    "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
    "/usr/lib/polkit-1/polkit-agent-helper-1",
]


def assert_all_denied(attack: Attack, what: str, *, errnos: frozenset[str] | None = None) -> None:
    """Every attempt failed; with ``errnos``, failed with one of them (not merely on bad arguments)."""
    succeeded = {label: str(outcome) for label, outcome in attack.succeeded().items()}
    assert not succeeded, f"ESCAPE: {what}: {succeeded}"
    if errnos is not None:
        odd = {label: str(o) for label, o in attack.outcomes.items() if not o.ok and o.errno not in errnos}
        assert not odd, f"ESCAPE: {what} got past the permission check (failed only on its arguments): {odd}"


async def test_sandbox_runs_in_its_own_namespaces(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        for ns in P["namespaces"]:
            attempt(ns, os.readlink, f"/proc/self/ns/{ns}")
        """,
        {"namespaces": NAMESPACES},
    )
    shared = [ns for ns in NAMESPACES if attack[ns].ok and attack[ns].value == os.readlink(f"/proc/self/ns/{ns}")]
    unknown = [ns for ns in NAMESPACES if not attack[ns].ok]
    assert not shared, f"ESCAPE: the sandbox shares the host's {shared} namespace(s)"
    assert not unknown, f"could not read the sandbox's namespaces {unknown}: {attack.describe(unknown)}"


async def test_sandbox_processes_hold_no_capabilities(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    # A freshly exec'd process: a uid-0 process with a full bounding set would regain capabilities here.
    attack = await run_attack(sandbox, 'RESULTS["status"] = {"ok": True, "value": status_fields()}')
    status = attack["status"].value
    held = {key: status[key] for key in ("CapInh", "CapPrm", "CapEff", "CapAmb") if int(status[key], 16)}
    assert not held, (
        f"ESCAPE: sandbox processes hold capabilities {held} (uid {status['Uid']}, CapBnd {status['CapBnd']})"
    )


async def test_sandbox_processes_run_under_a_seccomp_filter_with_no_new_privs(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(sandbox, 'RESULTS["status"] = {"ok": True, "value": status_fields()}')
    status = attack["status"].value
    assert status.get("NoNewPrivs") == "1", f"ESCAPE: no_new_privs is not set, so setuid and file caps apply: {status}"
    assert status.get("Seccomp") == "2", f"ESCAPE: no seccomp filter is applied to sandbox processes: {status}"


@pytest.mark.slow  # seconds of real work: the full suite runs it, the fast lane does not
async def test_setuid_binaries_grant_no_privilege(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        import subprocess, stat as st
        os.makedirs("mnt", exist_ok=True)
        me = status_fields()
        RESULTS["caller"] = {"ok": True, "value": {"Uid": me["Uid"], "CapEff": me["CapEff"]}}
        observed = {}
        for path in P["candidates"]:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if not mode & st.S_ISUID:
                continue
            args = {"/usr/bin/su": [path, "root", "-c", "cat /proc/self/status; cat /etc/shadow; sleep 1"],
                    "/usr/bin/mount": [path, "-t", "tmpfs", "none", "mnt"]}.get(path, [path])
            try:
                proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            except OSError as exc:  # e.g. mode 4754: not executable by the sandbox's user at all
                observed[path] = {"status": None, "output": str(exc), "exit": None}
                continue
            seen = None
            for _ in range(20):
                try:
                    fields = status_fields(proc.pid)
                except OSError:
                    break
                if fields.get("State", "").startswith("Z"):
                    break
                seen = {"Uid": fields["Uid"], "CapEff": fields["CapEff"], "CapPrm": fields["CapPrm"]}
                time.sleep(0.02)
            proc.kill()
            output = proc.communicate(timeout=5)[0].decode(errors="replace")
            observed[path] = {"status": seen, "output": output[-2000:], "exit": proc.returncode}
        RESULTS["observed"] = {"ok": True, "value": observed}
        """,
        {"candidates": SETUID_CANDIDATES},
        timeout=20,
    )
    caller = attack["caller"].value
    caller_euid = caller["Uid"].split()[1]
    host_shadow = [line for line in Path("/etc/shadow").read_text().splitlines() if line.strip()]
    for path, seen in attack["observed"].value.items():
        status = seen["status"]
        if status is not None:
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, (
                f"ESCAPE: setuid {path} ran with capabilities {status}"
            )
            assert status["Uid"].split()[1] == caller_euid, f"ESCAPE: setuid {path} changed euid: {status}"
        granted = [line for line in seen["output"].splitlines() if line.startswith("CapEff:") and int(line[7:], 16)]
        assert not granted, f"ESCAPE: a shell started by {path} held capabilities: {granted}"
        leaked = [line for line in seen["output"].splitlines() if line in host_shadow]
        assert not leaked, f"ESCAPE: {path} read the host's /etc/shadow: {leaked[:2]}"


SETUID_COPY = """
import shutil, stat as st, subprocess
me = status_fields()
RESULTS["caller"] = {"ok": True, "value": {"Uid": me["Uid"], "CapEff": me["CapEff"]}}
for name, source in (("suid-python", os.path.realpath(sys.executable)), ("suid-sh", "/bin/sh")):
    shutil.copy(source, name)
    attempt("chown root " + name, os.chown, name, 0, 0)
    attempt("chmod 6755 " + name, os.chmod, name, 0o6755)
    info = os.stat(name)
    RESULTS["mode " + name] = {"ok": True, "value": {"mode": oct(info.st_mode), "uid": info.st_uid}}
probe = "import os; print(open('/proc/self/status').read())"
run = subprocess.run(["./suid-python", "-c", probe], capture_output=True, timeout=5)
RESULTS["run suid-python"] = {"ok": run.returncode == 0, "value": run.stdout.decode(errors="replace")}
run = subprocess.run(["./suid-sh", "-p", "-c", "cat /proc/self/status"], capture_output=True, timeout=5)
RESULTS["run suid-sh"] = {"ok": run.returncode == 0, "value": run.stdout.decode(errors="replace")}
"""


def status_of(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


async def test_setuid_file_made_in_the_workspace_grants_no_privilege(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(sandbox, SETUID_COPY, timeout=20)
    caller_euid = attack["caller"].value["Uid"].split()[1]
    for label in ("run suid-python", "run suid-sh"):
        outcome = attack[label]
        if not outcome.value:
            continue  # it did not run at all: nothing gained
        status = status_of(outcome.value)
        assert int(status.get("CapEff", "0"), 16) == 0, f"ESCAPE: {label} ran with capabilities: {status}"
        assert status.get("Uid", "").split()[1:2] == [caller_euid], f"ESCAPE: {label} changed euid: {status['Uid']}"


async def test_cannot_plant_a_setuid_root_file_on_the_host(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    await run_attack(sandbox, SETUID_COPY, timeout=20)
    planted = []
    for dirpath, _dirnames, filenames in os.walk(sandbox.workspace):
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if (info.st_mode & stat.S_ISUID and info.st_uid == 0) or (info.st_mode & stat.S_ISGID and info.st_gid == 0):
                planted.append(f"{name} mode={oct(info.st_mode)} uid={info.st_uid} gid={info.st_gid}")
    assert not planted, (
        f"ESCAPE: the sandbox left setuid/setgid-root executables in the host workspace {sandbox.workspace}: "
        f"{planted}; any host user who can reach the run dir gets root"
    )


async def test_cannot_create_device_nodes(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    host_disk = next((d for d in ("/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda") if os.path.exists(d)), None)
    disk_rdev = os.stat(host_disk).st_rdev if host_disk else os.makedev(8, 0)
    attack = await run_attack(
        sandbox,
        """
        import stat as st
        nodes = {
            "disk": (st.S_IFBLK | 0o600, P["disk"]),
            "mem": (st.S_IFCHR | 0o600, os.makedev(1, 1)),
            "kmsg": (st.S_IFCHR | 0o600, os.makedev(1, 11)),
            "null": (st.S_IFCHR | 0o666, os.makedev(1, 3)),
        }
        for name, (mode, dev) in nodes.items():
            attempt("mknod " + name, os.mknod, "dev-" + name, mode, dev)
            attempt("mknodat " + name, sys_call, "mknodat", -100, ("devat-" + name).encode(), mode, dev)
        for name in list(nodes):
            for prefix in ("dev-", "devat-"):
                if os.path.exists(prefix + name) and name != "null":
                    attempt("read " + prefix + name, read, prefix + name, 512)
        """,
        {"disk": disk_rdev},
    )
    assert_all_denied(attack, "device nodes were created or read inside the sandbox")
    devices = []
    for dirpath, _dirnames, filenames in os.walk(sandbox.workspace):
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) and info.st_rdev != 0:
                devices.append(f"{name} {os.major(info.st_rdev)}:{os.minor(info.st_rdev)}")
    assert not devices, f"ESCAPE: device nodes made in the sandbox exist in the host workspace: {devices}"


async def test_cannot_read_host_devices(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    devices = [
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/kmsg",
        "/dev/vda",
        "/dev/sda",
        "/dev/nvme0n1",
        "/dev/xvda",
        "/dev/loop0",
        "/dev/loop-control",
        "/dev/kvm",
        "/dev/fuse",
        "/dev/btrfs-control",
        "/dev/cpu/0/msr",
        "/dev/hwrng",
        "/dev/tty0",
        "/dev/console",
        "/proc/kcore",
    ]
    attack = await run_attack(
        sandbox,
        """
        def open_device(path):
            # Opening is the escape; non-blocking so that a terminal or console cannot hang the attack.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                return {"opened": path, "read": len(os.read(fd, 512))}
            except OSError as exc:
                return {"opened": path, "read error": str(exc)}
            finally:
                os.close(fd)
        for path in P["devices"]:
            attempt(path, open_device, path)
        def write_device(path, data):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)  # no O_CREAT: a plain file is no device
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        attempt("write /dev/kmsg", write_device, "/dev/kmsg", b"<7>corral escape test\\n")
        """,
        {"devices": devices},
    )
    assert_all_denied(attack, "host devices were readable inside the sandbox")


MOUNT_PRELUDE = """
MS_BIND, MS_REMOUNT, MS_REC = 4096, 32, 16384
os.makedirs("mnt", exist_ok=True)
def mount(source, target, fstype, flags, data):
    sys_call("mount", source, target, fstype, flags, data)
    return "mounted"
run = run_ok
"""


async def test_cannot_mount_a_tmpfs(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        attempt("mount(2) tmpfs", mount, b"none", b"mnt", b"tmpfs", 0, b"size=1m")
        attempt("mount binary tmpfs", run, ["mount", "-t", "tmpfs", "none", "mnt"])
        attempt("mount(2) proc", mount, b"proc", b"mnt", b"proc", 0, None)
        attempt("mount(2) cgroup v1", mount, b"cgroup", b"mnt", b"cgroup", 0, b"memory")
        attempt("fsopen tmpfs", sys_call, "fsopen", b"tmpfs", 0)
        attempt("open_tree clone /", sys_call, "open_tree", -100, b"/", 1 | 0x8000)
        """,
        prelude=MOUNT_PRELUDE,
    )
    assert_all_denied(attack, "the sandbox could mount filesystems")
    escaped = make_sandbox.new_mounts()
    assert not escaped, f"ESCAPE: mounts made in the sandbox appeared on the host: {escaped}"


async def test_cannot_bind_mount_or_remount(make_sandbox: SandboxFactory, token: str) -> None:
    sandbox = await make_sandbox()
    planted = Path("/usr") / token
    try:
        attack = await run_attack(
            sandbox,
            """
            attempt("mount(2) bind", mount, b"src", b"mnt", None, MS_BIND, None)
            attempt("mount --bind binary", run, ["mount", "--bind", "src", "mnt"])
            attempt("remount / read-write", mount, None, b"/", None, MS_REMOUNT | MS_BIND, None)
            attempt("remount /usr read-write", run, ["mount", "-o", "remount,rw", "/usr"])
            attempt("write /usr after remount", write, "/usr/" + P["token"], "x")
            """,
            {"token": token},
            prelude=MOUNT_PRELUDE,
        )
        assert_all_denied(attack, "the sandbox could bind-mount or remount")
        assert not planted.exists(), "ESCAPE: a remount let the sandbox write to host /usr"
    finally:
        planted.unlink(missing_ok=True)


async def test_cannot_unshare_a_mount_namespace_and_mount(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
        attempt("unshare -m mount", run, ["unshare", "-m", "sh", "-c", "mount -t tmpfs none mnt && echo MOUNTED"])
        attempt("unshare -rm mount", run, ["unshare", "-rm", "sh", "-c", "mount -t tmpfs none mnt && echo MOUNTED"])
        def unshare_then_mount(flags):
            sys_call("unshare", flags)
            mount(b"none", b"mnt", b"tmpfs", 0, None)
        attempt("unshare(NEWNS)+mount", in_child, unshare_then_mount, CLONE_NEWNS)
        attempt("unshare(NEWUSER|NEWNS)+mount", in_child, unshare_then_mount, CLONE_NEWUSER | CLONE_NEWNS)
        """,
        prelude=MOUNT_PRELUDE,
    )
    assert_all_denied(attack, "a new mount namespace let the sandbox mount")


async def test_cannot_create_a_nested_user_namespace_with_unshare(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    result = await sandbox.exec(
        "unshare -U true; echo U=$?; unshare -Ur id -u; echo Ur=$?; unshare -Urn true; echo Urn=$?; "
        "unshare -Urpf --mount-proc true; echo Urp=$?",
        timeout=10,
    )
    made = [line for line in result.stdout.splitlines() if line.endswith("=0")]
    assert not made, f"ESCAPE: nested user namespaces could be created: {made}; {result.stdout!r} {result.stderr!r}"


async def test_cannot_create_a_nested_user_namespace_by_syscall(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
        attempt("unshare(CLONE_NEWUSER)", in_child, sys_call, "unshare", CLONE_NEWUSER)
        def clone(flags):
            pid = sys_call("clone", flags | SIGCHLD, 0, 0, 0, 0)
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return "cloned"
        attempt("clone(CLONE_NEWUSER)", clone, CLONE_NEWUSER)
        def clone3(flags):
            args = struct.pack("11Q", flags, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
            buf = ctypes.create_string_buffer(args, len(args))
            pid = sys_call("clone3", buf, len(args))
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return "cloned"
        attempt("clone3(CLONE_NEWUSER)", clone3, CLONE_NEWUSER)
        attempt("max_user_namespaces", lambda: read("/proc/sys/user/max_user_namespaces").decode().strip())
        RESULTS.pop("max_user_namespaces")
        """,
    )
    assert_all_denied(attack, "nested user namespaces could be created by syscall")


async def test_cannot_use_the_kernel_keyring(make_sandbox: SandboxFactory, token: str) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        SESSION, USER = -3, -4
        desc = P["token"].encode()
        attempt("add_key session", sys_call, "add_key", b"user", desc, b"payload", 7, SESSION)
        attempt("add_key user", sys_call, "add_key", b"user", desc + b"-u", b"payload", 7, USER)
        attempt("request_key", sys_call, "request_key", b"user", desc, None, 0)
        attempt("keyctl join session", sys_call, "keyctl", 1, desc + b"-s", 0, 0, 0)
        """,
        {"token": token},
    )
    assert_all_denied(attack, "the kernel keyring is usable inside the sandbox")
    keys = Path("/proc/keys").read_text()
    assert token not in keys, f"ESCAPE: a key added in the sandbox is in the host keyring: {keys}"


def read_host(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return None


async def test_cannot_write_procfs_or_sysfs_tunables(make_sandbox: SandboxFactory) -> None:
    # Identical values for the dangerous ones (a success changes nothing); harmless +1 for the others.
    targets = {}
    for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/sys/kernel/uevent_helper"):
        value = read_host(path)
        if value is not None:
            targets[path] = value
    for path in ("/proc/sys/vm/swappiness", "/sys/kernel/mm/ksm/pages_to_scan", "/proc/sys/kernel/sysrq"):
        value = read_host(path)
        if value is not None and value.strip().isdigit():
            targets[path] = f"{int(value) + 1}\n"
    before = {path: read_host(path) for path in targets}
    sandbox = await make_sandbox()
    try:
        attack = await run_attack(
            sandbox,
            """
            for path, value in P["targets"].items():
                attempt(path, write, path, value)
            """,
            {"targets": targets},
        )
        assert_all_denied(attack, "kernel tunables were writable inside the sandbox")
        changed = [path for path, value in before.items() if read_host(path) != value]
        assert not changed, f"ESCAPE: the sandbox changed host kernel settings: {changed}"
    finally:
        for path, value in before.items():
            if value is not None and read_host(path) != value:
                with contextlib.suppress(OSError):
                    Path(path).write_text(value)


async def test_cannot_trigger_sysrq(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    # 'h' only prints help to the kernel log: harmless if the write ever got through.
    attack = await run_attack(sandbox, 'attempt("sysrq-trigger", write, "/proc/sysrq-trigger", "h")')
    assert_all_denied(attack, "/proc/sysrq-trigger is writable inside the sandbox")


async def test_cannot_load_kernel_modules_or_kexec(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        write("empty.ko", "")
        def finit():
            fd = os.open("empty.ko", os.O_RDONLY)
            try:
                return sys_call("finit_module", fd, b"", 0)
            finally:
                os.close(fd)
        attempt("finit_module", finit)
        attempt("init_module", sys_call, "init_module", None, 0, b"")
        attempt("delete_module", sys_call, "delete_module", b"corral_no_such_module", os.O_NONBLOCK)
        attempt("kexec_load", sys_call, "kexec_load", 0, 0, None, 0xDEAD0000)
        """,
    )
    # EPERM/ENOSYS mean refused; EINVAL/ENOEXEC/ENOENT would mean the capability check was passed.
    assert_all_denied(attack, "module or kexec syscalls are allowed", errnos=DENIED_BY_POLICY)


async def test_cannot_use_bpf(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_MAP_TYPE_ARRAY, BPF_PROG_TYPE_SOCKET_FILTER = 0, 5, 2, 1
        attr = ctypes.create_string_buffer(struct.pack("4I", BPF_MAP_TYPE_ARRAY, 4, 4, 1), 128)
        attempt("BPF_MAP_CREATE", sys_call, "bpf", BPF_MAP_CREATE, attr, 128)
        insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0))
        license = ctypes.create_string_buffer(b"GPL")
        prog = struct.pack("<IIQQ", BPF_PROG_TYPE_SOCKET_FILTER, 2, ctypes.addressof(insns), ctypes.addressof(license))
        attr = ctypes.create_string_buffer(prog, 128)
        attempt("BPF_PROG_LOAD", sys_call, "bpf", BPF_PROG_LOAD, attr, 128)
        """,
    )
    assert_all_denied(attack, "bpf() is usable inside the sandbox")


async def test_cannot_use_perf_event_open(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0
        flags = (1 << 0) | (1 << 5) | (1 << 6)  # disabled, exclude_kernel, exclude_hv
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("IIQ", attr, 0, PERF_TYPE_SOFTWARE, 128, PERF_COUNT_SW_CPU_CLOCK)
        struct.pack_into("Q", attr, 40, flags)
        attempt("perf_event_open self", sys_call, "perf_event_open", attr, 0, -1, -1, 0)
        """,
    )
    assert_all_denied(attack, "perf_event_open is usable inside the sandbox")


async def test_cannot_use_io_uring(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        params = ctypes.create_string_buffer(120)
        attempt("io_uring_setup", sys_call, "io_uring_setup", 4, params)
        """,
    )
    assert_all_denied(attack, "io_uring is usable inside the sandbox")


async def test_cannot_use_kernel_mode_userfaultfd(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    # Without UFFD_USER_MODE_ONLY a userfaultfd can stall kernel copies: a classic exploit primitive.
    attack = await run_attack(sandbox, 'attempt("userfaultfd", sys_call, "userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK)')
    assert_all_denied(attack, "kernel-mode userfaultfd is usable inside the sandbox")


async def test_cannot_change_the_host_hostname(make_sandbox: SandboxFactory, token: str) -> None:
    hostname, domainname = socket.gethostname(), read_host("/proc/sys/kernel/domainname")
    sandbox = await make_sandbox()
    name = token[-20:]
    try:
        attack = await run_attack(
            sandbox,
            """
            name = P["name"].encode()
            attempt("sethostname", sys_call, "sethostname", name, len(name))
            attempt("setdomainname", sys_call, "setdomainname", name, len(name))
            attempt("hostname binary", run_ok, ["hostname", P["name"]])
            attempt("/proc/sys/kernel/hostname", write, "/proc/sys/kernel/hostname", P["name"])
            """,
            {"name": name},
        )
        assert_all_denied(attack, "the sandbox could change its hostname")
        assert socket.gethostname() == hostname, f"ESCAPE: the host's hostname became {socket.gethostname()!r}"
        assert read_host("/proc/sys/kernel/domainname") == domainname, "ESCAPE: the host's domainname changed"
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        if socket.gethostname() != hostname:
            libc.sethostname(hostname.encode(), len(hostname))
        if domainname is not None and read_host("/proc/sys/kernel/domainname") != domainname:
            Path("/proc/sys/kernel/domainname").write_text(domainname)


async def test_cannot_chroot_or_pivot_root(make_sandbox: SandboxFactory) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        os.makedirs("jail", exist_ok=True)
        attempt("chroot(2) jail", in_child, sys_call, "chroot", b"jail")
        attempt("chroot(2) /", in_child, sys_call, "chroot", b"/")
        attempt("chroot binary", run_ok, ["chroot", "/", "true"])
        attempt("pivot_root . .", in_child, sys_call, "pivot_root", b".", b".")
        """,
    )
    assert_all_denied(attack, "chroot or pivot_root is allowed inside the sandbox", errnos=DENIED_BY_POLICY)


async def test_cannot_join_other_namespaces_with_setns(make_sandbox: SandboxFactory, host_process: HostProcess) -> None:
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        own = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in P["namespaces"]}
        def join(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                sys_call("setns", fd, 0)
            finally:
                os.close(fd)
        for pid in ("1", str(P["pid"])):
            for ns in P["namespaces"]:
                path = f"/proc/{pid}/ns/{ns}"
                try:
                    same = os.readlink(path) == own[ns]
                except OSError:
                    same = False
                if not same:  # joining the namespace one is already in is a no-op, not an escape
                    attempt(path, in_child, join, path)
        """,
        {"namespaces": [*NAMESPACES, "cgroup"], "pid": host_process.pid},
    )
    assert_all_denied(attack, "setns joined another namespace")


async def test_cannot_escape_through_cgroups(make_sandbox: SandboxFactory) -> None:
    agents = {str(path): path.read_text() for path in Path("/sys/fs/cgroup").glob("*/release_agent")}
    sandbox = await make_sandbox()
    attack = await run_attack(
        sandbox,
        """
        import glob
        for path in sorted(glob.glob("/sys/fs/cgroup/*/release_agent") + glob.glob("/sys/fs/cgroup/release_agent")):
            attempt("write " + path, write, path, P["agents"].get(path, ""))
        for path in sorted(glob.glob("/sys/fs/cgroup/*/notify_on_release")):
            current = read(path).decode() if os.access(path, os.R_OK) else "0\\n"
            attempt("write " + path, write, path, current)
        for path in sorted(glob.glob("/sys/fs/cgroup/cgroup.procs") + glob.glob("/sys/fs/cgroup/*/cgroup.procs")):
            attempt("move self to " + path, write, path, str(os.getpid()))
        os.makedirs("cg", exist_ok=True)
        attempt("mount cgroup v1", sys_call, "mount", b"cgroup", b"cg", b"cgroup", 0, b"memory")
        attempt("mount cgroup2", sys_call, "mount", b"cgroup2", b"cg", b"cgroup2", 0, None)
        """,
        {"agents": agents},
    )
    assert_all_denied(attack, "cgroup control files are writable inside the sandbox")
    changed = [path for path, value in agents.items() if Path(path).read_text() != value]
    assert not changed, f"ESCAPE: host cgroup release_agent changed: {changed}"


async def test_cannot_attach_host_sysv_shared_memory(make_sandbox: SandboxFactory) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    key = secrets.randbelow(2**30) + 1
    shm_id = libc.shmget(key, 4096, 0o1000 | 0o666)  # IPC_CREAT
    assert shm_id >= 0, f"could not create host shared memory: errno {ctypes.get_errno()}"
    try:
        sandbox = await make_sandbox()
        attack = await run_attack(
            sandbox,
            """
            libc.shmget.restype = ctypes.c_int
            def get():
                shm = libc.shmget(P["key"], 0, 0)
                if shm < 0:
                    raise OSError(ctypes.get_errno(), "shmget")
                return shm
            attempt("shmget host key", get)
            def listed():
                rows = read("/proc/sysvipc/shm").decode().splitlines()[1:]
                return require([row for row in rows if row.split()[0] == str(P["key"])], "not listed")
            attempt("listed in /proc/sysvipc/shm", listed)
            """,
            {"key": key},
        )
        assert_all_denied(attack, "the host's System V shared memory is reachable inside")
    finally:
        libc.shmctl(shm_id, 0, None)  # IPC_RMID


async def test_cannot_open_host_files_by_handle(make_sandbox: SandboxFactory, tmp_path: Path) -> None:
    sandbox = await make_sandbox()
    syscall_table()
    attack = await run_attack(
        sandbox,
        """
        # "Shocker": forge a file handle for the root inode of the filesystem under the workspace.
        def forged(inode, generation=0, handle_type=1):
            packed = struct.pack("Ii", 8, handle_type) + struct.pack("II", inode, generation)
            handle = ctypes.create_string_buffer(packed)
            mount_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                fd = sys_call("open_by_handle_at", mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
            finally:
                os.close(mount_fd)
            try:
                return sorted(os.listdir(fd))[:50]
            finally:
                os.close(fd)
        attempt("forged handle for inode 2", forged, 2)
        def real_handle():
            handle = ctypes.create_string_buffer(struct.pack("Ii", 128, 0), 8 + 128)
            mount_id = ctypes.c_int()
            sys_call("name_to_handle_at", -100, b"README.md", handle, ctypes.byref(mount_id), 0)
            return list(struct.unpack_from("Ii", handle, 0))
        info = attempt("name_to_handle_at", real_handle)
        RESULTS.pop("name_to_handle_at")
        if info["ok"]:
            size, handle_type = info["value"]
            if size == 8:
                attempt("forged handle of the real type for inode 2", forged, 2, 0, handle_type)
        """,
    )
    assert_all_denied(attack, "open_by_handle_at opened a host inode outside the workspace")
