"""Job operations on a session; each state change is published as a ``job.*`` event."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from careplane.platform.db import utcnow
from careplane.platform.events import publish
from careplane.platform.jobs._models import Job, JobLog, JobStatus

TaskFunction = Callable[..., Any]


class JobNotFound(LookupError):
    pass


class JobStateError(ValueError):
    """The job is not in a state that allows the requested change."""


def resolve_task(path: str) -> TaskFunction:
    """Import ``package.module:function``; a wrong path fails the job, never the worker."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"task {path!r} is not of the form package.module:function")
    func = getattr(importlib.import_module(module_name), attr, None)
    if not callable(func):
        raise ValueError(f"task {path!r} does not name a function")
    return func


def event_payload(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status, "task": job.task, "title": job.title,
            "done": job.progress_done, "total": job.progress_total,
            "message": job.progress_message, "attempts": job.attempts}


def announce(session: Session, job: Job) -> None:
    publish(session, f"job.{job.status}", event_payload(job), org_id=job.org_id)


def submit(session: Session, task: str, args: dict[str, Any] | None = None, *, title: str = "",
           org_id: str | None = None, created_by: str | None = None, max_attempts: int = 3,
           priority: int = 0) -> Job:
    """Queue a job. The task path is checked now, so a typo fails the caller, not a worker."""
    resolve_task(task)
    job = Job(task=task, args=args or {}, title=title or task.rsplit(":", 1)[-1],
              org_id=org_id, created_by=created_by, max_attempts=max_attempts,
              priority=priority, status=JobStatus.queued.value, run_after=utcnow())
    session.add(job)
    session.flush()
    announce(session, job)
    return job


def get_job(session: Session, job_id: str, *, org_id: str | None = None) -> Job:
    job = session.get(Job, job_id)
    if job is None or (org_id is not None and job.org_id != org_id):
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, *, org_id: str | None = None, status: str | None = None,
              limit: int = 100, before: datetime | None = None) -> Sequence[Job]:
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if org_id is not None:
        query = query.where(Job.org_id == org_id)
    if status:
        query = query.where(Job.status == status)
    if before is not None:
        query = query.where(Job.created_at < before)
    return session.scalars(query).all()


def job_counts(session: Session, *, org_id: str | None = None) -> dict[str, int]:
    """How many jobs are in each state: the queue at a glance for the engineer on call."""
    query = select(Job.status, func.count()).group_by(Job.status)
    if org_id is not None:
        query = query.where(Job.org_id == org_id)
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(n) for status, n in session.execute(query).all()})
    return counts


def job_logs(session: Session, job_id: str, *, after: int = 0, limit: int = 1000
             ) -> Sequence[JobLog]:
    return session.scalars(select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after)
                           .order_by(JobLog.id).limit(limit)).all()


def add_log(session: Session, job_id: str, line: str, level: str = "info") -> None:
    session.add(JobLog(job_id=job_id, line=line[:10_000], level=level))


def cancel(session: Session, job: Job) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next check."""
    status = JobStatus(job.status)
    if status.finished:
        raise JobStateError(f"job {job.id} has already {job.status}")
    if status is JobStatus.queued:
        job.status = JobStatus.cancelled.value
        job.finished_at = utcnow()
        add_log(session, job.id, "cancelled before it started")
    else:
        job.cancel_requested = True
        add_log(session, job.id, "cancellation requested")
    session.flush()
    announce(session, job)
    return job


def retry(session: Session, job: Job) -> Job:
    """Run a failed or cancelled job again, keeping its checkpoint state."""
    if JobStatus(job.status) not in (JobStatus.failed, JobStatus.cancelled):
        raise JobStateError(f"only failed or cancelled jobs can be retried, not {job.status}")
    job.status = JobStatus.queued.value
    job.attempts = 0
    job.error = None
    job.cancel_requested = False
    job.finished_at = None
    job.run_after = utcnow()
    add_log(session, job.id, "queued again by request")
    session.flush()
    announce(session, job)
    return job


def claim(session: Session, worker_id: str) -> Job | None:
    """Take the next due job for ``worker_id`` in one statement (SKIP LOCKED on PostgreSQL)."""
    now = utcnow()
    candidate = (select(Job.id)
                 .where(Job.status == JobStatus.queued.value, Job.run_after <= now)
                 .order_by(Job.priority.desc(), Job.created_at, Job.id)
                 .limit(1).with_for_update(skip_locked=True).scalar_subquery())
    job_id = session.scalar(
        update(Job).where(Job.id == candidate, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.running.value, worker_id=worker_id,
                attempts=Job.attempts + 1, heartbeat_at=now, started_at=now)
        .returning(Job.id))
    if job_id is None:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    add_log(session, job.id, f"attempt {job.attempts} started on {worker_id}")
    announce(session, job)
    return job


def backoff(attempt: int, base: float = 2.0, cap: float = 300.0) -> timedelta:
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempt - 1)))


def requeue_or_fail(session: Session, job: Job, reason: str, *, retryable: bool = True) -> None:
    now = utcnow()
    job.worker_id = None
    job.heartbeat_at = None
    job.error = reason[:20_000]
    if job.cancel_requested:
        job.status = JobStatus.cancelled.value
        job.finished_at = now
        add_log(session, job.id, f"cancelled ({reason.splitlines()[0] if reason else ''})")
    elif retryable and job.attempts < job.max_attempts:
        delay = backoff(job.attempts)
        job.status = JobStatus.queued.value
        job.run_after = now + delay
        add_log(session, job.id, f"attempt {job.attempts} failed: {reason.splitlines()[0]}; "
                f"retrying in {delay.total_seconds():.0f} s", "warning")
    else:
        job.status = JobStatus.failed.value
        job.finished_at = now
        add_log(session, job.id, f"failed: {reason.splitlines()[0]}", "error")
    session.flush()
    announce(session, job)


def recover_stale(session: Session, *, stale_after: timedelta) -> list[str]:
    """Requeue (or fail, when out of attempts) running jobs whose worker stopped beating."""
    limit = utcnow() - stale_after
    stale = session.scalars(select(Job).where(Job.status == JobStatus.running.value,
                                              Job.heartbeat_at < limit)
                            .with_for_update(skip_locked=True)).all()
    for job in stale:
        requeue_or_fail(session, job, f"worker {job.worker_id} stopped responding")
    return [job.id for job in stale]
