from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from careplane.platform.jobs import Job, JobLog


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    task: str
    title: str
    status: str
    attempts: int
    max_attempts: int
    progress_done: float
    progress_total: float | None
    progress_message: str
    fraction: float | None
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        out = cls.model_validate(job)
        if out.error:
            out.error = out.error.split("\n", 1)[0]  # the traceback stays in the job log
        return out


class JobLogOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    level: str
    line: str

    @classmethod
    def of(cls, row: JobLog) -> JobLogOut:
        return cls.model_validate(row)
