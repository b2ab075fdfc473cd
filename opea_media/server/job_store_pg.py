"""The jobs store of replicas: one PostgreSQL queue (`--jobs-store postgresql://...`), through psycopg 3.

The SQL is SqlJobStore's (job_store.py); this module adds what only PostgreSQL does:
- the next job is taken with `FOR UPDATE SKIP LOCKED`: two replicas claiming at once take two
  different jobs, and neither waits for the other;
- a row read to be written back is read `FOR UPDATE` (`_row_lock`), so a cancel is never lost
  under a concurrent step of the replica running the job; recovery skips rows being changed;
- every change is sent with `pg_notify` in the transaction that made it, and a listener thread on
  its own connection delivers the other replicas' changes to this process's listeners. A record
  too large for a notification (8000 bytes) is sent as its id, and the listener reads the row;
- two replicas submitting the same Idempotency-Key at once get the same job.

One connection, used by one transaction at a time (a lock: the worker thread and the I/O threads
call the store concurrently), reconnected when the server went away. The URL's password is never
logged nor put in an error: they name host:port/database.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from ..errors import InvalidInput, StoreUnavailable
from .job_store import SCHEMA, TABLE, JobRecord, SqlJobStore

log = logging.getLogger(__name__)

CHANNEL = TABLE  # the LISTEN/NOTIFY channel
NOTIFY_LIMIT = 8000  # bytes: PostgreSQL refuses a longer payload
CONNECT_TIMEOUT = 5  # seconds, unless the URL sets connect_timeout
SCHEMA_LOCK = 0x6F70_656D_6564_6961  # pg_advisory_xact_lock key: replicas create the table one at a time
# A replica frozen mid-transaction (SIGSTOP, a paused VM) would hold its job's row for as long as
# it stays frozen: the server ends a session idle in a transaction this long (ours last
# milliseconds), and a transaction waits at most LOCK_TIMEOUT_MS for a row (then StoreUnavailable,
# a 503 to retry) rather than stall its whole process, whose one connection it holds.
IDLE_IN_TRANSACTION_MS = 5_000
LOCK_TIMEOUT_MS = 2_000
LISTEN_POLL = 0.5  # seconds: how soon the listener notices close()
RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # the listener's backoff; the last repeats


class PostgresJobStore(SqlJobStore):
    """Jobs in PostgreSQL, shared by every replica that names the same database."""

    shared = True
    _row_lock = " FOR UPDATE"
    _row_lock_skip = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        super().__init__()
        self._params = _connection_params(url)
        self.where = _where(self._params)
        self._lock = threading.Lock()
        self._pending: list[JobRecord] = []
        self._own_pids: set[int] = set()  # this store's sessions: their notifications are delivered at commit
        self._closed = threading.Event()
        self._connection = self._connect()
        try:
            with self._transaction() as cursor:
                # CREATE TABLE IF NOT EXISTS is not safe against itself: two replicas starting
                # together could both try. The first takes the lock, the second finds the table.
                cursor.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                for statement in SCHEMA:
                    cursor.execute(statement)
            self._listening = threading.Event()
            self._listener = threading.Thread(
                target=self._listen_forever, name="opea-media-jobs-listener", daemon=True
            )
            self._listener.start()
            if not self._listening.wait(CONNECT_TIMEOUT * 2):
                raise StoreUnavailable(f"the jobs database at {self.where} accepted no LISTEN connection")
        except BaseException:
            self.close()
            raise

    # --- connections ------------------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            connection = psycopg.connect(**self._params, autocommit=autocommit)
        except psycopg.Error as exc:
            reason = self._reason(exc)
            raise StoreUnavailable(f"cannot reach the jobs database at {self.where}: {reason}") from None
        if not autocommit:
            self._own_pids.add(connection.info.backend_pid)
        return connection

    def _reason(self, exc: BaseException) -> str:
        return _reason(exc, self._params.get("password"))

    def _reconnect(self) -> psycopg.Connection[Any]:
        with contextlib.suppress(psycopg.Error):
            self._connection.close()
        self._connection = self._connect()
        log.info("reconnected to the jobs database", extra={"database": self.where})
        return self._connection

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._closed.is_set():
                raise StoreUnavailable("the jobs store is closed (the service is stopping)")
            if self._connection.closed or self._connection.broken:
                self._reconnect()
            cursor = _Cursor(self)
            try:
                yield cursor
                self._connection.commit()
            except BaseException as exc:
                self._pending.clear()
                with contextlib.suppress(psycopg.Error):
                    self._connection.rollback()
                if self._unavailable(exc):
                    raise StoreUnavailable(
                        f"the jobs database at {self.where} failed: {self._reason(exc)}"
                    ) from exc
                raise
            pending, self._pending = self._pending, []
        for record in pending:  # after the commit, outside the lock: listeners may read the store
            self._deliver(record)

    def _unavailable(self, exc: BaseException) -> bool:
        """The server or the connection failed (not our SQL): a lock timeout, a restart, a session
        the server ended (idle in a transaction: an InternalError, the connection then broken)."""
        return isinstance(exc, psycopg.OperationalError) or (
            isinstance(exc, psycopg.Error) and self._connection.broken
        )

    def _next_queued_sql(self) -> str:
        # The oldest queued job that no other transaction holds: concurrent claims take different jobs.
        return (
            f"SELECT id FROM {TABLE} WHERE task = ? AND state = 'queued' ORDER BY created_at, id "
            "LIMIT 1 FOR UPDATE SKIP LOCKED"
        )

    def _published(self, cursor: Any, record: JobRecord) -> None:
        payload = record.to_json()
        if len(payload.encode("utf-8")) >= NOTIFY_LIMIT:
            payload = record.id  # the listeners read the row (a long prompt, many result files)
        cursor.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))  # sent at commit, dropped on rollback
        self._pending.append(record)

    def submit(self, **kwargs: Any) -> tuple[JobRecord, bool]:
        try:
            return super().submit(**kwargs)
        except psycopg.errors.UniqueViolation as exc:
            if kwargs.get("idempotency_key") is None or exc.diag.constraint_name != f"{TABLE}_key":
                raise
        # Another replica inserted the same (task, key) between this one's look and its insert;
        # its job is committed now, so looking again finds it.
        return super().submit(**kwargs)

    def close(self) -> None:
        self._closed.set()
        listener = getattr(self, "_listener", None)
        if listener is not None and listener is not threading.current_thread():
            listener.join(LISTEN_POLL * 4)
        with self._lock:
            self._connection.close()

    # --- the other replicas' changes --------------------------------------------------------------

    def _listen_forever(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                with self._connect(autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        log.info("listening to the jobs database again", extra={"database": self.where})
                    failures = 0
                    self._listening.set()
                    while not self._closed.is_set():
                        for notify in connection.notifies(timeout=LISTEN_POLL):
                            self._notified(notify)
            except (psycopg.Error, StoreUnavailable) as exc:
                if self._closed.is_set():
                    return
                if failures == 0:  # once per outage; the runner's polling covers what is missed
                    log.warning(
                        "lost the jobs database's notifications; reconnecting: %s",
                        self._reason(exc),
                        extra={"database": self.where},
                    )
                self._closed.wait(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
                failures += 1

    def _notified(self, notify: psycopg.Notify) -> None:
        if notify.pid in self._own_pids:
            return  # delivered at its commit already
        try:
            text = notify.payload
            record = JobRecord.from_json(text) if text.startswith("{") else self.get(text)
        except Exception:  # a bad payload or the row unreadable: the runner's polling catches up
            log.warning("could not read a job's change", exc_info=True)
            return
        if record is not None:
            self._deliver(record)


class _Cursor:
    """A psycopg cursor that takes the base class's `?` placeholders. A connection found dead at
    the transaction's first statement (the server restarted since) is replaced and the statement
    run again: nothing of the transaction had happened yet."""

    def __init__(self, store: PostgresJobStore) -> None:
        self._store = store
        self._cursor = store._connection.cursor()
        self._fresh = True

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        query = sql.replace("%", "%%").replace("?", "%s")
        try:
            self._cursor.execute(query, tuple(params))
        except psycopg.Error:
            if not (self._fresh and self._store._connection.broken):
                raise
            self._cursor = self._store._reconnect().cursor()
            self._cursor.execute(query, tuple(params))
        self._fresh = False

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


def _connection_params(url: str) -> dict[str, Any]:
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.Error as exc:  # libpq's reason names the option at fault
        raise InvalidInput(
            f"--jobs-store: not a usable postgresql:// URL ({_reason(exc, _password_in(url))})"
        ) from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("application_name", "opea-media")
    guards = (
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
    )
    params["options"] = f"{guards} {params.get('options', '')}".strip()  # the URL's own settings win
    return params


def _reason(exc: BaseException, password: str | None) -> str:
    """libpq's first line (after "connection to server ... failed: "), without the password should
    a message ever echo it."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[0].split("failed: ")[-1].strip()
    return text.replace(password, "***") if password else text


def _password_in(url: str) -> str | None:
    """The password of a postgresql://user:password@host URL, to keep it out of messages."""
    credentials = url.partition("://")[2].rpartition("@")[0]
    return credentials.partition(":")[2] or None


def _where(params: dict[str, Any]) -> str:
    """host:port/database, as an operator would look for it (no user, no password)."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or 'postgres'}"
