"""What a sandbox sees: read-only system dirs, a curated /etc and /sys, private /tmp and home, /workspace,
and the bwrap flags for it."""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from corral.sandbox.bubblewrap.identity import INSIDE_GID, INSIDE_HOME, INSIDE_UID, passwd_entries

HOSTNAME = "corral"
WORKSPACE = "/workspace"
"""Where every sandbox sees its workspace, whatever its host path: a venv made inside survives a resume."""
PACKAGE_CACHE = "/var/cache/corral"
"""Where the package cache appears when a sandbox has one (pip/, npm/ and uv/ inside)."""

SYSTEM_DIRS = ("/usr",)
"""Bound read-only; the merged-/usr links (/bin, /lib, ...) are recreated as links, or bound if real dirs."""
SYSTEM_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

HOST_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "locale.alias",
    "protocols",
    "services",
    "networks",
    "rpc",
    "gai.conf",
    "host.conf",
    "mime.types",
    "magic",
    "magic.mime",
    "iproute2",
    "perl",
    "python3",
    "python3.*",
    "java-*",
    "maven",
)
"""Host /etc entries a build needs, copied into the sandbox's /etc. Never /etc whole: not shadow, ssl/private,
pip.conf, npmrc or gitconfig."""


HOST_CONFIG_FILES = (
    "/usr/etc/npmrc",
    "/usr/local/etc/npmrc",
    "/usr/lib/node_modules/npm/npmrc",
    "/usr/local/lib/node_modules/npm/npmrc",
    "/usr/etc/gitconfig",
    "/usr/local/etc/gitconfig",
    "/usr/pip.conf",
    "/usr/local/pip.conf",
    "/usr/etc/pip.conf",
    "/usr/local/etc/pip.conf",
    "/usr/etc/yarnrc",
    "/usr/local/etc/yarnrc",
)
"""Configuration files under the /usr bind that tools read on their own (npm's global and builtin npmrc,
git's system config of a /usr/local build, pip's site config): a global npmrc may carry a registry token,
and any of them can point clients at the host's CA or proxy. Each one that exists is hidden by an empty file."""

SYS_HIDDEN = ("fs", "firmware")
"""Top-level /sys entries not shown: fs holds every cgroup of the host (the sandbox gets its own instead);
firmware holds ACPI tables and EFI variables, which no build reads."""


@functools.cache
def system_args() -> tuple[str, ...]:
    """bwrap flags for /usr and the top-level system links; computed once per process."""
    args: list[str] = []
    for directory in SYSTEM_DIRS:
        if os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for entry in SYSTEM_TOP_LEVEL:
        if os.path.islink(entry):
            args += ["--symlink", os.readlink(entry), entry]
        elif os.path.isdir(entry):
            args += ["--ro-bind", entry, entry]
    return tuple(args)


@functools.cache
def masked_config_args() -> tuple[str, ...]:
    """bwrap flags that put an empty file over each host configuration file in ``HOST_CONFIG_FILES``."""
    args: list[str] = []
    seen: set[str] = set()
    for name in HOST_CONFIG_FILES:
        real = os.path.realpath(name)
        # The mount point must be a file the sandbox sees at that path: under /usr, reached without links.
        if real in seen or not os.path.isfile(real) or not real.startswith("/usr/"):
            continue
        seen.add(real)
        args += ["--ro-bind", str(_empty_file()), real]
    return tuple(args)


@functools.cache
def sys_args(*, network: str) -> tuple[str, ...]:
    """/sys read-only, without the host's cgroups and firmware; without the host's interfaces unless networked."""
    args: list[str] = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir("/sys")):
            path = f"/sys/{name}"
            if name not in SYS_HIDDEN and os.path.isdir(path) and not os.path.islink(path):
                args += ["--ro-bind", path, path]
    if network != "host" and os.path.isdir("/sys/class/net"):
        # An empty, read-only tmpfs: the host's interfaces are not this sandbox's (it has loopback only).
        args += ["--tmpfs", "/sys/class/net", "--remount-ro", "/sys/class/net"]
    return tuple(args)


def meminfo_file(memory_mb: int) -> Path:
    """A /proc/meminfo that says the machine has ``memory_mb``, for tools that size themselves from it.

    Like lxcfs, but static: total, free and available are all the limit, so ``free`` shows nothing
    used. Every other size is zero except the page and address-space sizes, which are the host's.
    """
    return _meminfo_file(memory_mb, Path("/proc/meminfo").read_text())


_MEMINFO_AS_LIMIT = frozenset({"MemTotal", "MemFree", "MemAvailable"})
_MEMINFO_AS_HOST = frozenset({"Hugepagesize", "VmallocTotal"})


@functools.cache
def _meminfo_file(memory_mb: int, host: str) -> Path:
    lines: list[str] = []
    for line in host.splitlines():
        name, _, value = line.partition(":")
        fields = value.split()
        if len(fields) == 2 and fields[1] == "kB" and name not in _MEMINFO_AS_HOST:
            kib = memory_mb * 1024 if name in _MEMINFO_AS_LIMIT else 0
            line = f"{name + ':':<16}{kib:>8} kB"
        lines.append(line)
    return _cached_file("meminfo", "\n".join(lines) + "\n")


def _empty_file() -> Path:
    return _cached_file("empty", "")


