"""The control plane's HTTP API (``corral serve``): FastAPI over the store, runs executed by workers."""

from corral.server.app import create_app

__all__ = ["create_app"]
