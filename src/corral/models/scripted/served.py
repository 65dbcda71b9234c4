"""The scripted model servers a process runs for ``scripted:`` models: one per script, started on first use."""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Self

from corral.models.scripted.script import load_script
from corral.models.scripted.server import ScriptedServer


class ScriptedModels:
    """Serves each script on its own 127.0.0.1 port, from the first request for it until :meth:`close`.

    Whichever process executes a run serves its script, so a run resumed by another process (after
    ``kill -9``, say) finds a server again; turns are chosen by conversation position, so a fresh
    server answers a resumed conversation with its next turn.
    """

    def __init__(self) -> None:
        self._servers: dict[Path, ScriptedServer] = {}
        self._lock = threading.Lock()

    def server_for(self, script: Path) -> ScriptedServer:
        """The running server for ``script``, started now if this is its first use (or since :meth:`close`)."""
        key = script.resolve()
        with self._lock:
            server = self._servers.get(key)
            if server is None:
                server = ScriptedServer(load_script(key)).start()
                self._servers[key] = server
            return server

    @property
    def running(self) -> dict[Path, ScriptedServer]:
        """The servers running now, by script file."""
        with self._lock:
            return dict(self._servers)

    def close(self) -> None:
        """Stop every server (each joins its thread and closes its socket); later use starts new ones."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        errors: list[Exception] = []
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # stop the others first, then report
                errors.append(exc)
        if errors:
            raise ExceptionGroup("stopping scripted model servers failed", errors)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


PROCESS_MODELS = ScriptedModels()
"""The servers of this process; the runtime closes them at shutdown, and they are closed at exit in any case."""
atexit.register(PROCESS_MODELS.close)
