"""Whether the process behind an executor is alive: its pid on this host, its heartbeat elsewhere."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STALE_HEARTBEAT_S = 30.0
"""An executor on another host whose heartbeat is older than this is gone (it beats every 5 s)."""


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (not Linux), or it exited just now: os.kill said it was there
    # The command name in parentheses may itself contain spaces and parentheses: split after the last.
    state = stat[stat.rfind(")") + 2 :][:1]
    return state not in ("Z", "X")


def executor_alive(host: str, pid: int, heartbeat_at: float, *, this_host: str, now: float) -> bool:
    """On this host the pid decides (a heartbeat can lag behind a busy process); elsewhere the heartbeat."""
    if host == this_host:
        return process_alive(pid)
    return now - heartbeat_at <= STALE_HEARTBEAT_S


def live_ids(executors: Iterable[Any]) -> set[str]:
    """The ids of the live ones among executor rows (anything with ``id``, ``host``, ``pid``, ``heartbeat_at``)."""
    this_host, now = socket.gethostname(), time.time()
    return {e.id for e in executors if executor_alive(e.host, e.pid, e.heartbeat_at, this_host=this_host, now=now)}
