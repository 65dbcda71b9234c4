"""Named host sets for the egress allowlist (``@python``, ``@node``, ...) and the one place they are expanded.

A network profile keeps ``@python`` as written, so the journal shows what the spec asked for; the
proxy (and anything that lists the hosts) expands it here. Like ``policy``, this imports nothing
but ``corral.errors`` and the pattern parser, so ``corral.sandbox.types`` can check entries with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from corral.errors import SandboxError
from corral.sandbox.egress.policy import HostPattern, split_authority

PRESETS: dict[str, tuple[str, ...]] = {
    "python": ("pypi.org", "files.pythonhosted.org"),
    "node": ("registry.npmjs.org", "registry.yarnpkg.com"),
    "debian": ("deb.debian.org", "security.debian.org"),
    "github": (
        "github.com",
        "api.github.com",
        "codeload.github.com",
        "*.githubusercontent.com",
        "objects.githubusercontent.com",
    ),
}
"""Preset name (without ``@``) to its host patterns; every one allows ports 80 and 443."""


def is_preset(entry: str) -> bool:
    return entry.strip().startswith("@")


def preset_patterns(entry: str) -> tuple[str, ...]:
    """The patterns of ``@name``; SandboxError naming the known presets for any other name."""
    name = entry.strip()[1:]
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(f"@{known}" for known in PRESETS)
        raise SandboxError(f"unknown host preset {entry.strip()!r}", hint=f"known presets: {known}") from None


def check_entry(entry: str, *, ports: bool = True) -> None:
    """SandboxError unless ``entry`` is a known ``@preset`` or a host pattern (without a port unless ``ports``)."""
    if is_preset(entry):
        preset_patterns(entry)
        return
    HostPattern.parse(entry)
    if not ports and split_authority(entry.strip().removeprefix("*."), default_port=0)[1]:
        raise SandboxError(
            f"{entry!r}: allow_private names hosts, not ports",
            hint="write the host (or '*.domain' or '@preset') here; its ports are the ones `allow` lists",
        )


def expand(entries: Iterable[str]) -> tuple[HostPattern, ...]:
    """The host patterns of allowlist entries, presets replaced by their hosts (which remember the preset)."""
    patterns: list[HostPattern] = []
    for entry in entries:
        if is_preset(entry):
            name = entry.strip()[1:]
            patterns += [dataclasses.replace(HostPattern.parse(text), preset=name) for text in preset_patterns(entry)]
        else:
            patterns.append(HostPattern.parse(entry))
    return tuple(patterns)


def expanded_texts(entries: Iterable[str]) -> tuple[str, ...]:
    """The entries as plain host patterns, presets expanded, duplicates dropped: for listings."""
    return tuple(dict.fromkeys(pattern.text for pattern in expand(entries)))
