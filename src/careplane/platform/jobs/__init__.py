"""Durable jobs: the heavy work of every domain (AI inference, genomics pipelines, exports).

A job is a row: it survives restarts, is claimed by exactly one worker, reports progress and log
lines, is retried with backoff when it fails, can be cancelled, and is recovered when the worker
running it dies (its heartbeat stops). Tasks are plain functions named by import path
(``package.module:function``) taking a :class:`JobContext`, so the same function runs in a local
worker process today and on a cluster executor later.
"""

from careplane.platform.jobs._context import JobCancelled, JobContext, JobFailed
from careplane.platform.jobs._models import Job, JobLog, JobStatus
from careplane.platform.jobs._service import (
    JobNotFound,
    cancel,
    get_job,
    job_counts,
    job_logs,
    list_jobs,
    recover_stale,
    retry,
    submit,
)
from careplane.platform.jobs._worker import LocalExecutor, Worker

__all__ = [
    "Job",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobLog",
    "JobNotFound",
    "JobStatus",
    "LocalExecutor",
    "Worker",
    "cancel",
    "get_job",
    "job_counts",
    "job_logs",
    "list_jobs",
    "recover_stale",
    "retry",
    "submit",
]
