"""Two real `serve` processes on one PostgreSQL queue and one shared --data-dir: the jobs split
between them, either answers for any job (GET, events, DELETE), and a replica that stops mid-job
(frozen, or killed with SIGKILL) loses the job to the other once its lease runs out. No job
succeeds twice, none is lost.

Which replica ran a job is read from its own log ("job started", with the job's id).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from .live_service import LiveService, start_service
from .postgres_env import Cluster
from .test_jobs_restart import job, running_mid_way, submit, wait_for

LEASE = 3.0
FINAL = ("succeeded", "failed", "cancelled")
# With the tiny model on a busy 2-core machine: about a second each; LONG, a few seconds to act mid-job.
SHORT = {"prompt": "a short one", "num_inference_steps": 40, "height": 64, "width": 64}
LONG = {"prompt": "a long one", "num_inference_steps": 150, "height": 64, "width": 64}


def started_by(replicas: dict[str, LiveService]) -> dict[str, list[str]]:
    """Job id -> the replicas that started it, in the order of their attempts."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for name, replica in replicas.items():
        for line in replica.log_lines():
            if line["message"].startswith("job started"):
                runs.setdefault(line["job_id"], []).append((line["attempt"], name))
    return {job_id: [name for _attempt, name in sorted(attempts)] for job_id, attempts in runs.items()}


def runner_of(replicas: dict[str, LiveService], job_id: str, attempt: int = 1) -> str:
    deadline = time.monotonic() + 30
    while True:
        names = started_by(replicas).get(job_id, [])
        if len(names) >= attempt:
            return names[attempt - 1]
        assert time.monotonic() < deadline, f"no replica logged starting {job_id} (attempt {attempt})"
        time.sleep(0.05)


def cancel(replica: LiveService, job_id: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(replica.url(f"/v1/jobs/{job_id}"), method="DELETE")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def follow(replica: LiveService, job_id: str) -> tuple[threading.Thread, list[tuple[str, dict[str, Any]]]]:
    """Read the job's event stream from `replica` in a thread until it ends."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def read() -> None:
        with urllib.request.urlopen(replica.url(f"/v1/jobs/{job_id}/events"), timeout=60) as stream:
            name = None
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: ") and name is not None:
                    seen.append((name, json.loads(line[len("data: ") :])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, seen


def test_two_replicas_share_one_queue(
    postgres_cluster: Cluster, postgres_url: str, tmp_path: Path, cache_dir: Path, tiny_t2i: Any
) -> None:
    shared = tmp_path / "shared-data"
    env = {"OPEA_MEDIA_JOBS_STORE": postgres_url, "OPEA_MEDIA_THREADS": "1"}  # the URL: not on a command line
    extra = ("--data-dir", str(shared), "--job-lease", str(LEASE))
    replicas = {
        name: start_service("text2image", *extra, log_dir=tmp_path, cache_dir=cache_dir, env=env)
        for name in ("a", "b")
    }
    a, b = replicas["a"], replicas["b"]
    other = {"a": "b", "b": "a"}
    try:
        for replica in replicas.values():
            replica.wait_ready()

        # 1. Seven jobs, submitted through both: both replicas run some. The long one is
        #    followed and cancelled through the replica that is not running it.
        ids = [submit((a, b)[k % 2], SHORT | {"seed": k}) for k in range(3)]
        doomed = submit(b, LONG | {"seed": 100})
        ids += [submit((a, b)[k % 2], SHORT | {"seed": k}) for k in range(3, 6)]
        running_mid_way(a, doomed)  # seen through a, whoever runs it
        runner = runner_of(replicas, doomed)
        elsewhere = replicas[other[runner]]
        stream, events = follow(elsewhere, doomed)
        time.sleep(0.3)
        status, asked = cancel(elsewhere, doomed)
        assert status == 202 and asked["cancel_requested"], asked
        cancelled = wait_for(elsewhere, doomed, FINAL, timeout=60)
        assert cancelled["state"] == "cancelled"
        stream.join(30)
        assert not stream.is_alive(), "the event stream did not end with the job"
        names = [name for name, _view in events]
        assert names[0] == "running" and names[-1] == "cancelled" and "progress" in names, names
        assert events[-1][1]["progress"] is None and cancelled["attempts"] == 1
        for job_id in ids:
            assert wait_for(a, job_id, FINAL, timeout=120)["state"] == "succeeded"
        ran = Counter(started_by(replicas)[job_id][0] for job_id in ids)
        assert ran["a"] >= 2 and ran["b"] >= 2, f"the jobs did not split between the replicas: {ran}"

        # A result written by one replica is served by the other (the shared folder).
        made_by_a = next(j for j in ids if started_by(replicas)[j] == ["a"])
        url = job(b, made_by_a)["result"]["files"][0]["url"]
        assert url.startswith(b.base_url)
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"

        # 2. A replica frozen mid-job (SIGSTOP) past its lease: the other takes the job and runs
        #    it from the start; the frozen one, resumed, finds the job gone and drops its outcome.
        frozen_job = submit(a, LONG | {"seed": 200})
        running_mid_way(a, frozen_job)
        frozen = runner_of(replicas, frozen_job)
        taker = other[frozen]
        replicas[frozen].process.send_signal(signal.SIGSTOP)
        try:
            assert runner_of(replicas, frozen_job, attempt=2) == taker
        finally:
            replicas[frozen].process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not any(
            line["message"].startswith("job outcome dropped") and line["job_id"] == frozen_job
            for line in replicas[frozen].log_lines()
        ):
            assert time.monotonic() < deadline, "the resumed replica did not drop the job it lost"
            time.sleep(0.1)

        # 3. Meanwhile the resumed replica takes the next job, and is killed mid-way (SIGKILL):
        #    the other finishes its own job, then, once the lease ran out, the killed one's.
        killed_job = submit(replicas[frozen], LONG | {"seed": 300})
        assert runner_of(replicas, killed_job) == frozen  # the taker is still busy
        running_mid_way(replicas[taker], killed_job)
        replicas[frozen].kill()
        survivor = replicas[taker]
        for job_id in (frozen_job, killed_job):
            done = wait_for(survivor, job_id, FINAL, timeout=120)
            assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert started_by(replicas)[killed_job] == [frozen, taker]
    finally:
        for replica in replicas.values():
            replica.kill()

    # Nothing lost, nothing done twice: every job ended once, in one replica's log.
    everything = [*ids, doomed, frozen_job, killed_job]
    ended = Counter(
        line["job_id"]
        for replica in replicas.values()
        for line in replica.log_lines()
        if line["message"] in ("job succeeded", "job failed", "job cancelled")
    )
    assert ended == Counter(everything), ended
    password = postgres_cluster.password
    assert all(password not in replica.log_path.read_text() for replica in replicas.values())
