"""A throwaway PostgreSQL cluster for the tests and benchmarks: Debian's server binaries, a temp directory.

``ThrowawayPostgres`` runs ``initdb`` and ``pg_ctl start`` in a new temporary directory (as the
``postgres`` system user when started by root: the server refuses to run as root), listens on a
free loopback port and on a Unix socket in that directory, and is stopped (``immediate``) and
removed on exit, whatever happened. ``database()`` makes a fresh, empty database and returns its
SQLAlchemy URL (psycopg 3). ``scripts/setup test`` installs the server when it is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER_USER = "postgres"
SUPERUSER = "corral"


class PostgresUnavailable(RuntimeError):
    """The server binaries are not installed (``scripts/setup test`` installs them)."""


def bin_dir() -> Path:
    """The newest installed server's binaries (Debian keeps them in /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb) found; `scripts/setup test` installs them")


DIR_PREFIX = "corral-pg-"
OWNER_FILE = "owner.pid"
"""The pid of the process that made the cluster: a cluster whose owner is gone is swept."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """A private PostgreSQL server for the life of a ``with`` block (see the module docstring).

    ``durable=False`` (tests) turns fsync and synchronous commit off; benchmarks keep the defaults.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.port = 0
        self._dir: Path | None = None
        self._started = False
        self._names = itertools.count(1)
        self._template: str | None = None
        self._bin = bin_dir()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(f"no {SERVER_USER!r} system user to run the server as") from None
            self._as_user = ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}", "--init-groups"]

    def __enter__(self) -> ThrowawayPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        self.sweep_orphans()
        self._dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        (self._dir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        if self._as_user:
            shutil.chown(self._dir, SERVER_USER, SERVER_USER)
        data = self._dir / "data"
        self._run(
            str(self._bin / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        settings = ["-c", "listen_addresses=127.0.0.1", "-k", str(self._dir), "-c", "max_connections=300"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for attempt in range(5):  # another process may take the free port before the server binds it
            self.port = _free_port()
            try:
                self._run(
                    str(self._bin / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(self._dir / "server.log"),
                    "-w",
                    "-o",
                    " ".join([*settings, "-p", str(self.port)]),
                    "start",
                )
            except RuntimeError:
                if attempt == 4:
                    raise
                continue
            self._started = True
            return

    def stop(self) -> None:
        """Stop the server at once and remove its directory (safe to call twice, or after a failed start)."""
        try:
            if self._started and self._dir is not None:
                self._started = False
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run(str(self._bin / "pg_ctl"), "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def sweep_orphans(self) -> list[Path]:
        """Stop and remove the clusters of test processes that died without stopping theirs (SIGKILL,
        SIGTERM outside pytest's teardown). Only this class's directories (its prefix and owner file)
        whose owner process is gone; their paths."""
        swept = []
        for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
            try:
                owner = int((directory / OWNER_FILE).read_text().strip())
            except (OSError, ValueError):
                continue  # not one of ours, or one being made right now
            if _alive(owner):
                continue
            data = directory / "data"
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run(str(self._bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(directory, ignore_errors=True)
            swept.append(directory)
        return swept

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # names made here, never user input

    def database(self, prefix: str = "t", *, template: str | None = None) -> str:
        """A new database, empty or a copy of ``template`` (a database name); its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def store_template(self) -> str:
        """A database holding corral's and DBOS's schemas at their newest revisions, made once: copying it
        (``database(template=...)``) spares each test the migrations. Its name."""
        if self._template is None:
            url = self.database("template")
            migrate = (
                "import sys; from dbos import DBOS; from corral.store import Store; "
                "Store(sys.argv[1]).close(); "
                "DBOS(config={'name': 'corral', 'system_database_url': sys.argv[1], 'log_level': 'ERROR'}); "
                "DBOS.launch(); DBOS.destroy()"
            )
            done = subprocess.run([sys.executable, "-c", migrate, url], capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"migrating the template database failed: {done.stderr}")
            self._template = url.rsplit("/", 1)[1]
        return self._template

    def drop(self, url: str) -> None:
        """Drop a database made by ``database()`` (sessions still connected to it are ended)."""
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
