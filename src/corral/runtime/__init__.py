"""The runtime: runs as durable workflows (``workflow`` is the only DBOS importer), recovery, sandboxes."""

from corral.runtime.runtime import PATCH_FILE, Runtime, new_run_id

__all__ = ["PATCH_FILE", "Runtime", "new_run_id"]
