"""Workers that run jobs, and the local executor that keeps a pool of them alive."""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import update

from careplane.platform.db import Database, utcnow
from careplane.platform.jobs import _service as svc
from careplane.platform.jobs._context import JobCancelled, JobContext, JobFailed
from careplane.platform.jobs._models import Job, JobStatus

log = logging.getLogger(__name__)


class _Interrupted(Exception):
    """The worker is shutting down; the job goes back to the queue without using an attempt."""


class Worker:
    """Claims and runs jobs one at a time; one per process, so a crash takes only its own job."""

    def __init__(self, db: Database, *, worker_id: str | None = None, poll: float = 0.5,
                 heartbeat: float = 5.0, stale_after: float = 30.0,
                 parent_pid: int | None = None) -> None:
        self.db = db
        # A worker started by a server exits when that server is gone (even if it was killed
        # outright), so no orphaned process keeps claiming jobs.
        self.parent_pid = parent_pid
        self.worker_id = worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
        self.poll = poll
        self.heartbeat = heartbeat
        self.stale_after = timedelta(seconds=stale_after)
        self.stopping = threading.Event()
        self._last_recovery = 0.0
        self._current: JobContext | None = None

    def stop(self) -> None:
        self.stopping.set()
        if self._current is not None:
            self._current._cancel()

    def run_forever(self) -> None:
        log.info("worker %s started", self.worker_id)
        while not self.stopping.is_set():
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("worker %s: its server has gone; stopping", self.worker_id)
                break
            try:
                ran = self.run_once()
            except Exception:
                log.exception("worker %s: unexpected error; backing off", self.worker_id)
                ran = False
            if not ran:
                self.stopping.wait(self.poll)
        log.info("worker %s stopped", self.worker_id)

    def recover(self) -> list[str]:
        with self.db.session() as session:
            recovered = svc.recover_stale(session, stale_after=self.stale_after)
        if recovered:
            log.warning("recovered jobs of dead workers: %s", ", ".join(recovered))
        return recovered

    def run_once(self) -> bool:
        """Run one due job if there is one; returns whether a job ran."""
        now = time.monotonic()
        if now - self._last_recovery > self.stale_after.total_seconds() / 2:
            self._last_recovery = now
            self.recover()
        with self.db.session() as session:
            job = svc.claim(session, self.worker_id)
            if job is None:
                return False
            job_id, task, args, state, attempt = (
                job.id, job.task, dict(job.args), dict(job.state), job.attempts)
        self._run(job_id, task, args, state, attempt)
        return True

    # -- running one job -------------------------------------------------------------------

    def _owned(self, job_id: str) -> Any:
        return (Job.id == job_id) & (Job.worker_id == self.worker_id) & (
            Job.status == JobStatus.running.value)

    def _report(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        with self.db.session() as session:
            if kind == "log":
                svc.add_log(session, job_id, str(data["line"]), str(data.get("level", "info")))
            elif kind == "state":
                session.execute(update(Job).where(self._owned(job_id)).values(state=data))
            elif kind == "progress":
                session.execute(update(Job).where(self._owned(job_id)).values(
                    progress_done=data["done"], progress_total=data["total"],
                    progress_message=str(data["message"])[:2000], heartbeat_at=utcnow()))
                job = session.get(Job, job_id)
                if job is not None:
                    svc.announce(session, job)

    def _beat(self, job_id: str, ctx: JobContext, done: threading.Event) -> None:
        while not done.wait(self.heartbeat):
            try:
                with self.db.session() as session:
                    session.execute(update(Job).where(self._owned(job_id))
                                    .values(heartbeat_at=utcnow()))
                    job = session.get(Job, job_id, populate_existing=True)
                    if job is None or job.cancel_requested or job.worker_id != self.worker_id:
                        ctx._cancel()
            except Exception as exc:  # the database may be restarting; keep trying
                log.warning("heartbeat for job %s failed: %s", job_id, exc)

    def _run(self, job_id: str, task: str, args: dict[str, Any], state: dict[str, Any],
             attempt: int) -> None:
        ctx = JobContext(job_id, args, state, attempt,
                         lambda kind, data: self._report(job_id, kind, data))
        self._current = ctx
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, ctx, done), daemon=True)
        beat.start()
        outcome: tuple[str, Any]
        try:
            func = svc.resolve_task(task)
            result = func(ctx)
            if self.stopping.is_set() and ctx.cancelled:
                raise _Interrupted()
            outcome = ("ok", result if isinstance(result, dict) else
                       ({} if result is None else {"value": result}))
        except JobCancelled:
            outcome = ("interrupted", None) if self.stopping.is_set() else ("cancelled", None)
        except _Interrupted:
            outcome = ("interrupted", None)
        except JobFailed as exc:
            outcome = ("fatal", str(exc) or exc.__class__.__name__)
        except Exception as exc:
            outcome = ("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}")
        finally:
            done.set()
            beat.join()
            self._current = None
        self._finish(job_id, *outcome)

    def _finish(self, job_id: str, kind: str, value: Any) -> None:
        with self.db.session() as session:
            job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
            if job is None or job.worker_id != self.worker_id or job.status != "running":
                log.warning("job %s was taken from worker %s; result dropped", job_id,
                            self.worker_id)
                return
            now = utcnow()
            if kind == "ok":
                job.status, job.result, job.finished_at = JobStatus.succeeded.value, value, now
                job.error = None
                if job.progress_total:
                    job.progress_done = job.progress_total
                svc.add_log(session, job_id, "succeeded")
            elif kind == "cancelled":
                job.status, job.finished_at = JobStatus.cancelled.value, now
                svc.add_log(session, job_id, "cancelled")
            elif kind == "interrupted":
                job.status, job.attempts = JobStatus.queued.value, max(0, job.attempts - 1)
                job.run_after = now
                svc.add_log(session, job_id, "worker shut down; job returned to the queue")
            elif kind == "fatal":
                svc.requeue_or_fail(session, job, value, retryable=False)
                return
            else:
                svc.add_log(session, job_id, value, "error")
                svc.requeue_or_fail(session, job, value.split("\n", 1)[0])
                return
            job.worker_id = None
            job.heartbeat_at = None
            session.flush()
            svc.announce(session, job)


def _worker_process(db_url: str, options: dict[str, Any]) -> None:
    from careplane.platform.logs import configure_logging

    configure_logging(options.pop("log_level", "INFO"), json_lines=options.pop("log_json", True))
    db = Database(db_url)
    worker = Worker(db, **options)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    try:
        worker.run_forever()
    finally:
        db.dispose()


class LocalExecutor:
    """A pool of worker processes on this machine, restarted when one dies."""

    def __init__(self, db_url: str, processes: int, **options: Any) -> None:
        self.db_url = db_url
        self.processes = processes
        self.options = options
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def _spawn(self) -> BaseProcess:
        options = {**self.options, "parent_pid": os.getpid()}
        proc = self._ctx.Process(target=_worker_process, args=(self.db_url, options),
                                 name="careplane-worker", daemon=False)
        proc.start()
        return proc

    def start(self) -> None:
        self._procs = [self._spawn() for _ in range(self.processes)]
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name="careplane-executor")
        self._monitor.start()

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self._procs]

    def alive(self) -> int:
        return sum(1 for p in self._procs if p.is_alive())

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self._procs):
                if not proc.is_alive() and not self._stop.is_set():
                    log.warning("job worker %s exited with %s; starting another",
                                proc.pid, proc.exitcode)
                    self._procs[i] = self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        for proc in self._procs:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
