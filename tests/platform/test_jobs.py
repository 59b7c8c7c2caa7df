from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from careplane.platform.db import Database, utcnow
from careplane.platform.jobs import (
    Job,
    JobStatus,
    Worker,
    cancel,
    get_job,
    job_logs,
    recover_stale,
    retry,
    submit,
)
from careplane.platform.jobs._service import JobStateError, claim

T = "tests.platform.job_tasks"
ROOT = Path(__file__).resolve().parents[2]


def _submit(db: Database, task: str, **kwargs: object) -> str:
    with db.session() as session:
        return submit(session, f"{T}:{task}", dict(kwargs), org_id="org1").id


def _job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        return get_job(session, job_id)


def _make_due(db: Database, job_id: str) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(run_after=utcnow()))


def test_job_runs_and_records_result_and_log(db: Database) -> None:
    job_id = _submit(db, "add", a=2, b=3)
    assert _job(db, job_id).status == JobStatus.queued
    assert Worker(db).run_once()
    job = _job(db, job_id)
    assert job.status == JobStatus.succeeded
    assert job.result == {"sum": 5}
    assert job.attempts == 1
    with db.session() as session:
        lines = [row.line for row in job_logs(session, job_id)]
    assert "adding 2 and 3" in lines
    assert lines[-1] == "succeeded"


def test_unknown_task_is_refused_at_submit(db: Database) -> None:
    with db.session() as session, pytest.raises((ImportError, ValueError)):
        submit(session, "tests.platform.job_tasks:no_such_task", {})


def test_each_job_is_claimed_once(db: Database) -> None:
    ids = {_submit(db, "add", a=i, b=0) for i in range(6)}
    claimed: list[str] = []
    lock = threading.Lock()

    def grab(name: str) -> None:
        while True:
            with db.session() as session:
                job = claim(session, name)
                if job is None:
                    return
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_failure_is_retried_with_backoff_then_succeeds(db: Database) -> None:
    job_id = _submit(db, "flaky", succeed_on=2)
    worker = Worker(db)
    assert worker.run_once()
    job = _job(db, job_id)
    assert job.status == JobStatus.queued
    assert job.error and "transient failure on attempt 1" in job.error
    assert job.run_after > utcnow() + timedelta(seconds=1)  # backing off, not due yet
    assert not worker.run_once()
    _make_due(db, job_id)
    assert worker.run_once()
    job = _job(db, job_id)
    assert job.status == JobStatus.succeeded
    assert job.result == {"attempt": 2}


def test_out_of_attempts_fails(db: Database) -> None:
    with db.session() as session:
        job_id = submit(session, f"{T}:flaky", {"succeed_on": 99}, max_attempts=2).id
    worker = Worker(db)
    worker.run_once()
    _make_due(db, job_id)
    worker.run_once()
    job = _job(db, job_id)
    assert job.status == JobStatus.failed
    assert job.attempts == 2
    assert job.finished_at is not None


def test_bad_input_fails_without_retry(db: Database) -> None:
    job_id = _submit(db, "bad_input")
    Worker(db).run_once()
    job = _job(db, job_id)
    assert job.status == JobStatus.failed
    assert job.attempts == 1
    assert job.error == "reads.fq line 4: quality string shorter than the sequence"


def test_cancel_queued_job(db: Database) -> None:
    job_id = _submit(db, "add", a=1, b=1)
    with db.session() as session:
        cancel(session, get_job(session, job_id))
    assert _job(db, job_id).status == JobStatus.cancelled
    assert not Worker(db).run_once()
    with db.session() as session, pytest.raises(JobStateError):
        cancel(session, get_job(session, job_id))


def test_cancel_running_job(db: Database) -> None:
    job_id = _submit(db, "wait_for_cancel")
    worker = Worker(db, heartbeat=0.1)
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    deadline = time.monotonic() + 10
    while _job(db, job_id).status != JobStatus.running and time.monotonic() < deadline:
        time.sleep(0.05)
    with db.session() as session:
        cancel(session, get_job(session, job_id))
    runner.join(10)
    assert not runner.is_alive()
    assert _job(db, job_id).status == JobStatus.cancelled


