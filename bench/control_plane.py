"""Control-plane benchmark: journal ingest on SQLite and PostgreSQL, append-to-SSE latency, runs/s through the API.

    .venv/bin/python bench/control_plane.py [--sections ingest sse runs] [--json] [--save [DIR]]
        [--events N --repeats R --databases sqlite postgres]      # ingest
        [--rate R --seconds S --warmup-seconds W]                   # sse
        [--runs N --workers 1 3 --concurrency C --submitters K]     # runs

Issue 13's figures, from one invocation (every section by default; ``--sections`` picks some):

1. **ingest**: journal events appended as fast as one caller can, then ``flush()``: events per second
   from the first append until every event is committed (durable as the database makes it). Three
   shapes per database: one run in one process; four runs in one process (one caller interleaving
   them, as a worker's event loop does); four processes of one run each (four workers on one
   database). Each shape runs in fresh processes on a fresh database, ``--repeats`` times (new runs
   each time); the median is the figure. The journal's batches (its group commits) are timed from the
   writer thread's connection checkout to its checkin (the commit included), and counted.
2. **sse**: a real ``corral serve`` on PostgreSQL; a client in its own process follows one run's
   ``/events/stream``; this process appends events to that run's journal through a ``Store`` (as a
   worker does: ``Journal.append``, no flush) at a fixed ``--rate`` for ``--seconds`` (after
   ``--warmup-seconds`` unmeasured). Each event's ``ts`` is stamped (``time.time()``) right before its
   append; the client takes ``time.time()`` when the event is complete on the wire. Same host, same
   clock. Also from this process's journal listener: when each event was committed, splitting the
   latency into append -> committed (the group commit) and committed -> received (the server's poll,
   its query, the wire). Every event must arrive once, in order, gap-free.
3. **runs**: ``corral serve`` plus 1, then 3 ``corral worker --concurrency C`` processes on one
   PostgreSQL database; the model is the scripted model answering one turn at once (a
   ``ScriptedServer`` in this process). ``--runs`` runs are submitted over the API as fast as
   ``--submitters`` clients can; runs/s is from the first submit to the last run finished (from the
   runs' own ``finished_at``). Every run must succeed. A few runs per worker go first, unmeasured.

PostgreSQL is a throwaway cluster (``tests.postgres.ThrowawayPostgres``, the tests' own, with
``durable=True``: fsync and synchronous_commit on, as a real server). SQLite is configured as the store
configures it: WAL and ``synchronous=NORMAL`` (no fsync per commit). What each database really ran
with is read back from it and recorded. The table goes to stdout, or to stderr with ``--json`` (the
report then goes to stdout); ``--save`` also writes ``control-plane-<date>.{json,txt}`` (by default in
``bench/results/``). docs/BENCHMARKS.md records the figures.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as `python bench/control_plane.py`: put the project root on the path so `bench` and `tests` import.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("PYDANTIC_AI_NO_BANNER", "1")

from bench.support import PROJECT_ROOT, BenchError, describe, machine_facts, percentile, progress

SCHEMA = "corral.bench.control_plane/1"
SECTIONS = ("ingest", "sse", "runs")
DATABASES = ("sqlite", "postgres")
TARGET_SSE_P99_MS = 100.0
TARGET_SSE_RATE = 1000.0
"""Issue 13: append-to-SSE-client latency p99 <= 100 ms at 1,000 events/s."""
INGEST_SHAPES = ((1, 1), (4, 1), (1, 4))
"""(runs per process, processes) of the ingest trials."""
CHILD_START_TIMEOUT_S = 120.0
SERVE_START_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
LATE_S = 0.005
"""A paced append more than this behind its schedule counts as late (the producer could not keep up)."""


# -- processes ------------------------------------------------------------------------------------


def orphan_proof(argv: list[str]) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig TERM`` where there is one: a child gets SIGTERM when this
    process dies, even by SIGKILL (a harness's timeout), so no server or worker outlives the benchmark."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv] if shutil.which("setpriv") else argv


def corral_env(url: str, home: Path) -> dict[str, str]:
    """The environment of a ``corral`` child: this one without any CORRAL_* setting, plus the store's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return {**env, "CORRAL_DATABASE_URL": url, "CORRAL_HOME": str(home), "PYDANTIC_AI_NO_BANNER": "1"}


@dataclass
class Child:
    """A child process whose stdout is read line by line with timeouts; its stderr goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    _buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    def start(
        cls, name: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        with log.open("wb") as err:
            process = subprocess.Popen(
                orphan_proof(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd
            )
        return cls(name, process, log)

    def line(self, timeout: float) -> str:
        """The next line it prints (without the newline); BenchError if it exits or stays silent too long."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name} printed nothing for {timeout:.0f} s{self.tail()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.process.wait(5)
                    raise BenchError(f"{self.name} exited {self.process.returncode}{self.tail()}")
                self._buffer += chunk
        end = self._buffer.index(b"\n")
        text = self._buffer[:end].decode(errors="replace")
        del self._buffer[: end + 1]
        return text

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return ("; its last output:\n" + "\n".join(text.splitlines()[-lines:])) if text else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; safe to call twice."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started children in; every one is stopped on the way out, whatever happened."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            with contextlib.suppress(Exception):
                child.stop()


