"""What a sandbox may reach and use: the network profile and limits that agent specs embed as they are.

This module imports nothing above the ground (errors) but the egress proxy's own pattern parser and
presets, so ``corral.spec`` can use these types and a spec that loads is a spec the sandbox accepts.
"""

from __future__ import annotations

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
    pids: Annotated[int, Field(gt=0)] | None = 512
    cpu_s: Annotated[int, Field(gt=0)] | None = None
    """CPU seconds per command."""
    disk_mb: Annotated[int, Field(gt=0)] | None = 10_240
    """Space the workspace may grow by."""
