"""Who sandboxed processes are: a dedicated unprivileged host uid per sandbox, and uid 1000 inside."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from corral.errors import SandboxError

SANDBOX_UID_BASE = int(os.environ.get("CORRAL_SANDBOX_UID_BASE", "2000000000"))
"""First host uid (and gid) handed to sandboxes when corral runs as root; no account may use the range."""
SANDBOX_UID_COUNT = int(os.environ.get("CORRAL_SANDBOX_UID_COUNT", "65536"))
REGISTRY_DIR = Path(os.environ.get("CORRAL_SANDBOX_UID_DIR", "/run/corral/sandbox-uids"))
"""One file per claimed uid, naming the run dir that holds it."""

INSIDE_UID = 1000
INSIDE_GID = 1000
INSIDE_USER = "corral"
INSIDE_HOME = "/home/corral"
INSIDE_SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
"""The login shell in the sandbox's passwd and $SHELL: the host's /bin is the sandbox's."""


def runs_as_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Held while claims change hands: a sweep decides under it, a pool hands a sandbox over under it."""
    try:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(REGISTRY_DIR / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SandboxError(f"cannot use the sandbox uid registry {REGISTRY_DIR}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim_uid(owner: Path, *, state_dirname: str) -> int:
    """Claim the lowest free sandbox uid for ``owner`` (a run dir).

    A claim whose owner no longer holds a ``state_dirname`` directory (its sandbox state) is stale,
    left by a crash, and is taken over. The lowest free uid is reused first, so the idmapped-mount
    user namespaces cached per uid are mostly hits.
    """
    if not runs_as_root():
        return os.getuid()
    record = str(owner).encode()
    with registry_lock():
        for slot in range(SANDBOX_UID_COUNT):
            uid = SANDBOX_UID_BASE + slot
            path = REGISTRY_DIR / str(uid)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                holder = _read(path)
                if holder is None or (holder != record and (Path(os.fsdecode(holder)) / state_dirname).is_dir()):
                    continue
                path.write_bytes(record)  # ours already, or stale: take it over
                return uid
            with os.fdopen(fd, "wb") as handle:
                handle.write(record)
            return uid
    raise SandboxError(
        f"all {SANDBOX_UID_COUNT} sandbox uids are in use",
        hint="destroy finished sandboxes, or raise CORRAL_SANDBOX_UID_COUNT",
    )


def reclaim_uid(uid: int, owner: Path, *, state_dirname: str) -> bool:
    """Claim ``uid`` again for ``owner`` (re-attaching); False if another live sandbox holds it."""
    if not runs_as_root():
        return uid == os.getuid()
    record = str(owner).encode()
    path = REGISTRY_DIR / str(uid)
    with registry_lock():
        holder = _read(path)
        if holder not in (None, record) and (Path(os.fsdecode(holder)) / state_dirname).is_dir():
            return False
        path.write_bytes(record)
    return True


def release_uid(uid: int, owner: Path) -> None:
    """Give a claimed uid back; only the owner's claim is removed."""
    if not runs_as_root() or not SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_COUNT:
        return
    path = REGISTRY_DIR / str(uid)
    with registry_lock():
        if _read(path) == str(owner).encode():
            path.unlink(missing_ok=True)


def claims(*, locked: bool = False) -> dict[int, Path]:
    """Every claimed sandbox uid and the run dir it names (root only; empty otherwise).

    ``locked``: the caller holds ``registry_lock()`` already.
    """
    if not runs_as_root() or not REGISTRY_DIR.is_dir():
        return {}
    with contextlib.nullcontext() if locked else registry_lock():
        found: dict[int, Path] = {}
        for path in REGISTRY_DIR.iterdir():
            holder = _read(path) if path.name.isdigit() else None
            if holder is not None:
                found[int(path.name)] = Path(os.fsdecode(holder))
    return found


def hand_over_uid(uid: int, old: Path, new: Path) -> None:
    """Move ``old``'s claim of ``uid`` to ``new`` (the caller holds ``registry_lock()``)."""
    path = REGISTRY_DIR / str(uid)
    if _read(path) != str(old).encode():
        raise SandboxError(f"sandbox uid {uid} is not held by {old}")
    partial = path.with_name(f".{uid}.tmp")
    partial.write_bytes(str(new).encode())
    partial.replace(path)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def passwd_entries(host_home: str = INSIDE_HOME) -> tuple[str, str]:
    """The sandbox's /etc/passwd and /etc/group: root, the sandbox user and nobody, nothing from the host."""
    passwd = (
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
        f"{INSIDE_USER}:x:{INSIDE_UID}:{INSIDE_GID}:corral sandbox:{host_home}:{INSIDE_SHELL}\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\n{INSIDE_USER}:x:{INSIDE_GID}:\nnogroup:x:65534:\n"
    return passwd, group
