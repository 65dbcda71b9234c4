"""Opening the store: where it lives, its engine, its migrations, and the queries over runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Text,
    and_,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from corral.errors import ApprovalNotFoundError, RunNotFoundError, StoreError, UsageError
from corral.events import parse_event
from corral.store.chain import ChainedRow, Verification, verify
from corral.store.journal import Journal, db_error_reason
from corral.store.liveness import live_ids
from corral.store.models import ALEMBIC_VERSION_TABLE, ApprovalRow, EventRow, ExecutorRow, RunRow
from corral.store.records import (
    DISPLAY_STATUSES,
    INTERRUPTED,
    ApprovalRecord,
    ApprovalStatus,
    EventRecord,
    Identity,
    RunRecord,
    RunStatus,
    Usage,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The newest migration's revision id; a test checks it against Alembic's own head.
HEAD_REVISION = "0007"


def default_home(project_dir: Path | None = None) -> Path:
    """``$CORRAL_HOME`` if set, else ``.corral/`` in the project directory (the current one by default)."""
    env = os.environ.get("CORRAL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return (project_dir or Path.cwd()).resolve() / ".corral"


def store_url(home: Path) -> str:
    """The database of a store: ``$CORRAL_DATABASE_URL``, or the SQLite file ``<home>/corral.db``."""
    return os.environ.get("CORRAL_DATABASE_URL") or f"sqlite:///{home / 'corral.db'}"


def _tune_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # WAL + synchronous=NORMAL: a commit appends to the log without an fsync; durability across a
    # power cut is bounded to the last checkpoint, and a killed process loses nothing committed.
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")


_TUNED = False


def tune_sqlite_engines() -> None:
    """Apply the WAL settings to every SQLite engine in the process (ours and DBOS's system database)."""
    global _TUNED
    if not _TUNED:
        event.listen(Engine, "connect", _tune_sqlite)
        _TUNED = True


UNFINISHED = tuple(s.value for s in RunStatus if not s.finished)
_MIGRATION_LOCK_KEY = 0x636F7272616C  # "corral": the Postgres advisory lock that migrations take


def _revision(conn: Connection) -> str | None:
    """The schema's revision, None for a database without corral's tables."""
    if not inspect(conn).has_table(ALEMBIC_VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")).scalar()


def _row_to_record(row: RunRow, live_executors: set[str]) -> RunRecord:
    """``live_executors`` (``Store.live_executor_ids``) decides whether an unfinished run is interrupted."""
    unfinished = row.status in UNFINISHED
    waiting_in_queue = row.queue is not None and row.executor_id is None and row.status == RunStatus.QUEUED.value
    return RunRecord(
        id=row.id,
        parent_id=row.parent_id,
        root_id=row.root_id,
        continues_id=row.continues_id,
        agent=row.agent,
        spec=row.spec,
        spec_hash=row.spec_hash,
        task=row.task,
        repo=row.repo,
        run_dir=row.run_dir,
        status=RunStatus(row.status),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        executor_id=row.executor_id,
        result=row.result,
        error=row.error,
        error_type=row.error_type,
        turns=row.turns or 0,
        usage=Usage(
            input_tokens=row.input_tokens or 0,
            output_tokens=row.output_tokens or 0,
            cache_read_tokens=row.cache_read_tokens or 0,
            cache_write_tokens=row.cache_write_tokens or 0,
            reasoning_tokens=row.reasoning_tokens or 0,
            cost_usd=row.cost_usd or 0.0,
            unpriced_calls=row.unpriced_calls or 0,
        ),
        queue=row.queue,
        team_id=row.team_id,
        submitted_by=row.submitted_by,
        identity=Identity.model_validate(row.identity) if row.identity is not None else None,
        journal_seq=row.journal_seq or 0,
        interrupted=unfinished
        and not waiting_in_queue
        and (row.executor_id is None or row.executor_id not in live_executors),
    )


def usage_columns(usage: Usage, turns: int) -> dict[str, Any]:
    """A run's usage as the columns of its row (for ``update_run``)."""
    return {
        "turns": turns,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": usage.cost_usd,
        "unpriced_calls": usage.unpriced_calls,
    }


class Store:
    """Runs, events and executors in one SQL database (SQLite by default, Postgres by URL)."""

    def __init__(self, url: str, *, home: Path | None = None, migrate: bool = True) -> None:
        tune_sqlite_engines()
        self.url = url
        self.home = home
        try:
            parsed = make_url(url)
        except Exception as err:
            raise UsageError(f"not a database URL: {url!r} ({err})") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database:
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create the store's directory for {parsed.database}: {err}") from None
        try:
            self.engine = create_engine(url, pool_pre_ping=self.dialect != "sqlite")
            if migrate:
                self.migrate()
        except SQLAlchemyError as err:
            where = parsed.render_as_string(hide_password=True)
            raise StoreError(f"cannot open the store at {where}: {db_error_reason(err)}") from None
        except ImportError as err:
            raise StoreError(
                f"no database driver for {parsed.drivername}: {err}",
                hint="install the driver the URL names (`pip install psycopg` for postgresql+psycopg)",
            ) from None
        self.journal = Journal(self.engine)

    @classmethod
    def open(cls, home: Path | None = None, url: str | None = None) -> Store:
        """The store of a project: ``$CORRAL_DATABASE_URL`` or ``sqlite:///<home>/corral.db``."""
        home = home or default_home()
        return cls(url or store_url(home), home=home)

    @property
    def runs_dir(self) -> Path:
        if self.home is None:
            raise StoreError("this store has no home directory for run workspaces")
        return self.home / "runs"

    def dbos_url(self) -> str:
        """Where DBOS keeps workflow state: a sibling SQLite file, or the same Postgres database."""
        explicit = os.environ.get("CORRAL_DBOS_DATABASE_URL")
        if explicit:
            return explicit
        if self.dialect == "sqlite":
            if self.home is None:
                raise StoreError("a SQLite store needs a home directory for the DBOS database")
            return f"sqlite:///{self.home / 'dbos.db'}"
        return self.url

    def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op, without importing Alembic, when it is there).

        Processes that open a new store at the same time take turns: the first one migrates, the
        others then find the schema at the newest revision.
        """
        if self._schema_revision() == HEAD_REVISION:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self._migration_lock(), self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            if _revision(conn) == HEAD_REVISION:
                return
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """An exclusive lock on a file beside a SQLite database (Postgres takes an advisory lock instead)."""
        database = make_url(self.url).database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            yield
            return
        path = f"{database}.migrate-lock"
        try:
            lock = open(path, "a")  # noqa: SIM115 - closed below, after the migration
        except OSError as err:
            raise StoreError(f"cannot create {path} to migrate the store: {err.strerror or err}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _schema_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return _revision(conn)
        except SQLAlchemyError:
            return None  # not readable yet: migrating says why, if it cannot either

    def close(self) -> None:
        """Commit what the journal still holds (or raise ``JournalError`` naming what it could not)."""
        try:
            self.journal.close()
        finally:
            self.engine.dispose()

    def check(self) -> int:
        """A trivial query over every table; the number of runs. Raises ``StoreError`` naming the reason."""
        try:
            with self.engine.connect() as conn:
                runs = conn.execute(select(func.count()).select_from(RunRow)).scalar_one()
                conn.execute(select(EventRow.id).limit(1)).all()
                conn.execute(select(ExecutorRow.id).limit(1)).all()
        except SQLAlchemyError as err:
            raise StoreError(f"the store does not answer queries: {db_error_reason(err)}") from err
        return runs

    # -- runs -------------------------------------------------------------------------------------

    def create_run(
        self, *, defer: bool = False, also: Callable[[Connection], None] | None = None, **fields: Any
    ) -> RunRecord:
        """Record a new run. ``defer``: its row is written by the journal with the events around it (in
        their group commit, not a transaction of its own); it is committed before the run's first event.
        ``also(connection)`` runs in the transaction that writes the row (queueing its workflow)."""
        values = {"status": RunStatus.QUEUED.value, "created_at": time.time(), **fields}
        row = RunRow(**values)
        if defer:
            self.journal.write_run(values["id"], insert=values)
        else:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                session.add(row)
                if also is not None:
                    session.flush()
                    also(session.connection())
        return _row_to_record(row, {row.executor_id} if row.executor_id else set())

    def find_run(self, run_id: str) -> RunRecord | None:
        """The run with exactly this id, or None; ``interrupted`` is not worked out (it is always False)."""
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id)
            return None if row is None else _row_to_record(row, {row.executor_id or ""})

    def get_run(self, run_id: str) -> RunRecord:
        """A run by id or by a unique id prefix."""
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id)
            if row is None and run_id:
                rows = session.scalars(
                    select(RunRow).where(RunRow.id.startswith(run_id, autoescape=True)).limit(2)
                ).all()
                if len(rows) > 1:
                    raise RunNotFoundError(f"run id prefix {run_id!r} is ambiguous; give more characters")
                row = rows[0] if rows else None
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r} in this store", hint="`corral runs` lists the runs")
            return _row_to_record(row, self.live_executor_ids() if row.status in UNFINISHED else set())

    def list_runs(
        self,
        *,
        limit: int | None = 50,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        before: float | None = None,
        team_id: str | None = None,
        older_than: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        """The newest runs first, up to ``limit`` (None: all), filtered in SQL.

        ``team_id``: only that team's runs. ``older_than``: only runs after this ``(created_at, id)``
        in the listing's order (the last one of the previous page: paging that a new run never shifts).

        ``status`` is a status as ``corral runs`` shows it (:data:`DISPLAY_STATUSES`): ``running``
        means running in a live process, ``interrupted`` unfinished with its process gone.
        ``since`` and ``before`` bound the creation time (a Unix timestamp; ``before`` excluded).
        """
        query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        if status is not None:
            query = query.where(self._status_is(status))
        if agent is not None:
            query = query.where(RunRow.agent == agent)
        if since is not None:
            query = query.where(RunRow.created_at >= since)
        if before is not None:
            query = query.where(RunRow.created_at < before)
        if team_id is not None:
            query = query.where(RunRow.team_id == team_id)
        if older_than is not None:
            created, run_id = older_than
            query = query.where(
                or_(RunRow.created_at < created, and_(RunRow.created_at == created, RunRow.id < run_id))
            )
        records = self._records(query)
        if status is not None:  # judged again with liveness read after the rows (see live_executor_ids)
            records = [r for r in records if r.display_status == status]
        return records

    def _status_is(self, status: str) -> ColumnElement[bool]:
        """The SQL condition for a shown status; whether an unfinished run is interrupted depends on live executors."""
        if status not in DISPLAY_STATUSES:
            raise UsageError(f"unknown status {status!r}", hint=f"one of: {', '.join(DISPLAY_STATUSES)}")
        if status != INTERRUPTED and RunStatus(status).finished:
            return RunRow.status == status
        live = self.live_executor_ids()
        waiting_in_queue = and_(
            RunRow.queue.is_not(None), RunRow.executor_id.is_(None), RunRow.status == RunStatus.QUEUED.value
        )
        if status == INTERRUPTED:
            gone = or_(RunRow.executor_id.is_(None), RunRow.executor_id.not_in(live))
            return and_(RunRow.status.in_(UNFINISHED), gone, ~waiting_in_queue)
        shown = and_(RunRow.status == status, RunRow.executor_id.in_(live))
        return or_(shown, waiting_in_queue) if status == RunStatus.QUEUED.value else shown

    def children(self, run_id: str) -> list[RunRecord]:
        return self._records(select(RunRow).where(RunRow.parent_id == run_id).order_by(RunRow.created_at))

    def interrupted_runs(self, exclude_executor: str | None = None) -> list[RunRecord]:
        """Unfinished runs whose executor is gone (or that never had one), oldest first.

        ``exclude_executor`` is the caller's own executor: alive by definition, even before it is
        registered, so its runs are never reported.
        """
        query = select(RunRow).where(RunRow.status.in_(UNFINISHED)).order_by(RunRow.created_at)
        with Session(self.engine) as session:
            rows = list(session.scalars(query))
            live = self.live_executor_ids() | ({exclude_executor} if exclude_executor is not None else set())
            records = [_row_to_record(r, live) for r in rows]
        return [r for r in records if r.interrupted]

    def _records(self, query: Any) -> list[RunRecord]:
        with Session(self.engine) as session:
            rows = list(session.scalars(query))
            live = self.live_executor_ids() if any(r.status in UNFINISHED for r in rows) else set()
            return [_row_to_record(r, live) for r in rows]

    def update_run(self, run_id: str, *, defer: bool = False, **fields: Any) -> None:
        """Change a run's columns; ``defer``: through the journal, in order with its events (see ``create_run``)."""
        if isinstance(fields.get("status"), RunStatus):
            fields["status"] = fields["status"].value
        if defer:
            self.journal.write_run(run_id, update=fields)
            return
        with self.engine.begin() as conn:
            conn.execute(update(RunRow).where(RunRow.id == run_id).values(**fields))

    def set_usage(self, run_id: str, usage: Usage, turns: int) -> None:
        self.update_run(run_id, **usage_columns(usage, turns))

    # -- removing runs ----------------------------------------------------------------------------

    def run_trees(self, run_ids: Collection[str]) -> list[RunRecord]:
        """The runs ``run_ids`` and every run started under them (by ``parent_id``), parents first."""
        ids = list(dict.fromkeys(run_ids))
        frontier, seen = ids, set(ids)
        with self.engine.connect() as conn:
            while frontier:
                children = conn.execute(select(RunRow.id).where(RunRow.parent_id.in_(frontier))).scalars()
                frontier = [c for c in children if c not in seen]
                seen.update(frontier)
                ids += frontier
        by_id = {r.id: r for r in self._records(select(RunRow).where(RunRow.id.in_(ids)))}
        return [by_id[i] for i in ids if i in by_id]

    def followers(self, run_ids: Collection[str]) -> list[RunRecord]:
        """Runs not in ``run_ids`` that continue one of them (``continues_id``, ``corral continue``)."""
        ids = list(run_ids)
        query = select(RunRow).where(RunRow.continues_id.in_(ids), RunRow.id.not_in(ids)).order_by(RunRow.created_at)
        return self._records(query)

    def remove_runs(self, run_ids: Collection[str]) -> int:
        """Delete runs and their journals in one transaction; the number of events deleted.

        Whole trees only: a run started under one of them (``parent_id``) must be among them. Runs
        that continue one of them lose that link (``continues_id`` becomes NULL). Files are the
        caller's (the store does not know what a run dir holds).
        """
        ids = list(dict.fromkeys(run_ids))
        with self.engine.begin() as conn:
            orphans = conn.execute(
                select(RunRow.id, RunRow.parent_id).where(RunRow.parent_id.in_(ids), RunRow.id.not_in(ids))
            ).all()
            if orphans:
                child, parent = orphans[0]
                raise UsageError(f"run {parent} has sub-run {child}, which would be left without it")
            conn.execute(update(RunRow).where(RunRow.continues_id.in_(ids)).values(continues_id=None))
            events = conn.execute(delete(EventRow).where(EventRow.run_id.in_(ids))).rowcount
            conn.execute(delete(ApprovalRow).where(ApprovalRow.run_id.in_(ids)))
            # One statement: the parent_id foreign key is checked once it has deleted a whole tree.
            conn.execute(delete(RunRow).where(RunRow.id.in_(ids)))
        for run_id in ids:
            self.journal.forget(run_id)
        return events

    # -- events -----------------------------------------------------------------------------------

    def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        """A run's journal in sequence order; this process's pending writes are flushed first.

        Raises ``JournalError`` if they cannot be committed: a reader never gets a journal that
        silently lacks events this process appended.
        """
        self.journal.flush()
        return list(self.iter_events(run_id, after_seq=after_seq))

    def iter_events(self, run_id: str, *, after_seq: int = 0) -> Iterator[EventRecord]:
        """A run's committed journal entries with ``seq > after_seq``, each with its typed event."""
        columns = (EventRow.seq, EventRow.type, EventRow.key, EventRow.ts, EventRow.duration_ms, EventRow.data)
        query = select(*columns).where(EventRow.run_id == run_id, EventRow.seq > after_seq).order_by(EventRow.seq)
        with self.engine.connect() as conn:
            for seq, type_, key, ts, duration_ms, data in conn.execute(query):
                try:
                    event = parse_event(type_, key, ts, duration_ms, data)
                except ValidationError as err:
                    raise StoreError(
                        f"event {seq} ({type_}) of run {run_id} is not a valid event: {err}",
                        hint="was it written by another version of corral?",
                    ) from None
                yield EventRecord(run_id=run_id, seq=seq, event=event)

    def verify_journal(self, run_id: str) -> Verification:
        """Check a run's journal against its hash chain and its recorded head (``corral.store.chain``).

        Reads the stored columns as they are (the data as text, parsed here), so an event edited into
        something no longer readable is reported as changed, not raised.
        """
        self.journal.flush()
        columns = (
            EventRow.seq,
            EventRow.key,
            EventRow.type,
            EventRow.ts,
            EventRow.duration_ms,
            cast(EventRow.data, Text),
            EventRow.prev_hash,
            EventRow.hash,
        )
        with self.engine.connect() as conn:
            head = conn.execute(select(RunRow.journal_seq, RunRow.journal_head).where(RunRow.id == run_id)).first()
            if head is None:
                raise RunNotFoundError(f"no run {run_id!r} in this store", hint="`corral runs` lists the runs")
            rows = [
                ChainedRow(seq, key, type_, ts, duration_ms, _json_or_text(data), prev_hash, hash_)
                for seq, key, type_, ts, duration_ms, data, prev_hash, hash_ in conn.execute(
                    select(*columns).where(EventRow.run_id == run_id).order_by(EventRow.seq)
                )
            ]
        return verify(run_id, rows, head.journal_seq or 0, head.journal_head)

    # -- approvals --------------------------------------------------------------------------------

    def request_approval(self, **fields: Any) -> ApprovalRecord:
        """Record a pending request (``id`` and the action's fields); the same id again returns the first one.

        A replayed run asks again with the same id (made from its run and call ids): it must find its
        request, decided or not, and never make a second one.
        """
        with Session(self.engine) as session, session.begin():
            row = session.get(ApprovalRow, fields["id"])
            if row is None:
                row = ApprovalRow(status=ApprovalStatus.PENDING.value, **fields)
                session.add(row)
            return _approval(row)

    def get_approval(self, approval_id: str) -> ApprovalRecord:
        with Session(self.engine) as session:
            row = session.get(ApprovalRow, approval_id)
            if row is None:
                raise ApprovalNotFoundError(
                    f"no approval request {approval_id!r} in this store",
                    hint="`corral approvals` lists the pending ones",
                )
            return _approval(row)

    def approvals(
        self,
        *,
        status: ApprovalStatus | None = ApprovalStatus.PENDING,
        run_id: str | None = None,
        team_id: str | None = None,
    ) -> list[ApprovalRecord]:
        """Requests with ``status`` (all with None), of one run or all (of one team's runs), oldest first."""
        query = select(ApprovalRow).order_by(ApprovalRow.created_at, ApprovalRow.id)
        if team_id is not None:
            query = query.join(RunRow, RunRow.id == ApprovalRow.run_id).where(RunRow.team_id == team_id)
        if status is not None:
            query = query.where(ApprovalRow.status == status.value)
        if run_id is not None:
            query = query.where(ApprovalRow.run_id == run_id)
        with Session(self.engine) as session:
            return [_approval(row) for row in session.scalars(query)]

    def settle_approval(
        self, approval_id: str, status: ApprovalStatus, *, by: str, reason: str | None, now: float | None = None
    ) -> ApprovalRecord | None:
        """Decide a pending request, atomically; None when it was no longer pending (the record says why)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            done = conn.execute(
                update(ApprovalRow)
                .where(ApprovalRow.id == approval_id, ApprovalRow.status == ApprovalStatus.PENDING.value)
                .values(status=status.value, decided_at=now, decided_by=by, decision_reason=reason)
            )
        return self.get_approval(approval_id) if done.rowcount == 1 else None

    # -- executors (the processes running workflows) ----------------------------------------------

    def register_executor(self, executor_id: str, host: str, pid: int, *, queues: list[str] | None = None) -> None:
        """Record a process that executes runs; ``queues``: the run queues it serves (a worker)."""
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(ExecutorRow).values(
                    id=executor_id, host=host, pid=pid, started_at=now, heartbeat_at=now, queues=queues
                )
            )

    def heartbeat(self, executor_id: str) -> bool:
        """Mark the executor alive now; False if it has no row (it was taken for gone and forgotten)."""
        with self.engine.begin() as conn:
            beat = update(ExecutorRow).where(ExecutorRow.id == executor_id).values(heartbeat_at=time.time())
            return conn.execute(beat).rowcount == 1

    def unregister_executor(self, executor_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(ExecutorRow).where(ExecutorRow.id == executor_id))

    def live_executor_ids(self) -> set[str]:
        """Executors whose process is alive: on this host its pid runs, elsewhere it beat within 30 s.

        Read it *after* the rows it judges (runs naming executors): an executor registers before it
        takes a run, so a later read sees every executor an earlier run row names. Read before them,
        an executor registering in between would look gone.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(select(ExecutorRow.id, ExecutorRow.host, ExecutorRow.pid, ExecutorRow.heartbeat_at))
            return live_ids(rows)

    def executors(self) -> list[ExecutorRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(session.scalars(select(ExecutorRow)))
            session.expunge_all()
            return rows


def _json_or_text(stored: str | None) -> Any:
    """A JSON column read as text, parsed; text that is not JSON stays text (and matches no hash)."""
    try:
        return json.loads(stored) if stored is not None else None
    except ValueError:
        return stored


def _approval(row: ApprovalRow) -> ApprovalRecord:
    return ApprovalRecord.model_validate(row, from_attributes=True)
