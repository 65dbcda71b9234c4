"""Sandboxes: a fresh workspace per run plus process execution, behind one contract and many backends."""

from corral.sandbox.base import (
    EgressEvent,
    ExecResult,
    Limits,
    NetworkProfile,
    Sandbox,
    SandboxBackend,
    SandboxRequest,
    ScopedSecret,
    available_backends,
    get_backend,
)

__all__ = [
    "EgressEvent",
    "ExecResult",
    "Limits",
    "NetworkProfile",
    "Sandbox",
    "SandboxBackend",
    "SandboxRequest",
    "ScopedSecret",
    "available_backends",
    "get_backend",
]
