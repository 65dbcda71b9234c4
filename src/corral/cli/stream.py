"""The JSON event stream of ``corral run --json``: one versioned JSON object per line, as the journal commits events.

The schema is documented in docs/events.md. Every line is an object with ``"v"`` (this module's
:data:`STREAM_VERSION`) and ``"type"``. Event lines are a journal entry as ``corral trace --json``
lists it (``run_id``, ``seq``, ``key``, ``type``, ``ts``, ``duration_ms``, ``data``); the last line
is the ``result`` of the run. Lines follow the journal because they are written by a journal
listener once each event is committed: in ``seq`` order, redacted, and never twice (an event that a
resumed run regenerates is already in the journal, so it is not written again).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import IO, Any

from corral.store import EventRecord, RunRecord

STREAM_VERSION = 1
"""Bumped only by a change a v1 reader could misread (a field removed, renamed or given a new meaning);
new fields and new event types keep version 1 (see docs/events.md)."""

RESULT = "result"


def event_line(record: EventRecord) -> dict[str, Any]:
    """One journal event as a stream line."""
    return {"v": STREAM_VERSION, **record.to_json()}


def result_line(
    record: RunRecord,
    *,
    exit_code: int,
    branch: dict[str, str] | None = None,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """The stream's last line: how the run ended, its answer, its patch and what it cost.

    ``status`` is what a person sees (``interrupted`` when the command was stopped before the run
    ended); ``resume_command`` is then the command that continues it.
    """
    result = record.result or {}
    usage = record.usage
    return {
        "v": STREAM_VERSION,
        "type": RESULT,
        "run_id": record.id,
        "status": record.display_status,
        "exit_code": exit_code,
        "agent": record.agent,
        "continues_id": record.continues_id,
        "text": result.get("text"),
        "output": result.get("output"),
        "patch": result.get("patch", ""),
        "files_changed": result.get("files_changed", 0),
        "patch_secrets": result.get("patch_secrets", []),
        "notes": result.get("notes", []),
        "error": record.error,
        "error_type": record.error_type,
        "turns": record.turns,
        "elapsed_s": record.elapsed_s,
        "usage": usage.model_dump(),
        "cost_usd": usage.cost_usd,
        "cost_known": usage.cost_known,
        "branch": branch,
        "resume_command": resume_command,
    }


class JsonLines:
    """Writes stream lines to ``out``, each flushed as it is written.

    Thread-safe: the journal calls :meth:`on_event` from its writer thread. When the reader goes
    away (``corral run --json | head -1``) the lines stop, the run goes on to its end and is recorded,
    and the rest of what would reach the closed pipe goes to ``/dev/null``: a broken pipe is the
    reader's choice, not an error of the run.
    """

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self.reader_gone = False

    def on_event(self, record: EventRecord) -> None:
        self.write(event_line(record))

    def write(self, line: dict[str, Any]) -> None:
        text = json.dumps(line) + "\n"  # ASCII: control and bidi characters arrive escaped
        with self._lock:
            if self.reader_gone:
                return
            try:
                self._out.write(text)
                self._out.flush()
            except BrokenPipeError:
                self.reader_gone = True
                self._silence()

    def _silence(self) -> None:
        """Point the stream's file descriptor at /dev/null, so flushing it at exit does not raise again."""
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # not a real file (a test's StringIO): nothing will flush it at exit
            pass