def this_script(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


# -- statistics -----------------------------------------------------------------------------------


def latency_summary(samples: Sequence[float]) -> dict[str, float | int] | None:
    """Percentiles of samples in milliseconds (None without samples)."""
    if not samples:
        return None
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 0.5), 3),
        "p90_ms": round(percentile(samples, 0.9), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "max_ms": round(max(samples), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


# -- the databases --------------------------------------------------------------------------------


#: What a section's own failure raises (anything else: the section cannot run on this machine).
FAILURES = (BenchError, OSError, subprocess.SubprocessError, ValueError, KeyError)


def failure(exc: Exception) -> dict[str, str]:
    """A row's status and reason for ``exc``: ``failed`` (the measurement went wrong) or ``unavailable``
    (the cluster could not start, a driver is missing: the row cannot run here)."""
    return {"status": "failed" if isinstance(exc, FAILURES) else "unavailable", "reason": describe(exc)}


@contextlib.contextmanager
def quietly_closed(store: Any) -> Iterator[Any]:
    """``store``, closed when the block ends; a failing close does not hide what the block raised."""
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            store.close()


class Databases:
    """Fresh databases for the trials: SQLite files in the scratch directory, PostgreSQL databases in one
    throwaway cluster with fsync on, started on first use and stopped by ``close``."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._postgres: Any = None
        self._postgres_error: Exception | None = None
        self._made = 0
        self.settings: dict[str, Any] = {}

    def postgres(self) -> Any:
        if self._postgres_error is not None:
            raise self._postgres_error  # tried once already: every section says the same
        if self._postgres is None:
            # The tests' throwaway cluster; durable=True keeps the server's defaults (fsync, synchronous_commit).
            from tests.postgres import ThrowawayPostgres

            progress("starting a throwaway PostgreSQL cluster (fsync on)")
            try:
                cluster = ThrowawayPostgres(durable=True)
                try:
                    cluster.start()
                    cluster.store_template()
                except BaseException:
                    cluster.stop()
                    raise
            except Exception as exc:
                self._postgres_error = exc
                raise
            self._postgres = cluster
        return self._postgres

    def fresh(self, kind: str, prefix: str) -> tuple[str, Path]:
        """A new, migrated database of ``kind`` and a store home beside it: its URL and the home."""
        self._made += 1
        home = self.scratch / f"{prefix}-{self._made}-home"
        home.mkdir(parents=True)
        if kind == "sqlite":
            url = f"sqlite:///{home / 'corral.db'}"
        else:
            cluster = self.postgres()
            url = cluster.database(prefix, template=cluster.store_template())
        settings = read_settings(url)  # and migrates: trials start from a ready schema
        self.settings.setdefault(kind, settings)
        return url, home

    @contextlib.contextmanager
    def using(self, kind: str, prefix: str) -> Iterator[tuple[str, Path]]:
        """A fresh database (see ``fresh``), dropped when the block ends, however it ends."""
        url, home = self.fresh(kind, prefix)
        try:
            yield url, home
        finally:
            self.drop(url)

    def drop(self, url: str) -> None:
        if url.startswith("postgresql") and self._postgres is not None:
            with contextlib.suppress(Exception):
                self._postgres.drop(url)

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None


def read_settings(url: str) -> dict[str, Any]:
    """What the database runs with, as the store's own engine sees it (the store tunes SQLite on connect)."""
    from sqlalchemy import text

    from corral.store import Store

    store = Store(url)
    try:
        with store.engine.connect() as conn:
            if store.dialect == "sqlite":
                return {
                    "version": conn.execute(text("select sqlite_version()")).scalar(),
                    "journal_mode": conn.execute(text("PRAGMA journal_mode")).scalar(),
                    "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                        conn.execute(text("PRAGMA synchronous")).scalar(), "?"
                    ),
                    "fsync_per_commit": False,
                }
            shown = {
                name: conn.execute(text(f"SHOW {name}")).scalar()
                for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
            }
            return {**shown, "fsync_per_commit": shown["fsync"] == "on" and shown["synchronous_commit"] == "on"}
    finally:
        store.close()


def bench_run(store: Any, run_id: str) -> None:
    """A run row for events to belong to (running, nobody's queue)."""
    store.create_run(
        id=run_id,
        parent_id=None,
        root_id=run_id,
        continues_id=None,
        agent="bench",
        spec={"model": "bench"},
        spec_hash="bench",
        task="control-plane benchmark",
        repo="/bench",
        run_dir="/bench",
        status="running",
    )


# -- 1. journal ingest ----------------------------------------------------------------------------


class BatchTimer:
    """The journal writer's transactions on an engine: each from its connection's checkout to its checkin
    (which follows the commit), on the ``corral-journal`` thread only."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.batches_ms: list[float] = []
        self._started: float | None = None
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, *_: Any) -> None:
        if threading.current_thread().name == "corral-journal":
            self._started = time.perf_counter()

    def _checkin(self, *_: Any) -> None:
        if threading.current_thread().name == "corral-journal" and self._started is not None:
            self.batches_ms.append((time.perf_counter() - self._started) * 1000)
            self._started = None

    def take(self) -> list[float]:
        taken, self.batches_ms = self.batches_ms, []
        return taken


def ingest_child(config: dict[str, Any]) -> int:
    """One process of an ingest trial (``--child-ingest``): per repeat, make its runs and events, say
    ``ready``, wait for ``go``, append them all and flush, print what it measured as one JSON line."""
    from sqlalchemy import func, select

    from corral.events import ToolReturned
    from corral.store import Store
    from corral.store.models import EventRow

    store = Store(config["url"], home=Path(config["home"]))
    timer = BatchTimer(store.engine)
    text = "x" * config["payload_bytes"]
    try:
        # Unmeasured: the writer's first connection and the first statements' preparation.
        warm_id = f"{config['name']}-warm"
        bench_run(store, warm_id)
        for i in range(100):
            store.journal.append(
                warm_id, ToolReturned(key=f"warm:{i}", call_id="warm", tool="execute", ok=True, text=text)
            )
        store.journal.flush()
        for repeat in range(config["repeats"]):
            run_ids = [f"{config['name']}-r{repeat}-{k}" for k in range(config["runs"])]
            for run_id in run_ids:
                bench_run(store, run_id)
            per_run = config["events"] // len(run_ids)
            # Built ahead: the caller's cost of making an event is not the journal's. Interleaved across
            # the runs, as one event loop running several runs appends.
            events = [
                (run_id, ToolReturned(key=f"tool:{i}:result", call_id=f"call-{i}", tool="execute", ok=True, text=text))
                for i in range(per_run)
                for run_id in run_ids
            ]
            store.journal.flush()
            timer.take()
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                return 1
            started_at = time.time()
            started = time.perf_counter()
            for run_id, event in events:
                store.journal.append(run_id, event)
            appended = time.perf_counter()
            store.journal.flush(timeout_s=RUN_TIMEOUT_S)
            finished_at = time.time()
            batches = timer.take()
            with store.engine.connect() as conn:
                stored = conn.execute(
                    select(func.count()).select_from(EventRow).where(EventRow.run_id.in_(run_ids))
                ).scalar_one()
            result = {
                "events": len(events),
                "stored": stored,
                "started_at": started_at,
                "finished_at": finished_at,
                "append_s": appended - started,
                "batches_ms": [round(ms, 3) for ms in batches],
            }
            print(json.dumps(result), flush=True)
    finally:
        store.close()
    return 0


def ingest_trials(
    databases: Databases, kind: str, runs: int, processes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One shape on one database: ``args.repeats`` trials in the same processes, each on new runs."""
    name = f"ingest/{kind}/{runs}-run{'s' if runs > 1 else ''}-{processes}-process{'es' if processes > 1 else ''}"
    row: dict[str, Any] = {
        "id": name,
        "database": kind,
        "runs_per_process": runs,
        "processes": processes,
        "events": args.events,
        "status": "ok",
    }
    per_process = args.events // processes
    try:
        with databases.using(kind, "ingest") as (url, home):
            trials = []
            with children() as started:
                for p in range(processes):
                    config = {
                        "url": url,
                        "home": str(home),
                        "name": f"p{p}",
                        "runs": runs,
                        "events": per_process,
                        "repeats": args.repeats,
                        "payload_bytes": args.payload_bytes,
                    }
                    log = databases.scratch / f"{name.replace('/', '_')}-{p}.log"
                    started.append(
                        Child.start(f"ingest process {p}", this_script("--child-ingest", json.dumps(config)), log=log)
                    )
                for _ in range(args.repeats):
                    for child in started:
                        if child.line(CHILD_START_TIMEOUT_S) != "ready":
                            raise BenchError(f"{child.name} did not get ready{child.tail()}")
                    for child in started:
                        child.send("go")
                    results = [json.loads(child.line(RUN_TIMEOUT_S)) for child in started]
                    trials.append(ingest_trial_summary(results))
        lost = [t for t in trials if t["stored"] != t["events"]]
        if lost:
            raise BenchError(f"{lost[0]['events'] - lost[0]['stored']} event(s) not in the database after flush()")
        row["trials"] = trials
        row["events_per_s"] = round(statistics.median(t["events_per_s"] for t in trials))
        row["events_per_s_range"] = [min(t["events_per_s"] for t in trials), max(t["events_per_s"] for t in trials)]
        row["append_us_per_event"] = round(statistics.median(t["append_us_per_event"] for t in trials), 2)
        batches = [ms for t in trials for ms in t.pop("batches_ms")]
        row["batches"] = latency_summary(batches)
        row["events_per_batch"] = round(sum(t["events"] for t in trials) / max(1, len(batches)), 1)
    except Exception as exc:
        row |= failure(exc)
    return row


def ingest_trial_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One trial over its processes: every event from the first append anywhere to the last flush's return."""
    events = sum(r["events"] for r in results)
    elapsed = max(r["finished_at"] for r in results) - min(r["started_at"] for r in results)
    return {
        "events": events,
        "stored": sum(r["stored"] for r in results),
        "elapsed_s": round(elapsed, 4),
        "events_per_s": round(events / elapsed),
        "append_us_per_event": round(statistics.fmean(r["append_s"] / r["events"] * 1e6 for r in results), 2),
        "batches_ms": [ms for r in results for ms in r["batches_ms"]],
    }


def measure_ingest(databases: Databases, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for kind in args.databases:
        for runs, processes in INGEST_SHAPES:
            progress(f"ingest on {kind}: {runs} run(s) per process, {processes} process(es), {args.repeats} trial(s)")
            rows.append(ingest_trials(databases, kind, runs, processes, args))
    return rows


# -- corral serve ---------------------------------------------------------------------------------


@dataclass
class Served:
    """A ``corral serve`` child: its address and the admin token it printed on its first start."""

    child: Child
    address: str
    token: str

    @classmethod
    def start(cls, url: str, home: Path, cwd: Path, started: list[Child]) -> Served:
        log = cwd / f"serve-{len(started)}.log"
        argv = orphan_proof([sys.executable, "-m", "corral", "serve", "--port", "0"])
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=corral_env(url, home), cwd=cwd
            )
        child = Child("corral serve", process, log)
        started.append(child)
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        token = address = None
        while address is None:
            text = log.read_text(errors="replace")
            found = re.search(r"admin token \(shown once; keep it\): (\S+)", text)
            token = found.group(1) if found else None
            listening = re.search(r"corral serve on (http://\S+)", text)
            address = listening.group(1) if listening and token else None
            if process.poll() is not None:
                raise BenchError(f"corral serve exited {process.returncode}{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"corral serve did not announce its address in {SERVE_START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        assert token is not None
        return cls(child, address, token)

    def client(self, timeout: float = 30.0) -> Any:
        import httpx2 as httpx

        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.address, headers=headers, timeout=timeout)

    def register(self, spec: dict[str, Any]) -> None:
        with self.client() as client:
            answer = client.post("/v1/specs", json={"spec": spec})
            if answer.status_code != 201:
                raise BenchError(f"registering the spec: {answer.status_code} {answer.text[:300]}")


def instant_spec(base_url: str) -> dict[str, Any]:
    """The agent every measured run is of: the scripted model at ``base_url``, the local sandbox."""
    return {
        "name": "bench",
        "model": "openai-chat:bench",
        "base_url": base_url,
        "sandbox": "local",
        "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
    }


def make_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "README.md").write_text("control-plane benchmark\n")
    return root


# -- 2. append -> SSE client ------------------------------------------------------------------------


def sse_client_child(config: dict[str, Any]) -> int:
    """The SSE client (``--child-sse``): follow the run's stream, say ``ready`` on the first event, stop
    after ``expect`` events or at the deadline; print ``[key, seq, ts, received]`` per event as JSON."""
    import httpx2 as httpx

    received: list[list[Any]] = []
    deadline = time.monotonic() + config["timeout_s"]
    headers = {"Authorization": f"Bearer {config['token']}"}
    timeout = httpx.Timeout(30.0, read=60.0)
    error = None
    try:
        with (
            httpx.Client(base_url=config["address"], headers=headers, timeout=timeout) as client,
            client.stream("GET", f"/v1/runs/{config['run_id']}/events/stream") as stream,
        ):
            if stream.status_code != 200:
                stream.read()
                raise BenchError(f"the stream answered {stream.status_code}: {stream.text[:300]}")
            current: dict[str, str] = {}
            for line in stream.iter_lines():
                if line:
                    if not line.startswith(":"):
                        name, _, value = line.partition(":")
                        current[name] = value.removeprefix(" ")
                    continue
                now = time.time()  # the event is complete: its blank line is here
                if "id" in current:
                    data = json.loads(current["data"])
                    received.append([data["key"], int(current["id"]), data["ts"], now])
                    if len(received) == 1:
                        print("ready", flush=True)
                current = {}
                if len(received) >= config["expect"] or time.monotonic() > deadline:
                    break
    except Exception as exc:  # reported to the parent with what did arrive
        error = describe(exc)
    print(json.dumps({"received": received, "error": error}), flush=True)
    return 0


def measure_sse(databases: Databases, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    from corral.events import ProgramLogged
    from corral.store import Store

    warm = round(args.rate * args.warmup_seconds)
    measured = round(args.rate * args.seconds)
    result: dict[str, Any] = {
        "id": "sse/postgres",
        "status": "ok",
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "warmup_events": warm,
        "events": measured,
        **latency_settings(),
    }
    try:
        with databases.using("postgres", "sse") as (url, home), contextlib.ExitStack() as opened:
            result["database"] = "postgres"
            with children() as started:
                progress("sse: starting corral serve")
                served = Served.start(url, home, scratch, started)
                served.register(instant_spec("http://127.0.0.1:9/v1"))  # never contacted: no worker runs it
                repo = make_repo(scratch / "sse-repo")
                with served.client() as client:
                    answer = client.post(
                        "/v1/runs", json={"agent": "bench", "task": "followed live", "repo": str(repo)}
                    )
                    if answer.status_code != 201:
                        raise BenchError(f"submitting the run: {answer.status_code} {answer.text[:300]}")
                run_id = answer.json()["id"]

                # The producer: appends to the run's journal as a worker would.
                store = opened.enter_context(quietly_closed(Store(url, home=home)))
                committed: dict[str, float] = {}

                def heard(record: Any) -> None:
                    committed[record.event.key] = time.time()

                store.journal.subscribe(heard)
                text = "x" * args.payload_bytes
                store.journal.append(run_id, ProgramLogged(key="bench:ready", call_id="bench", text="ready"))
                store.journal.flush()
                config = {
                    "address": served.address,
                    "token": served.token,
                    "run_id": run_id,
                    "expect": 1 + warm + measured,
                    "timeout_s": args.warmup_seconds + args.seconds + 60,
                }
                client_child = Child.start(
                    "the SSE client", this_script("--child-sse", json.dumps(config)), log=scratch / "sse-client.log"
                )
                started.append(client_child)
                if client_child.line(CHILD_START_TIMEOUT_S) != "ready":
                    raise BenchError(f"the SSE client did not get ready{client_child.tail()}")

                progress(f"sse: {args.warmup_seconds:g} s warm-up, then {measured} events at {args.rate:g}/s")
                late = 0
                keys = [f"warm:{i}" for i in range(warm)] + [f"sse:{i}" for i in range(measured)]
                began = time.perf_counter()
                for i, key in enumerate(keys):
                    delay = began + i / args.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -LATE_S:
                        late += 1
                    store.journal.append(run_id, ProgramLogged(key=key, call_id="bench", text=text, ts=time.time()))
                paced_s = time.perf_counter() - began
                store.journal.flush()
                report = json.loads(client_child.line(config["timeout_s"] + 30))
            result |= sse_summary(report, keys, committed, late, paced_s)
            if report["error"]:
                result["client_error"] = report["error"]
            if result["lost"] or result["out_of_order"] or result["duplicates"] or result["gaps"]:
                result["status"] = "failed"
                result["reason"] = (
                    f"{result['lost']} lost, {result['duplicates']} twice, {result['out_of_order']} out of order, "
                    f"{result['gaps']} gap(s) in seq" + (f"; the client: {report['error']}" if report["error"] else "")
                )
    except Exception as exc:
        result |= failure(exc)
    return result


def latency_settings() -> dict[str, float]:
    """The two waits an event meets on its way: the journal's group-commit window and the stream's poll."""
    from corral.server.app import STREAM_POLL_S
    from corral.store.journal import Journal

    window = inspect.signature(Journal).parameters["flush_interval_s"].default
    return {"journal_flush_interval_s": window, "stream_poll_s": STREAM_POLL_S}


def sse_summary(
    report: dict[str, Any], keys: list[str], committed: dict[str, float], late: int, paced_s: float
) -> dict[str, Any]:
    """Latencies of the measured events, and how many were lost, repeated, reordered."""
    rows = [r for r in report["received"] if r[0] != "bench:ready"]
    seen = [r[0] for r in rows]
    order = {key: i for i, key in enumerate(keys)}
    positions = [order.get(key, -1) for key in seen]
    seqs = [r[1] for r in rows]
    total, to_commit, from_commit = [], [], []
    for key, _seq, ts, received in rows:
        if not key.startswith("sse:"):
            continue
        total.append((received - ts) * 1000)
        if key in committed:
            to_commit.append((committed[key] - ts) * 1000)
            from_commit.append((received - committed[key]) * 1000)
    latency = latency_summary(total)
    return {
        "appended": len(keys),
        "received": len(rows),
        "lost": len(set(keys) - set(seen)),
        "duplicates": len(seen) - len(set(seen)),
        "out_of_order": sum(1 for a, b in itertools.pairwise(positions) if b <= a),
        "gaps": sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1),
        "producer_late": late,
        "producer_rate_per_s": round(len(keys) / paced_s, 1) if paced_s else None,
        "latency": latency,
        "append_to_commit": latency_summary(to_commit),
        "commit_to_client": latency_summary(from_commit),
        "target": {
            "p99_ms": TARGET_SSE_P99_MS,
            "at_rate_per_s": TARGET_SSE_RATE,
            "met": None if latency is None else latency["p99_ms"] <= TARGET_SSE_P99_MS,
        },
    }


# -- 3. runs/s through the API ----------------------------------------------------------------------


def start_workers(
    count: int, concurrency: int, url: str, home: Path, cwd: Path, store: Any, started: list[Child]
) -> list[Child]:
    """``count`` workers, returned once each has registered in the store."""
    workers = []
    for _ in range(count):
        n = len(started)
        log = cwd / f"worker-{n}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                orphan_proof([sys.executable, "-m", "corral", "worker", "--concurrency", str(concurrency)]),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=corral_env(url, home),
                cwd=cwd,
            )
        worker = Child(f"corral worker {n}", process, log)
        started.append(worker)
        workers.append(worker)
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while True:
        registered = {e.pid for e in store.executors()}
        if all(w.process.pid in registered for w in workers):
            return workers
        for worker in workers:
            if worker.process.poll() is not None:
                raise BenchError(f"{worker.name} exited {worker.process.returncode}{worker.tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the workers did not register in {WORKER_START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def submit_runs(served: Served, repo: Path, count: int, submitters: int, label: str) -> list[tuple[str, float, float]]:
    """Submit ``count`` runs over the API from ``submitters`` clients at once: (run id, when, ms) each."""
    clients = [served.client() for _ in range(submitters)]
    lock = threading.Lock()
    remaining = iter(range(count))

    def submit_from(client: Any) -> list[tuple[str, float, float]]:
        done = []
        while True:
            with lock:
                index = next(remaining, None)
            if index is None:
                return done
            body = {"agent": "bench", "task": f"{label} {index}", "repo": str(repo)}
            at = time.time()
            began = time.perf_counter()
            answer = client.post("/v1/runs", json=body)
            ms = (time.perf_counter() - began) * 1000
            if answer.status_code != 201:
                raise BenchError(f"submitting a run: {answer.status_code} {answer.text[:300]}")
            done.append((answer.json()["id"], at, ms))

    try:
        with ThreadPoolExecutor(submitters, thread_name_prefix="bench-submit") as pool:
            parts = list(pool.map(submit_from, clients))
    finally:
        for client in clients:
            client.close()
    return [submitted for part in parts for submitted in part]


def wait_finished(store: Any, run_ids: list[str], timeout: float) -> list[Any]:
    """The rows of the runs once every one has finished."""
    from sqlalchemy import select

    from corral.store import RunStatus
    from corral.store.models import RunRow

    finished = {s.value for s in RunStatus if s.finished}
    query = select(
        RunRow.id,
        RunRow.status,
        RunRow.created_at,
        RunRow.started_at,
        RunRow.finished_at,
        RunRow.error,
        RunRow.executor_id,
    )
    query = query.where(RunRow.id.in_(run_ids))
    deadline = time.monotonic() + timeout
    while True:
        with store.engine.connect() as conn:
            rows = list(conn.execute(query))
        if len(rows) == len(run_ids) and all(r.status in finished for r in rows):
            return rows
        if time.monotonic() > deadline:
            done = sum(1 for r in rows if r.status in finished)
            raise BenchError(f"only {done} of {len(run_ids)} runs finished in {timeout:.0f} s")
        time.sleep(0.02)


def runs_trial(
    served: Served, store: Any, repo: Path, url: str, home: Path, cwd: Path, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": f"runs/{workers}-worker{'s' if workers > 1 else ''}",
        "workers": workers,
        "concurrency_per_worker": args.concurrency,
        "runs": args.runs,
        "submitters": args.submitters,
        "warmup_runs": args.warmup_runs * workers,
        "status": "ok",
    }
    try:
        with children() as started:
            progress(f"runs: starting {workers} worker(s) (concurrency {args.concurrency})")
            start_workers(workers, args.concurrency, url, home, cwd, store, started)
            if args.warmup_runs:
                warm = submit_runs(served, repo, args.warmup_runs * workers, args.submitters, "warm-up")
                wait_finished(store, [run_id for run_id, _, _ in warm], RUN_TIMEOUT_S)
            progress(f"runs: {args.runs} runs through the API, {workers} worker(s)")
            submitted = submit_runs(served, repo, args.runs, args.submitters, "measured")
            rows = wait_finished(store, [run_id for run_id, _, _ in submitted], RUN_TIMEOUT_S)
        first = min(at for _, at, _ in submitted)
        last_submit = max(at + ms / 1000 for _, at, ms in submitted)
        succeeded = [r for r in rows if r.status == "succeeded"]
        row["succeeded"] = len(succeeded)
        row["failed"] = len(rows) - len(succeeded)
        last_finished = max(r.finished_at for r in rows)
        started_at = [r.started_at for r in rows if r.started_at is not None]
        row["runs_per_s"] = round(len(rows) / (last_finished - first), 2)
        row["started_per_s"] = round(len(started_at) / (max(started_at) - first), 2) if started_at else None
        row["submitted_per_s"] = round(len(submitted) / (last_submit - first), 2)
        row["wall_s"] = round(last_finished - first, 3)
        row["submit"] = latency_summary([ms for _, _, ms in submitted])
        row["queue_wait"] = latency_summary([(r.started_at - r.created_at) * 1000 for r in rows if r.started_at])
        row["run"] = latency_summary([(r.finished_at - r.started_at) * 1000 for r in rows if r.started_at])
        row["submit_to_finish"] = latency_summary([(r.finished_at - r.created_at) * 1000 for r in rows])
        row["runs_per_worker"] = sorted(collections.Counter(r.executor_id for r in rows).values(), reverse=True)
        if row["failed"]:
            errors = sorted({str(r.error)[:200] for r in rows if r.status != "succeeded"})
            row["status"], row["reason"] = "failed", f"{row['failed']} run(s) did not succeed: {'; '.join(errors[:3])}"
    except FAILURES as exc:  # anything else: the section cannot run here (see measure_runs)
        row |= failure(exc)
    return row


def measure_runs(databases: Databases, scratch: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from corral.models.scripted import ScriptedServer, Turn
    from corral.store import Store

    rows: list[dict[str, Any]] = []
    try:
        with databases.using("postgres", "runs") as (url, home), contextlib.ExitStack() as opened:
            repo = make_repo(scratch / "runs-repo")
            with ScriptedServer([Turn(text="done")]) as model, children() as started:
                progress("runs: starting corral serve")
                served = Served.start(url, home, scratch, started)
                served.register(instant_spec(model.openai_base_url))
                store = opened.enter_context(quietly_closed(Store(url, home=home)))
                for workers in args.workers:
                    rows.append(runs_trial(served, store, repo, url, home, scratch, workers, args))
    except Exception as exc:
        rows.append({"id": "runs", **failure(exc)})
    return rows


# -- the report -----------------------------------------------------------------------------------


def render_table(report: dict[str, Any]) -> str:
    machine, p = report["machine"], report["parameters"]
    lines = [
        f"corral control-plane benchmark, {report['date']}: {machine['cpu_model']} ({machine['usable_cores']} cores), "
        f"{machine['memory_gib']} GiB, {machine['os']}, Linux {machine['kernel']}, "
        f"{machine['tmpdir_filesystem']['type']} at {machine['tmpdir']}, Python {machine['python']}, "
        f"commit {machine['corral_commit']}, load {machine['loadavg_1m']}",
    ]
    settings = report["databases"]
    if "postgres" in settings:
        s = settings["postgres"]
        lines.append(
            f"PostgreSQL {s['server_version']} (throwaway cluster): fsync={s['fsync']}, "
            f"synchronous_commit={s['synchronous_commit']}, full_page_writes={s['full_page_writes']}, "
            f"wal_sync_method={s['wal_sync_method']}"
        )
    if "sqlite" in settings:
        s = settings["sqlite"]
        lines.append(f"SQLite {s['version']}: journal_mode={s['journal_mode']}, synchronous={s['synchronous']}")
    if report["ingest"] is not None:
        lines += [
            "",
            f"journal ingest: {p['events']} events of ~{p['payload_bytes']} B per trial, appended as fast as possible "
            f"then flush(); median of {p['repeats']}",
            f"  {'':38} {'events/s':>9} {'(min..max)':>17} {'append µs':>10} {'batches':>8} "
            f"{'ev/batch':>9} {'batch p50 ms':>13} {'p99 ms':>8}",
        ]
        for row in report["ingest"]:
            label = f"{row['database']}, {row['runs_per_process']} run(s) x {row['processes']} process(es)"
            if row["status"] != "ok":
                lines.append(f"  {label:38} {row['status']}: {row['reason']}")
                continue
            low, high = row["events_per_s_range"]
            b = row["batches"] or {}
            lines.append(
                f"  {label:38} {row['events_per_s']:>9,} {f'({low:,}..{high:,})':>17} "
                f"{row['append_us_per_event']:>10.1f} {b.get('n', 0):>8} {row['events_per_batch']:>9} "
                f"{b.get('p50_ms', 0):>13.2f} {b.get('p99_ms', 0):>8.2f}"
            )
    sse = report["sse"]
    if sse is not None:
        lines += [
            "",
            f"append -> SSE client: corral serve on PostgreSQL, {sse['rate_per_s']:g} events/s for "
            f"{sse['seconds']:g} s after {p['warmup_seconds']:g} s warm-up (journal group-commit window "
            f"{sse['journal_flush_interval_s'] * 1000:g} ms, stream poll {sse['stream_poll_s'] * 1000:g} ms)",
        ]
        if "received" in sse:
            lines.append(
                f"  appended {sse['appended']} (producer {sse['producer_rate_per_s']}/s, {sse['producer_late']} late), "
                f"received {sse['received']}: lost {sse['lost']}, twice {sse['duplicates']}, "
                f"out of order {sse['out_of_order']}, seq gaps {sse['gaps']}"
            )
            lines.append(f"  {'':28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
            for key, label in (
                ("latency", "append -> client"),
                ("append_to_commit", "  append -> committed"),
                ("commit_to_client", "  committed -> client"),
            ):
                s = sse[key]
                if s:
                    lines.append(
                        f"  {label:28} {s['p50_ms']:>8.1f} {s['p90_ms']:>8.1f} {s['p99_ms']:>8.1f} "
                        f"{s['max_ms']:>8.1f} {s['mean_ms']:>8.1f}"
                    )
            target = sse["target"]
            verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
            lines.append(
                f"  target: p99 <= {target['p99_ms']:g} ms at {target['at_rate_per_s']:g} events/s -> {verdict}"
            )
        if sse["status"] != "ok":
            lines.append(f"  {sse['status']}: {sse['reason']}")
    if report["runs"] is not None:
        lines += [
            "",
            f"runs through the API: instant scripted model (one turn), corral serve + workers on PostgreSQL, "
            f"{p['runs']} runs, {p['submitters']} submitter(s), concurrency {p['concurrency']} per worker",
            f"  {'':12} {'ok':>7} {'runs/s':>7} {'started/s':>9} {'submit/s':>9} {'submit p50':>10} {'p99 ms':>7} "
            f"{'queued p50':>10} {'p99 ms':>7} {'run p50 ms':>10} {'e2e p50':>8} {'p99 ms':>7}  runs per worker",
        ]
        for row in report["runs"]:
            label = f"{row['workers']} worker(s)" if "workers" in row else row["id"]
            if "succeeded" not in row:
                lines.append(f"  {label:12} {row['status']}: {row['reason']}")
                continue
            sub, queued, run, e2e = row["submit"], row["queue_wait"], row["run"], row["submit_to_finish"]
            ok = f"{row['succeeded']}/{row['runs']}"
            lines.append(
                f"  {label:12} {ok:>7} {row['runs_per_s']:>7.1f} "
                f"{row['started_per_s'] or 0:>9.1f} {row['submitted_per_s']:>9.1f} {sub['p50_ms']:>10.1f} "
                f"{sub['p99_ms']:>7.1f} {queued['p50_ms']:>10.1f} {queued['p99_ms']:>7.1f} {run['p50_ms']:>10.1f} "
                f"{e2e['p50_ms']:>8.1f} {e2e['p99_ms']:>7.1f}  {'/'.join(map(str, row['runs_per_worker']))}"
            )
            if row["status"] != "ok":
                lines.append(f"  {'':12} {row['status']}: {row['reason']}")
    return "\n".join(lines)


def save(report: dict[str, Any], table: str, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"control-plane-{report['date']}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".txt")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(table + "\n")
    return paths


# -- main -----------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    ingest = parser.add_argument_group("ingest")
    ingest.add_argument("--events", type=positive_int, default=20_000, help="events per trial (default 20,000)")
    ingest.add_argument("--repeats", type=positive_int, default=3, help="trials per shape (default 3)")
    ingest.add_argument(
        "--databases", nargs="+", choices=DATABASES, default=list(DATABASES), help="databases to ingest into"
    )
    ingest.add_argument(
        "--payload-bytes", type=non_negative_int, default=200, help="text per event, ingest and sse (default 200)"
    )
    sse = parser.add_argument_group("sse")
    sse.add_argument("--rate", type=positive_float, default=TARGET_SSE_RATE, help="events/s appended (default 1000)")
    sse.add_argument("--seconds", type=positive_float, default=10.0, help="measured seconds (default 10)")
    sse.add_argument("--warmup-seconds", type=non_negative_float, default=1.0, help="unmeasured first (default 1)")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--runs", type=positive_int, default=60, help="measured runs per worker count (default 60)")
    runs.add_argument(
        "--workers", nargs="+", type=positive_int, default=[1, 3], help="worker counts to measure (default 1 3)"
    )
    runs.add_argument("--concurrency", type=positive_int, default=4, help="runs at once per worker (default 4)")
    runs.add_argument("--submitters", type=positive_int, default=4, help="clients submitting at once (default 4)")
    runs.add_argument(
        "--warmup-runs", type=non_negative_int, default=4, help="unmeasured runs per worker first (default 4)"
    )
    parser.add_argument("--tmpdir", type=Path, default=Path(tempfile.gettempdir()), help="where the stores and logs go")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the table goes to stderr)")
    parser.add_argument(
        "--save",
        type=Path,
        nargs="?",
        const=PROJECT_ROOT / "bench" / "results",
        default=None,
        help="also write control-plane-<date>.{json,txt} to this directory (default bench/results)",
    )
    parser.add_argument("--child-ingest", help=argparse.SUPPRESS)
    parser.add_argument("--child-sse", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_ingest or args.child_sse:
        return args
    sections = set(args.sections)
    if "ingest" in sections:
        split = math.lcm(*(runs * processes for runs, processes in INGEST_SHAPES))
        if args.events % split:
            parser.error(f"--events must be a multiple of {split}, to split evenly over every shape's runs")
    if "sse" in sections and round(args.rate * args.seconds) < 1:
        parser.error("--rate x --seconds must come to at least one event")
    if "runs" in sections and args.submitters > args.runs:
        parser.error(f"--submitters ({args.submitters}) cannot exceed --runs ({args.runs})")
    if not args.tmpdir.is_dir():
        parser.error(f"--tmpdir {args.tmpdir} is not a directory")
    return args


def interrupted(signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so the cluster and the processes are stopped on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_ingest:
        return ingest_child(json.loads(args.child_ingest))
    if args.child_sse:
        return sse_client_child(json.loads(args.child_sse))
    signal.signal(signal.SIGTERM, interrupted)
    started_at = datetime.now(UTC)
    machine = machine_facts(args.tmpdir)  # before the run loads the machine (loadavg)
    sections = set(args.sections)
    with tempfile.TemporaryDirectory(prefix="corral-bench-control-plane-", dir=args.tmpdir) as tmp:
        scratch = Path(tmp)
        databases = Databases(scratch)
        try:
            ingest = measure_ingest(databases, args) if "ingest" in sections else None
            sse = measure_sse(databases, scratch, args) if "sse" in sections else None
            runs = measure_runs(databases, scratch, args) if "runs" in sections else None
        finally:
            databases.close()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": started_at.date().isoformat(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "command": " ".join(["bench/control_plane.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine,
        "parameters": {
            "sections": [s for s in SECTIONS if s in sections],
            "events": args.events,
            "repeats": args.repeats,
            "databases": args.databases,
            "payload_bytes": args.payload_bytes,
            "rate_per_s": args.rate,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup_seconds,
            "runs": args.runs,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "submitters": args.submitters,
            "warmup_runs_per_worker": args.warmup_runs,
        },
        "databases": databases.settings,
        "ingest": ingest,
        "sse": sse,
        "runs": runs,
    }
    table = render_table(report)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
    if args.save is not None:
        for path in save(report, table, args.save):
            progress(f"wrote {path}")
    failed = [r for r in [*(ingest or []), *([sse] if sse else []), *(runs or [])] if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
