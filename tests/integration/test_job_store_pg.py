"""PostgresJobStore against a real PostgreSQL server: what replicas sharing one queue rely on.

Each store instance is what one replica holds (its own connections), so two instances on one
database stand for two replicas.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from opea_media.errors import StoreUnavailable
from opea_media.server.job_store import _COLUMNS, QUEUED, RUNNING, SUCCEEDED, TABLE, JobRecord, new_job_id
from opea_media.server.job_store_pg import IDLE_IN_TRANSACTION_MS, NOTIFY_LIMIT, PostgresJobStore

from .live_service import command, free_port
from .postgres_env import Cluster, start_cluster, stop_cluster

T2I = "text2image"


@pytest.fixture
def stores(postgres_url: str) -> Iterator[Callable[[], PostgresJobStore]]:
    """Factory: store instances on the test's database (each a replica's), closed after."""
    opened: list[PostgresJobStore] = []

    def open_one() -> PostgresJobStore:
        opened.append(PostgresJobStore(postgres_url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


def submit(store: PostgresJobStore, key: str | None = None, prompt: str = "a fox") -> JobRecord:
    record, _created = store.submit(
        task=T2I, request={"prompt": prompt}, fingerprint="f", formats=(), idempotency_key=key
    )
    return record


def in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `function` in a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(function())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


class Changes:
    """A listener that keeps every record delivered to it."""

    def __init__(self) -> None:
        self.records: list[JobRecord] = []
        self._arrived = threading.Condition()

    def __call__(self, record: JobRecord) -> None:
        with self._arrived:
            self.records.append(record)
            self._arrived.notify_all()

    def wait_for(self, predicate: Callable[[list[JobRecord]], bool], timeout: float = 5) -> list[JobRecord]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: predicate(self.records), timeout), self.records
            return list(self.records)


def test_two_replicas_claiming_at_once_never_take_the_same_job(stores: Any) -> None:
    first, second = stores(), stores()
    submitted = {submit(first, prompt=f"job {k}").id for k in range(30)}
    taken: dict[str, list[str]] = {"first": [], "second": []}
    start = threading.Barrier(2)

    def drain(store: PostgresJobStore, name: str) -> None:
        start.wait()
        while (record := store.claim(T2I, name, 30)) is not None:
            taken[name].append(record.id)

    threads = [threading.Thread(target=drain, args=(s, n)) for s, n in ((first, "first"), (second, "second"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(taken["first"]) & set(taken["second"])
    assert sorted(taken["first"] + taken["second"]) == sorted(submitted)
    owners = {r.id: r.owner for r in first.page(T2I, limit=100)}
    assert all(owners[i] == name for name, ids in taken.items() for i in ids)


def test_a_claim_skips_a_job_another_transaction_holds_instead_of_waiting(stores: Any) -> None:
    holder, claimer = stores(), stores()
    oldest, newer = submit(holder), submit(holder)
    with holder._transaction() as cursor:  # another replica's claim, still in progress
        cursor.execute(f"SELECT id FROM {TABLE} WHERE id = ? FOR UPDATE", (oldest.id,))
        thread, out = in_thread(lambda: claimer.claim(T2I, "claimer", 30))
        thread.join(5)
        assert not thread.is_alive(), "the claim waited for the locked job (no SKIP LOCKED)"
    assert out[0].id == newer.id and out[0].state == RUNNING
    assert holder.get(oldest.id).state == QUEUED  # type: ignore[union-attr]


def test_a_replica_stalled_mid_transaction_stalls_no_other(stores: Any) -> None:
    """A frozen replica holding its job's row: recovery skips the row instead of waiting, a cancel
    gives up after the lock timeout (a 503 to retry), and the server ends the frozen session."""
    stalled, other = stores(), stores()
    job = submit(stalled)
    stalled.claim(T2I, "stalled", 0.01)
    time.sleep(0.05)  # its lease ran out too
    with pytest.raises(StoreUnavailable), stalled._transaction() as cursor:
        cursor.execute(f"SELECT id FROM {TABLE} WHERE id = ? FOR UPDATE", (job.id,))
        started = time.monotonic()
        assert other.recover(T2I, expired_before=time.time(), rerun=True, max_attempts=3) == []
        assert time.monotonic() - started < 1
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            other.cancel(job.id)
        assert 1.5 < time.monotonic() - started < 5
        time.sleep(IDLE_IN_TRANSACTION_MS / 1000 + 1)  # still frozen: the server ends the session
        cursor.execute("SELECT 1")
    recovered = other.recover(T2I, expired_before=time.time(), rerun=True, max_attempts=3)
    assert [r.id for r in recovered] == [job.id]
    assert stalled.get(job.id).state == QUEUED  # type: ignore[union-attr]  (reconnected)


def test_only_the_owner_records_steps_and_ends_its_job(stores: Any) -> None:
    owner, other = stores(), stores()
    job = submit(owner)
    claimed = owner.claim(T2I, "owner", 30)
    assert claimed is not None and claimed.attempts == 1
    assert other.step(job.id, "other", 1, 4, "denoising", 30) is None
    assert other.finish(job.id, "other", SUCCEEDED, result={"files": []}) is None
    assert other.release(job.id, "other") is None
    assert other.renew("other", [job.id], 30) == set()
    assert owner.get(job.id).state == RUNNING and owner.get(job.id).step == 0  # type: ignore[union-attr]

    stepped = owner.step(job.id, "owner", 2, 4, "denoising", 30)
    assert stepped is not None and (stepped.step, stepped.total) == (2, 4)
    assert owner.renew("owner", [job.id], 30) == {job.id}
    ended = owner.finish(job.id, "owner", SUCCEEDED, result={"files": []})
    assert ended is not None and ended.state == SUCCEEDED and ended.owner is None
    assert owner.finish(job.id, "owner", SUCCEEDED, result={"files": []}) is None  # ends once


def test_a_dead_replicas_job_is_taken_again_after_its_lease(stores: Any) -> None:
    dead, alive = stores(), stores()
    job = submit(dead)
    assert dead.claim(T2I, "dead", 0.5) is not None
    assert alive.recover(T2I, expired_before=time.time(), rerun=True, max_attempts=3) == []  # not yet
    time.sleep(0.6)
    recovered = alive.recover(T2I, expired_before=time.time(), rerun=True, max_attempts=3)
    assert [(r.id, r.state, r.owner) for r in recovered] == [(job.id, QUEUED, None)]
    again = alive.claim(T2I, "alive", 30)
    assert again is not None and again.id == job.id and again.attempts == 2
    # The first replica comes back from a pause: its progress and its outcome are refused.
    assert dead.step(job.id, "dead", 3, 4, "denoising", 30) is None
    assert dead.finish(job.id, "dead", SUCCEEDED, result={"files": []}) is None
    assert alive.finish(job.id, "alive", SUCCEEDED, result={"files": []}) is not None

    # Interrupted max_attempts times: failed with the reason, not run again.
    worn = submit(dead)
    for attempt in range(1, 3):
        assert alive.claim(T2I, "alive", 0.01).attempts == attempt  # type: ignore[union-attr]
        time.sleep(0.02)
        alive.recover(T2I, expired_before=time.time(), rerun=True, max_attempts=2)
    final = alive.get(worn.id)
    assert final is not None and final.state == "failed" and "interrupted 2 times" in final.error["detail"]  # type: ignore[index]


def test_a_cancel_is_not_lost_under_a_concurrent_step(stores: Any) -> None:
    """The API cancels on one replica while the owner records a step on another: the step must not
    write back the row it read before the cancel (the rows are read FOR UPDATE)."""
    runner, api = stores(), stores()
    job = submit(runner)
    runner.claim(T2I, "runner", 30)
    with api._transaction() as cursor:  # the cancel, between its read and its commit
        record = api._one(cursor, job.id, lock=True)
        thread, out = in_thread(lambda: runner.step(job.id, "runner", 1, 4, "denoising", 30))
        time.sleep(0.3)
        api._write(cursor, replace(record, cancel_requested=True))  # type: ignore[arg-type]
    thread.join(5)
    assert out and out[0].cancel_requested, "the step did not see the cancel committed before it"
    stored = runner.get(job.id)
    assert stored is not None and stored.cancel_requested and stored.step == 1


def test_the_same_idempotency_key_from_two_replicas_at_once_is_one_job(stores: Any) -> None:
    first, second = stores(), stores()
    # Deterministic: the first replica's insert is in, not committed, when the second submits.
    record = JobRecord(
        id=new_job_id(), task=T2I, state=QUEUED, request={"prompt": "a fox"}, fingerprint="f",
        formats=(), idempotency_key="key-1", created_at=time.time(), version=1,
    )
    with first._transaction() as cursor:
        marks = ", ".join("?" for _ in _COLUMNS.split(","))
        cursor.execute(f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({marks})", record.row())
        thread, out = in_thread(lambda: second.submit(
            task=T2I, request={"prompt": "a fox"}, fingerprint="f", formats=(), idempotency_key="key-1"
        ))
        time.sleep(0.3)
        assert thread.is_alive(), "the second insert should wait for the first one's transaction"
    thread.join(5)
    assert not isinstance(out[0], BaseException), out
    assert (out[0][0].id, out[0][1]) == (record.id, False)

    # And racing for real, a few times: each key is one job, created once.
    for k in range(10):
        start = threading.Barrier(2)

        def race(store: PostgresJobStore, key: str, start: threading.Barrier = start) -> Any:
            start.wait()
            return store.submit(task=T2I, request={}, fingerprint="f", formats=(), idempotency_key=key)

        results = [in_thread(lambda s=s, k=k: race(s, f"race-{k}")) for s in (first, second)]
        answers = []
        for thread, out in results:
            thread.join(10)
            assert not isinstance(out[0], BaseException), out
            answers.append(out[0])
        assert answers[0][0].id == answers[1][0].id
        assert sorted(created for _record, created in answers) == [False, True]
    assert len(first.page(T2I, limit=100)) == 11


def test_changes_reach_the_other_replicas_listeners_once_each(stores: Any) -> None:
    here, there = stores(), stores()
    local, remote = Changes(), Changes()
    here.listen(local)
    there.listen(remote)
    small = submit(here)
    large = submit(here, prompt="a very long prompt " * (NOTIFY_LIMIT // 10))  # sent as its id alone
    assert len(large.to_json().encode()) > NOTIFY_LIMIT
    claimed = there.claim(T2I, "there", 30)
    assert claimed is not None and claimed.id == small.id
    there.step(small.id, "there", 1, 2, "denoising", 30)
    here.cancel(small.id)

    def versions(records: list[JobRecord], job: str) -> list[int]:
        # Sorted: a replica's own change is delivered at its commit, maybe before another
        # replica's earlier one arrives (readers order changes by version).
        return sorted(r.version for r in records if r.id == job)

    expected = [1, 2, 3, 4]  # queued, running, step 1, cancel requested
    remote.wait_for(lambda rs: versions(rs, small.id) == expected and versions(rs, large.id) == [1])
    local.wait_for(lambda rs: versions(rs, small.id) == expected and versions(rs, large.id) == [1])
    time.sleep(0.3)  # nothing arrives twice (a replica's own changes come at commit, not again by NOTIFY)
    assert versions(local.records, small.id) == expected and versions(remote.records, small.id) == expected
    big = next(r for r in remote.records if r.id == large.id)
    assert big.request["prompt"] == large.request["prompt"]
    last = next(r for r in remote.records if r.id == small.id and r.version == 4)
    assert last.cancel_requested and last.state == RUNNING and last.step == 1


def test_a_server_restart_is_survived() -> None:
    """The server restarts (every connection drops): the next call reconnects, and so does the listener."""
    cluster = start_cluster()
    try:
        url = cluster.database()
        here, there = PostgresJobStore(url), PostgresJobStore(url)
        remote = Changes()
        there.listen(remote)
        job = submit(here)
        remote.wait_for(lambda rs: len(rs) == 1)
        cluster.restart()
        assert there.get(job.id) is not None  # the dead connection is replaced at once
        deadline = time.monotonic() + 15  # the listener reconnects with its backoff
        while time.monotonic() < deadline and len(remote.records) < 2:
            here.cancel(submit(here).id)
            time.sleep(0.5)
        assert len(remote.records) >= 2, "no notification arrived after the restart"
        here.close()
        there.close()
    finally:
        stop_cluster(cluster)


def test_an_unreachable_database_is_one_line_naming_host_and_port_not_the_password(
    postgres_cluster: Cluster, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(StoreUnavailable) as refused:
        PostgresJobStore(f"postgresql://opea:s3cret-pw@127.0.0.1:{port}/jobs")
    assert f"127.0.0.1:{port}/jobs" in refused.value.detail and "s3cret-pw" not in refused.value.detail
    assert refused.value.http_status == 503

    wrong = postgres_cluster.url.replace(postgres_cluster.password, "not-the-password")
    with pytest.raises(StoreUnavailable) as denied:
        PostgresJobStore(wrong)
    assert "password authentication failed" in denied.value.detail
    assert "not-the-password" not in denied.value.detail

    # `serve` exits 1 before it listens, with one line.
    env = {**os.environ, "OPEA_MEDIA_JOBS_STORE": f"postgresql://opea:s3cret-pw@127.0.0.1:{port}/jobs"}
    done = subprocess.run(
        [*command(), "serve", "--model", "tiny", "--host", "127.0.0.1", "--port", str(free_port()),
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1, lines
    assert len(lines) == 1, lines
    message = json.loads(lines[0])["message"]
    assert f"127.0.0.1:{port}/jobs" in message and "s3cret-pw" not in lines[0], message


def test_a_malformed_url_is_refused_without_echoing_it() -> None:
    from opea_media.errors import InvalidInput, OpeaMediaError

    with pytest.raises(InvalidInput) as refused:  # libpq cannot parse it
        PostgresJobStore("postgresql://opea:hunter2@127.0.0.1/jobs?no_such_option=1")
    assert refused.value.detail.startswith("--jobs-store: ") and "no_such_option" in refused.value.detail
    assert "hunter2" not in refused.value.detail
    with pytest.raises(OpeaMediaError) as bad_port:  # libpq refuses it when connecting
        PostgresJobStore("postgresql://opea:hunter2@127.0.0.1:notaport/jobs")
    assert "notaport" in bad_port.value.detail and "hunter2" not in bad_port.value.detail
