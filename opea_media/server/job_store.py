"""Where the jobs API's jobs live: SQLite under the data folder (the default, one process), or
PostgreSQL shared by replicas (job_store_pg.py). Both run the same SQL through `SqlJobStore`.

A job row holds everything needed to run it again from the start (its validated request, its
input images' file names), its state, its progress and its outcome. Every change is published to
the listeners (`listen`): SQLite's within the process, PostgreSQL's to every replica through
NOTIFY, so any process can answer a job's GET, events and cancel.

The calls block (SQLite or a socket): the event loop calls them in a thread; the worker thread
calls `step` directly, once per denoising step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import FINAL_JOB_STATES, JOB_STATES
from ..errors import InvalidInput

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = JOB_STATES
FINAL_STATES = FINAL_JOB_STATES

TABLE = "opea_media_jobs"
_COLUMNS = (
    "id, task, state, request, fingerprint, formats, idempotency_key, created_at, started_at, "
    "finished_at, step, total, phase, result, error, attempts, owner, lease_until, "
    "cancel_requested, version"
)
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id TEXT PRIMARY KEY,
        task TEXT NOT NULL,
        state TEXT NOT NULL,
        request TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        formats TEXT NOT NULL,
        idempotency_key TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        step INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL DEFAULT 0,
        phase TEXT,
        result TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0
    )""",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (task, idempotency_key)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_queue ON {TABLE} (task, state, created_at)",
)


@dataclass(frozen=True)
class JobRecord:
    """One row. `request` is the validated body with its seed resolved (image2video: the input
    images replaced by their stored files' names); `result` and `error` are set once final."""

    id: str
    task: str
    state: str
    request: dict[str, Any]
    fingerprint: str  # of the submitted body: an Idempotency-Key replayed with another body is refused
    formats: tuple[str, ...]
    idempotency_key: str | None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    total: int = 0
    phase: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # {"status_code": ..., "detail": ...}
    attempts: int = 0  # how many times a replica started it
    owner: str | None = None  # the replica running it
    lease_until: float | None = None
    cancel_requested: bool = False
    version: int = 0  # +1 on every change: listeners drop what they saw already

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> str:
        return json.dumps(
            {name: getattr(self, name) for name in _FIELDS}, separators=(",", ":"), allow_nan=False
        )

    @classmethod
    def from_json(cls, text: str) -> JobRecord:
        data = json.loads(text)
        data["formats"] = tuple(data["formats"])
        return cls(**data)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JobRecord:
        values = dict(zip(_FIELDS, row, strict=True))
        for name in ("request", "result", "error"):
            values[name] = None if values[name] is None else json.loads(values[name])
        values["formats"] = tuple(json.loads(values["formats"]))
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)

    def row(self) -> tuple[Any, ...]:
        values = {name: getattr(self, name) for name in _FIELDS}
        for name in ("request", "result", "error"):
            values[name] = None if values[name] is None else json.dumps(values[name], allow_nan=False)
        values["formats"] = json.dumps(list(self.formats))
        values["cancel_requested"] = int(self.cancel_requested)
        return tuple(values[name] for name in _FIELDS)


_FIELDS = tuple(name.strip() for name in _COLUMNS.split(","))
Listener = Callable[[JobRecord], None]


def new_job_id() -> str:
    return uuid.uuid4().hex


