from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse

from careplane.deps import PlatformDep, SessionDep
from careplane.ops.schemas import JobLogOut, JobOut
from careplane.platform import jobs
from careplane.platform.db import DatabaseUnavailable
from careplane.platform.jobs._service import JobStateError
from careplane.security import Principal
from careplane.security.deps import PrincipalDep
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

router = APIRouter()


@router.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
def readyz(platform: PlatformDep) -> JSONResponse:
    """Readiness: the database answers; a load balancer stops sending requests otherwise."""
    try:
        platform.db.ping()
    except DatabaseUnavailable:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
    return JSONResponse({"status": "ready", "database": platform.db.url.get_backend_name()})


def _job_for(session: SessionDep, job_id: str, principal: Principal,
             action: Action = Action.read) -> jobs.Job:
    """The caller's organisation's job, after the policy allowed (and audited) the access."""
    try:
        job = jobs.get_job(session, job_id, org_id=principal.org_id)
    except jobs.JobNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}") from None
    authorize(session, principal, action, Target(kind="jobs:job", org_id=job.org_id, id=job.id))
    return job


@router.get("/api/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(session: SessionDep, principal: PrincipalDep,
              status_: Annotated[jobs.JobStatus | None, Query(alias="status")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[JobOut]:
    authorize(session, principal, Action.search,
              Target(kind="jobs:job", org_id=principal.org_id))
    rows = jobs.list_jobs(session, org_id=principal.org_id,
                          status=status_.value if status_ else None, limit=limit)
    return [JobOut.of(j) for j in rows]


@router.get("/api/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    return JobOut.of(_job_for(session, job_id, principal))


@router.get("/api/jobs/{job_id}/logs", response_model=list[JobLogOut], tags=["jobs"])
def get_logs(job_id: str, session: SessionDep, principal: PrincipalDep,
             after: Annotated[int, Query(ge=0)] = 0) -> list[JobLogOut]:
    job = _job_for(session, job_id, principal)
    return [JobLogOut.of(r) for r in jobs.job_logs(session, job.id, after=after)]


@router.post("/api/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"])
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    job = _job_for(session, job_id, principal, Action.update)
    try:
        return JobOut.of(jobs.cancel(session, job))
    except JobStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.post("/api/jobs/{job_id}/retry", response_model=JobOut, tags=["jobs"])
def retry_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    job = _job_for(session, job_id, principal, Action.update)
    try:
        return JobOut.of(jobs.retry(session, job))
    except JobStateError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.get("/api/events/stream", tags=["events"])
async def event_stream(
        request: Request, platform: PlatformDep, principal: PrincipalDep,
        topic: Annotated[list[str] | None, Query(description="topic prefixes")] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-sent events of the caller's organisation; reconnecting resumes where it left off."""
    prefixes = tuple(topic or ["job."])

    async def stream() -> AsyncIterator[bytes]:
        async with platform.events.subscribe(*prefixes, org_id=principal.org_id,
                                             since=last_event_id) as sub:
            yield b": connected\n\n"
            while not await request.is_disconnected() and not sub.overflowed:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event.org_id != principal.org_id and not (
                        event.org_id is None and principal.is_admin):
                    continue  # other organisations' events, and system events for non-admins
                data = orjson.dumps({"topic": event.topic, **event.payload})
                yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    event.id, event.topic.encode(), data)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
