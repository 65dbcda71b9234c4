"""What a sandbox may reach and use: the network profile and limits that agent specs embed as they are.

This module imports nothing above the ground (errors) but the egress proxy's own pattern parser and
presets, so ``corral.spec`` can use these types and a spec that loads is a spec the sandbox accepts.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from corral.errors import SandboxError
from corral.sandbox.egress.policy import UPSTREAM_FROM_ENV, HostPattern, UpstreamProxy, redact_url
from corral.sandbox.egress.presets import check_entry


def _as_value_error(exc: SandboxError) -> ValueError:
    """The egress parser's SandboxError as the ValueError pydantic reports with the field's path."""
    return ValueError(f"{exc.message}; {exc.hint}" if exc.hint else exc.message)


def _host_pattern(text: str) -> str:
    try:
        HostPattern.parse(text)
    except SandboxError as exc:
        raise _as_value_error(exc) from None
    return text


def _allow_entry(text: str) -> str:
    try:
        check_entry(text)
    except SandboxError as exc:
        raise _as_value_error(exc) from None
    return text


def _allow_private(value: object) -> object:
    """``true``/``false`` or a list of names; checked whole so a bad entry gets one message, not one per type."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, list | tuple) or not all(isinstance(entry, str) for entry in value):
        raise ValueError("allow_private is true, false or a list of hosts ('pypi.org', '*.corp.example', '@python')")
    for entry in value:
        try:
            check_entry(entry, ports=False)
        except SandboxError as exc:
            raise _as_value_error(exc) from None
    return tuple(value)


def _upstream_proxy(text: str) -> str:
    if text != UPSTREAM_FROM_ENV:
        try:
            UpstreamProxy.parse(text)
        except SandboxError as exc:
            raise _as_value_error(exc) from None
    return text


HostPatternText = Annotated[str, AfterValidator(_host_pattern)]
"""``host``, ``host:port`` or ``*.domain``, checked by the parser the egress proxy itself uses."""
AllowEntry = Annotated[str, AfterValidator(_allow_entry)]
"""A ``HostPatternText`` or a preset such as ``@python`` (``corral.sandbox.egress.presets``)."""


class NetworkProfile(BaseModel):
    """What a sandbox may reach. ``none``: loopback only (a deny-all proxy answers, naming the policy);
    ``allowlist``: the listed hosts, through the host's egress proxy; ``host``: the host's network,
    unfiltered (explicit opt-in). The other fields tune ``allowlist`` and are refused with other modes."""

    # An upstream proxy URL may carry a password: errors name the field, never echo the input.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    mode: Literal["none", "allowlist", "host"] = "none"
    allow: tuple[AllowEntry, ...] = ()
    """``host``, ``host:port``, ``*.domain`` (any subdomain) or ``@preset``; a host without a port allows 80 and 443."""
    allow_private: Annotated[bool | tuple[str, ...], BeforeValidator(_allow_private)] = False
    """Allowed names may resolve to private or reserved addresses (corporate mirrors): ``true`` for every
    allowed host, or a list of the hosts (patterns, presets) that may. Loopback, link-local, multicast
    and unspecified addresses stay refused for names even then."""
    intercept_tls: bool = False
    """Terminate TLS of every CONNECT with the sandbox's CA (scoped secrets turn this on by themselves)."""
    upstream_proxy: Annotated[str, AfterValidator(_upstream_proxy)] | None = None
    """``http://[user:pass@]host:port`` of a proxy to reach every allowed host through, or ``"env"``:
    the one in corral's environment (HTTPS_PROXY, then HTTP_PROXY, honouring NO_PROXY) when the
    sandbox is created or re-opened."""

    @model_validator(mode="after")
    def _options_need_allowlist(self) -> NetworkProfile:
        if self.mode == "allowlist":
            return self
        given = {
            "allow": bool(self.allow),
            "allow_private": bool(self.allow_private),
            "intercept_tls": self.intercept_tls,
            "upstream_proxy": self.upstream_proxy is not None,
        }
        for name, set_ in given.items():
            if set_:
                raise ValueError(f'{name} is only used with mode = "allowlist" (mode is {self.mode!r})')
        return self

    def redacted(self) -> NetworkProfile:
        """This profile with the upstream proxy's credentials removed: what the journal records."""
        if self.upstream_proxy is None or self.upstream_proxy == UPSTREAM_FROM_ENV:
            return self
        return self.model_copy(update={"upstream_proxy": redact_url(self.upstream_proxy)})


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

SANDBOX_PYTHON = "/usr/bin/python3"
"""The Python corral's own helpers inside an isolated sandbox run under (the egress relay, the resident init)."""

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