def _cached_file(kind: str, content: str) -> Path:
    """A read-only file holding ``content`` under the cache root, shared by every sandbox (named by its hash)."""
    digest = hashlib.sha256(content.encode()).hexdigest()[:20]
    target = _cache_root() / "files" / f"{kind}-{digest}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)
    fd, temporary = tempfile.mkstemp(prefix=".building-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        os.chmod(temporary, 0o444)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


@functools.cache
def _host_etc_entries() -> tuple[tuple[str, str], ...]:
    """(name under /etc, kind) for the host entries that exist: "link", "dir" or "file"."""
    found: list[tuple[str, str]] = []
    for pattern in HOST_ETC:
        for path in sorted(glob.glob(f"/etc/{pattern}")):
            name = path.removeprefix("/etc/")
            if os.path.islink(path):
                found.append((name, "link"))
            elif os.path.isdir(path):
                found.append((name, "dir"))
            elif os.path.isfile(path):
                found.append((name, "file"))
    return tuple(found)


def _generated_files(*, network: str) -> dict[str, str]:
    passwd, group = passwd_entries(INSIDE_HOME)
    files = {
        "passwd": passwd,
        "group": group,
        "hostname": f"{HOSTNAME}\n",
        "hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback {HOSTNAME}\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
        "protocols: files\nservices: files\nethers: files\nrpc: files\n",
    }
    if network != "host":
        # No resolver: name lookups fail at once instead of timing out (allowlist traffic goes to the proxy).
        files["resolv.conf"] = ""
    return files


def _cache_root() -> Path:
    """Where the files every sandbox shares (its /etc, an empty file, meminfo) are built: readable by all."""
    if os.geteuid() == 0:
        return Path("/run/corral")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime, "corral") if runtime else Path.home() / ".cache" / "corral"


@functools.cache
def etc_template(*, network: str) -> tuple[Path, tuple[str, ...]]:
    """The sandbox's /etc, built once per process (and shared on disk): one bind instead of dozens.

    Returns the directory and the extra flags it needs (host networking binds the live resolv.conf, which
    changes under a running process). The directory name hashes every input, so a changed host file
    gives a new template; a running process keeps the one it started with.
    """
    host = network == "host"
    entries = list(_host_etc_entries())
    digest = hashlib.sha256(json.dumps([sorted(_generated_files(network=network).items()), host]).encode())
    for name, kind in entries:
        path = f"/etc/{name}"
        info = os.lstat(path)
        detail = os.readlink(path) if kind == "link" else f"{info.st_mtime_ns}:{info.st_size}"
        digest.update(f"{name}\0{kind}\0{detail}\0".encode())
    target = _cache_root() / "etc" / f"{digest.hexdigest()[:20]}-{'host' if host else 'isolated'}"
    extra: tuple[str, ...] = ("--ro-bind", os.path.realpath("/etc/resolv.conf"), "/etc/resolv.conf") if host else ()
    if target.is_dir():
        return target, extra
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for name, content in _generated_files(network=network).items():
            (building / name).write_text(content)
        if host:
            (building / "resolv.conf").touch()  # the mount point for the live file
        for name, kind in entries:
            source, copy = Path("/etc", name), building / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            if kind == "link":
                copy.symlink_to(os.readlink(source))
            elif kind == "dir":
                shutil.copytree(source, copy, symlinks=True)
            else:
                shutil.copy2(source, copy)
        for directory, _subdirs, _files in os.walk(building):
            os.chmod(directory, 0o755)
        try:
            building.rename(target)
        except OSError:  # another process built the same template first
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target, extra


def namespace_args(*, network: str) -> list[str]:
    args = ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if network != "host":
        args.append("--unshare-net")  # bwrap brings up lo inside
    return args


def sandbox_args(
    *,
    bwrap: str,
    network: str,
    etc_dir: Path,
    etc_extra: Sequence[str],
    tmp_dir: Path,
    home_dir: Path,
    workspace_source: Path,
    meminfo: Path | None = None,
    cgroup_binds: Sequence[tuple[Path, str]] = (),
    binds: Sequence[tuple[Path, str]] = (),
    ro_binds: Sequence[tuple[Path, str]] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The bwrap command line up to (not including) the per-exec flags.

    ``cgroup_binds`` show the sandbox's own cgroups under /sys/fs/cgroup; ``binds`` and ``ro_binds``
    are further host directories (the package cache, the profile's mounts) and where they appear.
    """
    args = [
        bwrap,
        *namespace_args(network=network),
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--uid",
        str(INSIDE_UID),
        "--gid",
        str(INSIDE_GID),
        "--hostname",
        HOSTNAME,
        "--disable-userns",
        *system_args(),
        *masked_config_args(),
        "--ro-bind",
        str(etc_dir),
        "/etc",
        *etc_extra,
        "--proc",
        "/proc",
    ]
    if meminfo is not None:
        args += ["--ro-bind", str(meminfo), "/proc/meminfo"]
    args += sys_args(network=network)
    for source, target in cgroup_binds:
        args += ["--ro-bind", str(source), target]
    args += [
        "--dev",
        "/dev",
        "--bind",
        str(tmp_dir),
        "/tmp",
        "--symlink",
        "../tmp",
        "/var/tmp",
        "--bind",
        str(home_dir),
        INSIDE_HOME,
        "--bind",
        str(workspace_source),
        WORKSPACE,
    ]
    for source, target in binds:
        args += ["--bind", str(source), target]
    for source, target in ro_binds:
        args += ["--ro-bind", str(source), target]
    return [*args, *extra, "--remount-ro", "/"]
