"""Sandboxes: a fresh workspace per run plus process execution, behind one contract and many backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "EgressAttempted",
    "ExecResult",
    "Limits",
    "NetworkProfile",
    "Sandbox",
    "SandboxBackend",
    "SandboxRequest",
    "ScopedSecret",
    "available_backends",
    "close_backends",
    "get_backend",
    "mark_run_ended",
    "run_ended",
]

if TYPE_CHECKING:
    from corral.events import EgressAttempted
    from corral.sandbox.base import (
        ExecResult,
        Sandbox,
        SandboxBackend,
        SandboxRequest,
        ScopedSecret,
        available_backends,
        close_backends,
        get_backend,
        mark_run_ended,
        run_ended,
    )
    from corral.sandbox.types import Limits, NetworkProfile

# Lazy, so that `corral.spec` importing `corral.sandbox.types` loads that module and the pattern
# parser, not the whole sandbox contract.
_LAZY = {
    "EgressAttempted": "corral.events",
    "Limits": "corral.sandbox.types",
    "NetworkProfile": "corral.sandbox.types",
    **{
        name: "corral.sandbox.base"
        for name in (
            "ExecResult",
            "Sandbox",
            "SandboxBackend",
            "SandboxRequest",
            "ScopedSecret",
            "available_backends",
            "close_backends",
            "get_backend",
            "mark_run_ended",
            "run_ended",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'corral.sandbox' has no attribute {name!r}")
