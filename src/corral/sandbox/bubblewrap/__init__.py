"""The bubblewrap sandbox backend: Linux namespaces, seccomp, cgroups, an overlay workspace on a disk image."""

from corral.sandbox.bubblewrap.backend import BubblewrapSandboxBackend

__all__ = ["BubblewrapSandboxBackend"]
