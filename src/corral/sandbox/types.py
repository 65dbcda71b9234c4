"""What a sandbox may reach and use: the network profile and limits that agent specs embed as they are.

This module imports nothing above the ground (errors) but the egress proxy's own pattern parser, so
``corral.spec`` can use these types and a spec that loads is a spec the sandbox accepts.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from corral.errors import SandboxError
from corral.sandbox.egress.policy import HostPattern


def _host_pattern(text: str) -> str:
    try:
        HostPattern.parse(text)
    except SandboxError as exc:
        raise ValueError(f"{exc.message}; {exc.hint}" if exc.hint else exc.message) from None
    return text


HostPatternText = Annotated[str, AfterValidator(_host_pattern)]
"""``host``, ``host:port`` or ``*.domain``, checked by the parser the egress proxy itself uses."""


class NetworkProfile(BaseModel):
    """What a sandbox may reach. ``none``: loopback only; ``allowlist``: the listed hosts, through the
    host's egress proxy; ``host``: the host's network, unfiltered (explicit opt-in)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["none", "allowlist", "host"] = "none"
    allow: tuple[HostPatternText, ...] = ()
    """``host``, ``host:port`` or ``*.domain`` (any subdomain); a host without a port allows 80 and 443."""

    @model_validator(mode="after")
    def _allow_needs_allowlist(self) -> NetworkProfile:
        if self.allow and self.mode != "allowlist":
            raise ValueError(f'allow is only used with mode = "allowlist" (mode is {self.mode!r})')
        return self


class Limits(BaseModel):
    """Resource limits of one sandbox; ``None`` leaves a limit off. Backends say which they enforce."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: Annotated[int, Field(gt=0)] | None = 4096
    pids: Annotated[int, Field(gt=0)] | None = 4096
    """Processes and threads together (the kernel counts both): a test runner may start hundreds of threads."""
    cpu_s: Annotated[int, Field(gt=0)] | None = None
    """CPU seconds per command."""
    disk_mb: Annotated[int, Field(gt=0)] | None = 10_240
    """Space the workspace may grow by."""


def _one_line(text: str) -> str:
    if not text.strip() or any(char in text for char in "\n\r\0"):
        raise ValueError("must be one non-empty line")
    return text


class GitUser(BaseModel):
    """Who the sandbox's ``git commit`` names as author and committer (set through GIT_AUTHOR_* and
    GIT_COMMITTER_*, so it overrides the repository's own ``user.name``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, AfterValidator(_one_line)] = "corral agent"
    email: Annotated[str, AfterValidator(_one_line)] = "agent@corral.invalid"

    def env(self) -> dict[str, str]:
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


PackageCache = Literal["off", "read-only", "read-write"]
"""Whether a sandbox sees the per-user package cache (pip, npm, uv), and whether its writes reach it."""

RESERVED_MOUNT_PATHS = ("/etc", "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/workspace", "/home/corral")
"""Where a sandbox mounts its own things (or must never see the host's): no host mount at or under them."""
SYSTEM_MOUNT_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Already visible read-only in every sandbox."""
PRIVATE_MOUNT_PATHS = ("/", "/home", "/root")
"""Whole trees of the host (every user's files): refused as such; a directory inside may be mounted."""


def _mount_path(text: str) -> str:
    """A host directory to mount read-only at the same path: absolute, normal, and nowhere the sandbox is."""
    if not text.startswith("/"):
        raise ValueError(f"mount {text!r} must be an absolute path")
    if posixpath.normpath(text) != text or text.startswith("//"):
        raise ValueError(f"mount {text!r} is not in normal form (write {posixpath.normpath(text)!r})")
    path = PurePosixPath(text)
    if text in PRIVATE_MOUNT_PATHS:
        raise ValueError(f"mount {text!r}: the whole of {text} may not be mounted; name the directory you need")
    for reserved in RESERVED_MOUNT_PATHS:
        if path.is_relative_to(reserved):
            raise ValueError(f"mount {text!r} is under {reserved}, which the sandbox provides itself")
    for system in SYSTEM_MOUNT_PATHS:
        if path.is_relative_to(system):
            raise ValueError(f"mount {text!r} is under {system}, which every sandbox already sees read-only")
    return text


MountPath = Annotated[str, AfterValidator(_mount_path)]
"""A host directory (a toolchain, a virtualenv) that a sandbox sees read-only at the same path."""


def _distinct(paths: tuple[str, ...]) -> tuple[str, ...]:
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise ValueError(f"mounted more than once: {', '.join(repeated)}")
    return paths


Mounts = Annotated[tuple[MountPath, ...], AfterValidator(_distinct)]