class SqlJobStore:
    """The jobs' semantics in SQL both SQLite and PostgreSQL run. Subclasses give the connection,
    the transaction, how the next queued job is taken, and how a change reaches the listeners."""

    shared = False
    # Appended to the SELECTs that a transaction reads before it writes the same rows back
    # (`_write` stores whole records): PostgreSQL's " FOR UPDATE" keeps a concurrent transaction of
    # another replica from writing between the read and the write (a cancel lost under a step).
    # SQLite needs none: BEGIN IMMEDIATE already runs one writing transaction at a time.
    _row_lock = ""
    # The same, skipping rows another transaction holds: for sweeps over other replicas' jobs
    # (recover), which look again at their next round rather than wait behind a stalled replica.
    _row_lock_skip = ""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    # --- what a subclass provides ----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:  # yields a cursor taking "?" placeholders
        raise NotImplementedError
        yield

    def _next_queued_sql(self) -> str:
        """SELECT the id of the oldest queued job of a task (one parameter), locked for this
        transaction where the database can."""
        raise NotImplementedError

    def _published(self, cursor: Any, record: JobRecord) -> None:
        """Called inside the transaction that changed `record`."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- listeners ------------------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _deliver(self, record: JobRecord) -> None:
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:  # a listener's bug must not undo the change nor stop the others
                log.exception("a job listener failed")

    # --- queries --------------------------------------------------------------------------------

    def _select(
        self, cursor: Any, where: str, params: Sequence[Any], *, lock: bool = False, skip_locked: bool = False
    ) -> list[JobRecord]:
        """`lock`: the rows are written back in this transaction (see `_row_lock`); `skip_locked`:
        and rows other transactions hold are left out."""
        locking = self._row_lock_skip if skip_locked else self._row_lock if lock else ""
        cursor.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE {where}{locking}", params)
        return [JobRecord.from_row(row) for row in cursor.fetchall()]

    def _one(self, cursor: Any, job_id: str, *, lock: bool = False) -> JobRecord | None:
        rows = self._select(cursor, "id = ?", (job_id,), lock=lock)
        return rows[0] if rows else None

    def _write(self, cursor: Any, record: JobRecord) -> JobRecord:
        """Store `record` (one version on) over its row and publish it."""
        record = replace(record, version=record.version + 1)
        assignments = ", ".join(f"{name} = ?" for name in _FIELDS if name != "id")
        values = [v for name, v in zip(_FIELDS, record.row(), strict=True) if name != "id"]
        cursor.execute(f"UPDATE {TABLE} SET {assignments} WHERE id = ?", (*values, record.id))
        self._published(cursor, record)
        return record

    def submit(
        self,
        *,
        task: str,
        request: dict[str, Any],
        fingerprint: str,
        formats: tuple[str, ...],
        idempotency_key: str | None,
        job_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """A new queued job, or (False) the job already submitted under this Idempotency-Key."""
        with self._transaction() as cursor:
            if idempotency_key is not None:
                found = self._select(cursor, "task = ? AND idempotency_key = ?", (task, idempotency_key))
                if found:
                    return found[0], False
            record = JobRecord(
                id=job_id or new_job_id(),
                task=task,
                state=QUEUED,
                request=request,
                fingerprint=fingerprint,
                formats=formats,
                idempotency_key=idempotency_key,
                created_at=time.time(),
                version=1,
            )
            marks = ", ".join("?" for _ in _FIELDS)
            cursor.execute(f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({marks})", record.row())
            self._published(cursor, record)
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._transaction() as cursor:
            return self._one(cursor, job_id)

    def page(self, task: str, *, limit: int, before: str | None = None) -> list[JobRecord]:
        """Newest first; `before`: a job id, to continue after it."""
        with self._transaction() as cursor:
            if before is None:
                where, params = "task = ?", (task,)
            else:
                anchor = self._one(cursor, before)
                if anchor is None or anchor.task != task:
                    raise InvalidInput(f"no job {before[:64]!r} to page from", field="before")
                where = "task = ? AND (created_at < ? OR (created_at = ? AND id < ?))"
                params = (task, anchor.created_at, anchor.created_at, anchor.id)  # type: ignore[assignment]
            return self._select(cursor, f"{where} ORDER BY created_at DESC, id DESC LIMIT {int(limit)}", params)

    def position(self, record: JobRecord) -> int:
        """1 for the next job to run."""
        with self._transaction() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM {TABLE} WHERE task = ? AND state = ? "
                "AND (created_at < ? OR (created_at = ? AND id < ?))",
                (record.task, QUEUED, record.created_at, record.created_at, record.id),
            )
            return int(cursor.fetchone()[0]) + 1

    def queued_count(self, task: str) -> int:
        with self._transaction() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE task = ? AND state = ?", (task, QUEUED))
            return int(cursor.fetchone()[0])

    def claim(self, task: str, owner: str, lease: float) -> JobRecord | None:
        """Take the oldest queued job for `owner` until `lease` seconds from now (renewed as it runs)."""
        with self._transaction() as cursor:
            cursor.execute(self._next_queued_sql(), (task,))
            row = cursor.fetchone()
            if row is None:
                return None
            record = self._one(cursor, row[0])
            assert record is not None
            now = time.time()
            return self._write(
                cursor,
                replace(
                    record, state=RUNNING, owner=owner, lease_until=now + lease, started_at=now,
                    attempts=record.attempts + 1, step=0, total=0, phase=None,
                ),
            )

    def _owned(self, cursor: Any, job_id: str, owner: str) -> JobRecord | None:
        record = self._one(cursor, job_id, lock=True)
        if record is None or record.state != RUNNING or record.owner != owner:
            return None
        return record

    def step(self, job_id: str, owner: str, step: int, total: int, phase: str, lease: float) -> JobRecord | None:
        """Record progress (and extend the lease); None once the job is no longer this owner's."""
        with self._transaction() as cursor:
            record = self._owned(cursor, job_id, owner)
            if record is None:
                return None
            return self._write(
                cursor, replace(record, step=step, total=total, phase=phase, lease_until=time.time() + lease)
            )

    def renew(self, owner: str, job_ids: Sequence[str], lease: float) -> set[str]:
        """Extend the leases of `owner`'s running jobs; the ids it still owns."""
        if not job_ids:
            return set()
        marks = ", ".join("?" for _ in job_ids)
        with self._transaction() as cursor:
            cursor.execute(
                f"UPDATE {TABLE} SET lease_until = ? WHERE owner = ? AND state = ? AND id IN ({marks})",
                (time.time() + lease, owner, RUNNING, *job_ids),
            )
            cursor.execute(
                f"SELECT id FROM {TABLE} WHERE owner = ? AND state = ? AND id IN ({marks})",
                (owner, RUNNING, *job_ids),
            )
            return {row[0] for row in cursor.fetchall()}

    def finish(
        self,
        job_id: str,
        owner: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None:
        """End `owner`'s running job; None if it is not (any more) that owner's: its lease ran out
        and another replica took it, so this outcome is dropped and the job ends only once."""
        assert state in FINAL_STATES
        with self._transaction() as cursor:
            record = self._owned(cursor, job_id, owner)
            if record is None:
                return None
            return self._write(
                cursor,
                replace(
                    record, state=state, result=result, error=error, finished_at=time.time(),
                    owner=None, lease_until=None,
                ),
            )

    def release(self, job_id: str, owner: str) -> JobRecord | None:
        """Put `owner`'s running job back at its place in the queue (the service is stopping)."""
        with self._transaction() as cursor:
            record = self._owned(cursor, job_id, owner)
            if record is None:
                return None
            if record.cancel_requested:
                return self._write(
                    cursor, replace(record, state=CANCELLED, finished_at=time.time(), owner=None, lease_until=None)
                )
            return self._write(
                cursor,
                replace(record, state=QUEUED, owner=None, lease_until=None, started_at=None, step=0, total=0, phase=None),
            )

    def cancel(self, job_id: str) -> JobRecord | None:
        """A queued job ends cancelled now; a running one is asked to stop (its owner ends it at
        its next step); a finished one stays as it is. None: no such job."""
        with self._transaction() as cursor:
            record = self._one(cursor, job_id, lock=True)
            if record is None or record.final:
                return record
            if record.state == QUEUED:
                return self._write(cursor, replace(record, state=CANCELLED, finished_at=time.time()))
            if record.cancel_requested:
                return record
            return self._write(cursor, replace(record, cancel_requested=True))

    def recover(self, task: str, *, expired_before: float, rerun: bool, max_attempts: int) -> list[JobRecord]:
        """Running jobs whose lease ran out before `expired_before` (their replica died): queued
        again from the start, or failed with the reason (`rerun` False, or `max_attempts` reached)."""
        with self._transaction() as cursor:
            lost = self._select(
                cursor,
                "task = ? AND state = ? AND lease_until < ?",
                (task, RUNNING, expired_before),
                skip_locked=True,  # a job being changed now (by a replica thought dead) waits a round
            )
            changed = []
            for record in lost:
                if record.cancel_requested:
                    changed.append(self._write(cursor, replace(
                        record, state=CANCELLED, finished_at=time.time(), owner=None, lease_until=None
                    )))
                elif rerun and record.attempts < max_attempts:
                    changed.append(self._write(cursor, replace(
                        record, state=QUEUED, owner=None, lease_until=None, started_at=None,
                        step=0, total=0, phase=None,
                    )))
                else:
                    why = (
                        f"it was interrupted {record.attempts} times" if rerun
                        else "jobs interrupted that way are not run again (--interrupted-jobs fail)"
                    )
                    detail = f"the service stopped while this job ran, and {why}; submit it again"
                    changed.append(self._write(cursor, replace(
                        record, state=FAILED, finished_at=time.time(), owner=None, lease_until=None,
                        error={"status_code": 500, "detail": detail},
                    )))
            return changed

    def prune(self, task: str, *, finished_before: float) -> list[JobRecord]:
        """Forget jobs that ended before `finished_before` (their result files go by the output
        folder's own retention); the records removed."""
        with self._transaction() as cursor:
            old = self._select(cursor, "task = ? AND finished_at < ?", (task, finished_before))
            if old:
                marks = ", ".join("?" for _ in old)
                cursor.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", [r.id for r in old])
            return old


class SqliteJobStore(SqlJobStore):
    """The embedded store: one SQLite file under the data folder, owned by one process (a lock
    file says so); its changes reach listeners in this process."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _hold_lock(path.with_name(path.name + ".lock"))
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses no committed job
        self._lock = threading.Lock()
        self._pending: list[JobRecord] = []
        with self._transaction() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                self._pending.clear()
                raise
            cursor.execute("COMMIT")
            pending, self._pending = self._pending, []
        for record in pending:  # after the commit, outside the lock: listeners may read the store
            self._deliver(record)

    def _next_queued_sql(self) -> str:
        # BEGIN IMMEDIATE holds the database's write lock: no other claim runs meanwhile.
        return f"SELECT id FROM {TABLE} WHERE task = ? AND state = 'queued' ORDER BY created_at, id LIMIT 1"

    def _published(self, cursor: Any, record: JobRecord) -> None:
        self._pending.append(record)

    def close(self) -> None:
        with self._lock:
            self._connection.close()
        self._lock_file.close()


def _hold_lock(path: Path) -> Any:
    """An exclusive lock on `path` for this process's life: a second service on the same data
    folder is refused with a clear line instead of running every job twice."""
    handle = open(path, "a+")  # noqa: SIM115 (held open until close())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InvalidInput(
            f"the jobs in {path.parent} are in use by {holder}; give each service its own --data-dir, "
            "or share jobs between replicas with --jobs-store postgresql://..."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def store_kind(url: str | None) -> str:
    """"sqlite" or "postgresql" for a --jobs-store value; InvalidInput for anything else (the
    message shows the scheme only: a URL may hold a password)."""
    if url is None or url == "sqlite":
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise InvalidInput(
        f"jobs_store must be 'sqlite' or a postgresql:// URL, got one starting {url.split(':', 1)[0][:20]!r}"
    )


def open_store(url: str | None, data_dir: Path) -> SqlJobStore:
    """The store a --jobs-store value names: None (SQLite under data_dir) or postgresql://..."""
    if store_kind(url) == "sqlite":
        return SqliteJobStore(data_dir / "jobs.sqlite3")
    from .job_store_pg import PostgresJobStore

    assert url is not None
    return PostgresJobStore(url)
