"""GA4GH Workflow Execution Service 1.1 at ``/ga4gh/wes/v1``, over careplane's pipeline runs.

Why it exists: workflow managers and research platforms already speak WES, so they can submit
and follow careplane runs without a careplane-specific client. One workflow is offered, the
germline pipeline (``workflow_type`` ``CAREPLANE_GERMLINE``, version ``1.0``, ``workflow_url``
``careplane:germline``); its ``workflow_params`` name registered files and records::

    {"sample_id": "...", "reference_id": "...", "fastq": ["<read 1 file id>", "<read 2>"],
     "aligner": "minimap2", "threads": 2}

A WES run is a careplane run: the same job, the same access checks and audit trail, the same
outputs (listed in ``outputs`` as download URLs). Errors use WES's ``{msg, status_code}``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from careplane._version import __version__
from careplane.deps import PlatformDep, SessionDep
from careplane.genomics import service
from careplane.genomics.models import GenomicsRun
from careplane.platform.jobs import Job
from careplane.security import Principal
from careplane.security.deps import PrincipalDep
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["WORKFLOW_TYPE", "router", "wes_state"]

router = APIRouter(prefix="/ga4gh/wes/v1", tags=["GA4GH WES"])

WORKFLOW_TYPE = "CAREPLANE_GERMLINE"
WORKFLOW_VERSION = "1.0"
WORKFLOW_URLS = ("careplane:germline", f"careplane:germline/{WORKFLOW_VERSION}")
_STATES = {"queued": "QUEUED", "running": "RUNNING", "succeeded": "COMPLETE",
           "failed": "EXECUTOR_ERROR", "cancelled": "CANCELED"}


def wes_state(job: Job) -> str:
    if job.status == "running" and job.cancel_requested:
        return "CANCELING"
    return _STATES.get(job.status, "UNKNOWN")


def _error(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"msg": msg, "status_code": status}, status_code=status)


def _target(principal: Principal, run_id: str | None = None,
            patient_id: str | None = None) -> Target:
    return Target(kind="genomics:run", org_id=principal.org_id, id=run_id,
                  patient_id=patient_id)


@router.get("/service-info")
def service_info(request: Request, session: SessionDep,
                 principal: PrincipalDep) -> dict[str, Any]:
    authorize(session, principal, Action.search, _target(principal))
    counts = dict(session.execute(
        select(Job.status, func.count()).join(GenomicsRun, GenomicsRun.job_id == Job.id)
        .where(GenomicsRun.org_id == principal.org_id).group_by(Job.status)).all())
    state_counts = {state: 0 for state in ("QUEUED", "RUNNING", "COMPLETE", "EXECUTOR_ERROR",
                                           "CANCELED")}
    for status, n in counts.items():
        state_counts[_STATES.get(status, "UNKNOWN")] = int(n)
    return {
        "id": "org.careplane.wes",
        "name": "careplane genomics",
        "type": {"group": "org.ga4gh", "artifact": "wes", "version": "1.1.0"},
        "organization": {"name": "careplane", "url": str(request.base_url)},
        "version": __version__,
        "workflow_type_versions": {WORKFLOW_TYPE: {"workflow_type_version": [WORKFLOW_VERSION]}},
        "supported_wes_versions": ["1.1.0"],
        "supported_filesystem_protocols": ["careplane"],
        "workflow_engine_versions": {"careplane": __version__},
        "default_workflow_engine_parameters": [
            {"name": "threads", "type": "int", "default_value": "2"}],
        "system_state_counts": state_counts,
        "auth_instructions_url": str(request.base_url) + ".well-known/openid-configuration",
        "tags": {"workflow_urls": ", ".join(WORKFLOW_URLS)},
    }


def _json_field(raw: str | None, name: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value


@router.post("/runs", response_model=None)
def run_workflow(
    session: SessionDep, platform: PlatformDep, principal: PrincipalDep,
    workflow_params: Annotated[str | None, Form()] = None,
    workflow_type: Annotated[str | None, Form()] = None,
    workflow_type_version: Annotated[str | None, Form()] = None,
    workflow_url: Annotated[str | None, Form()] = None,
    tags: Annotated[str | None, Form()] = None,
    workflow_engine_parameters: Annotated[str | None, Form()] = None,
) -> dict[str, Any] | JSONResponse:
    if workflow_type != WORKFLOW_TYPE:
        return _error(400, f"workflow_type must be {WORKFLOW_TYPE}")
    if workflow_type_version not in (None, "", WORKFLOW_VERSION):
        return _error(400, f"workflow_type_version must be {WORKFLOW_VERSION}")
    if workflow_url not in WORKFLOW_URLS:
        return _error(400, f"workflow_url must be one of {', '.join(WORKFLOW_URLS)}")
    try:
        params = _json_field(workflow_params, "workflow_params")
        run_tags = _json_field(tags, "tags")
        engine = _json_field(workflow_engine_parameters, "workflow_engine_parameters")
    except ValueError as exc:
        return _error(400, str(exc))
    missing = [k for k in ("sample_id", "reference_id", "fastq") if k not in params]
    if missing:
        return _error(400, f"workflow_params lacks {', '.join(missing)}")
    fastq = params["fastq"]
    if not isinstance(fastq, list) or not all(isinstance(f, str) for f in fastq):
        return _error(400, "workflow_params.fastq must be a list of two file ids")
    try:
        threads = int(engine.get("threads", params.get("threads", 2)))
        sample = service.get_sample(session, str(params["sample_id"]), org_id=principal.org_id)
    except (TypeError, ValueError):
        return _error(400, "threads must be an integer")
    except service.NotFound as exc:
        return _error(404, str(exc))
    authorize(session, principal, Action.execute, _target(principal,
                                                          patient_id=sample.patient_id))
    try:
        run = service.submit_run(
            session, org_id=principal.org_id, sample_id=sample.id,
            reference_id=str(params["reference_id"]), fastq_ids=fastq,
            aligner=str(params.get("aligner", "minimap2")), threads=threads,
            params={"wes": {"workflow_params": params, "workflow_type": workflow_type,
                            "workflow_type_version": WORKFLOW_VERSION,
                            "workflow_url": workflow_url,
                            "workflow_engine_parameters": engine}},
            tags={str(k): v for k, v in run_tags.items()}, created_by=principal.user_id,
            data_dir=platform.settings.data_dir)
    except service.NotFound as exc:
        return _error(404, str(exc))
    except service.GenomicsError as exc:
        return _error(400, str(exc))
    return {"run_id": run.id}


@router.get("/runs", response_model=None)
def list_runs(session: SessionDep, principal: PrincipalDep,
              page_size: Annotated[int, Query(ge=1, le=500)] = 50,
              page_token: str | None = None) -> dict[str, Any] | JSONResponse:
    authorize(session, principal, Action.search, _target(principal))
    try:
        offset = int(page_token) if page_token else 0
    except ValueError:
        return _error(400, "page_token is not one this server issued")
    views = service.list_runs(session, org_id=principal.org_id, limit=page_size + 1,
                              offset=offset)
    more = len(views) > page_size
    return {"runs": [{"run_id": v.run.id, "state": wes_state(v.job)}
                     for v in views[:page_size]],
            "next_page_token": str(offset + page_size) if more else ""}


def _view(session: SessionDep, principal: Principal, run_id: str,
          action: Action = Action.read) -> service.RunView | JSONResponse:
    try:
        view = service.run_view(session, service.get_run(session, run_id,
                                                         org_id=principal.org_id))
    except service.NotFound:
        return _error(404, f"no run {run_id}")
    authorize(session, principal, action, _target(principal, view.run.id,
                                                  view.sample.patient_id))
    return view


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/runs/{run_id}", response_model=None)
def get_run_log(run_id: str, request: Request, session: SessionDep,
                principal: PrincipalDep) -> dict[str, Any] | JSONResponse:
    view = _view(session, principal, run_id)
    if isinstance(view, JSONResponse):
        return view
    run, job = view.run, view.job
    base = str(request.base_url).rstrip("/")
    wes = run.params.get("wes", {})
    exit_code = {"succeeded": 0, "failed": 1}.get(job.status)
    return {
        "run_id": run.id,
        "request": {
            "workflow_params": wes.get("workflow_params", {
                "sample_id": run.sample_id, "reference_id": run.reference_id,
                "fastq": list(run.inputs), "aligner": run.aligner, "threads": run.threads}),
            "workflow_type": WORKFLOW_TYPE,
            "workflow_type_version": WORKFLOW_VERSION,
            "workflow_url": wes.get("workflow_url", WORKFLOW_URLS[0]),
            "tags": {str(k): str(v) for k, v in run.tags.items()},
            "workflow_engine_parameters": wes.get("workflow_engine_parameters", {}),
        },
        "state": wes_state(job),
        "run_log": {
            "name": job.title, "cmd": [job.task, run.id],
            "start_time": _time(job.started_at), "end_time": _time(job.finished_at),
            "stdout": f"{base}/api/genomics/runs/{run.id}/logs",
            "stderr": f"{base}/api/genomics/runs/{run.id}/logs",
            "exit_code": exit_code,
            "system_logs": [job.error.split("\n", 1)[0]] if job.error else [],
        },
        "task_logs": [],
        "task_logs_url": None,
        "outputs": {kind: f"{base}/api/genomics/files/{fid}/content"
                    for kind, fid in run.outputs.items()},
    }


@router.get("/runs/{run_id}/status", response_model=None)
def get_run_status(run_id: str, session: SessionDep,
                   principal: PrincipalDep) -> dict[str, Any] | JSONResponse:
    view = _view(session, principal, run_id)
    if isinstance(view, JSONResponse):
        return view
    return {"run_id": view.run.id, "state": wes_state(view.job)}


@router.post("/runs/{run_id}/cancel", response_model=None)
def cancel_run(run_id: str, session: SessionDep,
               principal: PrincipalDep) -> dict[str, Any] | JSONResponse:
    view = _view(session, principal, run_id, Action.update)
    if isinstance(view, JSONResponse):
        return view
    try:
        service.cancel_run(session, view.run)
    except service.GenomicsError as exc:
        return _error(409, str(exc))
    return {"run_id": view.run.id}
