"""What a sandbox sees: read-only system dirs, a curated /etc, private /tmp and home, and the bwrap flags for it."""

from __future__ import annotations

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


def _etc_cache_root() -> Path:
    if os.geteuid() == 0:
        return Path("/run/corral/etc")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime, "corral", "etc") if runtime else Path.home() / ".cache" / "corral" / "etc"


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
    target = _etc_cache_root() / f"{digest.hexdigest()[:20]}-{'host' if host else 'isolated'}"
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
    workspace: Path,
    extra: Sequence[str] = (),
) -> list[str]:
    """The bwrap command line up to (not including) the per-exec flags."""
    return [
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
        "--ro-bind",
        str(etc_dir),
        "/etc",
        *etc_extra,
        "--proc",
        "/proc",
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
        str(workspace),
        *extra,
        "--remount-ro",
        "/",
    ]
