"""What a sandbox may reach and use: the network profile and limits that agent specs embed as they are.

This module imports nothing above the ground (errors) but the egress proxy's own pattern parser, so
``corral.spec`` can use these types and a spec that loads is a spec the sandbox accepts.
"""

from __future__ import annotations

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
    pids: Annotated[int, Field(gt=0)] | None = 512
    cpu_s: Annotated[int, Field(gt=0)] | None = None
    """CPU seconds per command."""
    disk_mb: Annotated[int, Field(gt=0)] | None = 10_240
    """Space the workspace may grow by."""