def test_retry_a_failed_job(db: Database) -> None:
    job_id = _submit(db, "bad_input")
    Worker(db).run_once()
    with db.session() as session:
        retry(session, get_job(session, job_id))
    job = _job(db, job_id)
    assert job.status == JobStatus.queued
    assert job.attempts == 0


def test_stale_running_job_is_requeued(db: Database) -> None:
    job_id = _submit(db, "add", a=1, b=2)
    with db.session() as session:
        claim(session, "ghost-worker")
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    with db.session() as session:
        assert recover_stale(session, stale_after=timedelta(seconds=30)) == [job_id]
    job = _job(db, job_id)
    assert job.status == JobStatus.queued
    assert job.worker_id is None


def _start_worker(db_url: str, tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CAREPLANE_ENV": "test",
           "CAREPLANE_DATABASE_URL": db_url, "CAREPLANE_DATA_DIR": str(tmp_path / "data"),
           "CAREPLANE_JOB_HEARTBEAT_SECONDS": "0.2", "CAREPLANE_JOB_STALE_AFTER_SECONDS": "1.5",
           "CAREPLANE_LOG_JSON": "false"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "careplane", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=out)


@pytest.mark.slow
def test_killed_worker_job_is_recovered_and_resumes(db_url: str, db: Database,
                                                   tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    job_id = _submit(db, "count_slowly", n=12, delay=0.15, marker=str(marker))
    log = tmp_path / "workers.log"
    first = _start_worker(db_url, tmp_path, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = _job(db, job_id)
            if job.status == JobStatus.running and job.state.get("next", 0) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never got going")
        os.kill(first.pid, signal.SIGKILL)  # the worker dies mid-job, without a goodbye
        first.wait(10)
        assert _job(db, job_id).status == JobStatus.running  # still believed running
    finally:
        if first.poll() is None:
            first.kill()
    second = _start_worker(db_url, tmp_path, log)
    try:
        deadline = time.monotonic() + 60
        while _job(db, job_id).status != JobStatus.succeeded and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)
    job = _job(db, job_id)
    assert job.status == JobStatus.succeeded, log.read_text()[-2000:]
    assert job.attempts == 2
    assert job.result is not None
    assert job.result["attempt"] == 2
    assert job.result["resumed_from"] >= 3  # resumed from its checkpoint, not from zero
    with db.session() as session:
        lines = [row.line for row in job_logs(session, job_id)]
    assert any("stopped responding" in line for line in lines)
    assert second.returncode == 0


@pytest.mark.slow
def test_server_stops_its_workers_and_orphans_stop_themselves(tmp_path: Path) -> None:
    """SIGTERM stops the workers with the server; SIGKILL leaves none running for long."""
    from tests.support.servers import running_server

    db_url = f"sqlite:///{tmp_path / 'c.db'}"

    def children(pid: int) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout
        return {int(p) for p in out.split()}

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split()[2] != "Z"

    for how in (signal.SIGTERM, signal.SIGKILL):
        with running_server(db_url, tmp_path / "data", job_workers=2) as base:
            import httpx

            assert httpx.get(f"{base}/healthz").status_code == 200
            server_pid = int(next(
                line.split()[0] for line in subprocess.run(
                    ["ps", "-eo", "pid,args"], capture_output=True, text=True
                ).stdout.splitlines() if f"--port {base.rsplit(':', 1)[1]}" in line))
            deadline = time.monotonic() + 30
            workers: set[int] = set()
            while time.monotonic() < deadline:
                workers = {p for p in children(server_pid)
                           if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()}
                if len(workers) == 2:
                    break
                time.sleep(0.2)
            assert len(workers) == 2
            os.kill(server_pid, how)
            deadline = time.monotonic() + 20
            while any(alive(p) for p in workers) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(alive(p) for p in workers), how
