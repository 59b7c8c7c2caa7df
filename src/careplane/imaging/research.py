"""De-identified copies of studies for research projects, made by a durable job.

``POST /api/imaging/research/deidentify`` takes studies (or all of a patient's studies) of the
caller's organisation and queues a job that applies the PS3.15 Annex E Basic Profile with the
chosen options (:mod:`careplane.imaging.deidentify`) to every instance and stores the results as
new studies marked with the research project. The project is the policy's *workspace*:

* UIDs, patient pseudonyms and date shifts come from a key derived from the server's secret,
  the organisation and the project, so the same source gives the same copy in the same project
  (a re-run or a resumed job stores nothing twice) and unlinkable copies in different projects.
* A copy is de-identified data of its project: a researcher reads it only through a grant that
  names the project as its workspace, and sees nothing else (security.policy); the project's
  studies are what the researcher's QIDO-RS lists. Clinical study lists, C-FIND and the chart
  (FHIR ImagingStudy) leave research copies out.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.imaging.config import DuplicatePolicy
from careplane.imaging.deidentify import BurnedInAnnotationError, Option, Region, deidentify
from careplane.imaging.models import DicomStudy
from careplane.imaging.store import StoreFailure, discard_unreferenced, store_instance
from careplane.imaging.wado import NotFound, instance_refs, study_target
from careplane.platform.db import utcnow
from careplane.platform.jobs import JobFailed, submit
from careplane.security import Principal, Role
from careplane.security.deps import PrincipalDep
from careplane.security.grants import grants_for
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["TASK", "DeidentifyRequest", "deidentify_studies", "project_key", "research_scope",
           "router"]

TASK = "careplane.imaging.research:deidentify_studies"
PROJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_STUDIES = 1000
# Roles whose imaging rights are clinical: with one of them the caller is not limited to research
_CLINICAL = frozenset({Role.clinician, Role.radiologist, Role.psychiatrist, Role.admin,
                       Role.service})

router = APIRouter(prefix="/api/imaging/research", tags=["imaging"])


def project_key(secret: str, org_id: str, project: str) -> bytes:
    """The de-identification key of one organisation's research project."""
    label = f"careplane imaging de-identification\x00{org_id}\x00{project}".encode()
    return hmac.new(secret.encode(), label, hashlib.sha256).digest()


def research_scope(session: Session, principal: Principal) -> list[tuple[str, str]] | None:
    """For a caller who is only a researcher, the (organisation, project) pairs whose
    de-identified studies it was granted; None for everyone else."""
    if Role.researcher not in principal.roles or principal.roles & _CLINICAL:
        return None
    now = utcnow()
    pairs: set[tuple[str, str]] = set()
    for grant in grants_for(session, principal, None):
        if grant.workspace_id is None:
            continue
        target = Target(kind="imaging:study", org_id=grant.grantor_org_id, deidentified=True,
                        workspace_id=grant.workspace_id)
        if grant.covers(principal, Action.search, target, now):
            pairs.add((grant.grantor_org_id, grant.workspace_id))
    return sorted(pairs)


class PixelRegion(BaseModel):
    top: int = Field(ge=0)
    left: int = Field(ge=0)
    bottom: int = Field(gt=0)
    right: int = Field(gt=0)


class DeidentifyRequest(BaseModel):
    """What to copy into which project, and how."""

    project: Annotated[str, Field(pattern=PROJECT_PATTERN,
                                  description="the research project (grant workspace)")]
    studies: list[Annotated[str, Field(pattern=r"^[0-9.]{1,64}$")]] = Field(
        default_factory=list, max_length=MAX_STUDIES)
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    options: list[Option] = Field(default_factory=list)
    allow_burned_in: bool = False
    pixel_regions: list[PixelRegion] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _coherent(self) -> DeidentifyRequest:
        if bool(self.studies) == bool(self.patient_id):
            raise ValueError("name either studies or a patient_id")
        chosen = set(self.options)
        if {Option.RETAIN_LONGITUDINAL_FULL_DATES,
                Option.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= chosen:
            raise ValueError("choose one of the full-dates and modified-dates options")
        if (Option.CLEAN_PIXEL_DATA in chosen) != bool(self.pixel_regions):
            raise ValueError("clean_pixel_data needs pixel_regions, and pixel_regions need "
                             "the clean_pixel_data option")
        for region in self.pixel_regions:
            if region.bottom <= region.top or region.right <= region.left:
                raise ValueError(f"pixel region {region} is empty")
        return self


class DeidentifyQueued(BaseModel):
    job_id: str
    project: str
    studies: list[str]
    status_url: str


def _source_studies(session: Session, principal: Principal,
                    request: DeidentifyRequest) -> list[DicomStudy]:
    query = select(DicomStudy).where(DicomStudy.org_id == principal.org_id,
                                     DicomStudy.research_project.is_(None))
    if request.patient_id:
        found = list(session.scalars(query.where(DicomStudy.patient_id == request.patient_id)
                                     .order_by(DicomStudy.id).limit(MAX_STUDIES)))
        if not found:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"no studies of patient {request.patient_id}")
        return found
    wanted = list(dict.fromkeys(request.studies))
    rows = {s.study_instance_uid: s for s in session.scalars(
        query.where(DicomStudy.study_instance_uid.in_(wanted)))}
    missing = [uid for uid in wanted if uid not in rows]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no clinical study {', '.join(missing[:5])} in your organisation")
    return [rows[uid] for uid in wanted]


@router.post("/deidentify", status_code=status.HTTP_202_ACCEPTED,
             response_model=DeidentifyQueued)
def request_deidentification(body: DeidentifyRequest, platform: PlatformDep,
                             principal: PrincipalDep) -> DeidentifyQueued:
    """Queue de-identified copies of studies into a research project (job: /api/jobs/{id})."""
    with platform.session() as session:
        studies = _source_studies(session, principal, body)
        for study in studies:  # each source study is an audited export
            authorize(session, principal, Action.export, study_target(study))
        uids = [s.study_instance_uid for s in studies]
        job = submit(session, TASK, {
            "org_id": principal.org_id, "project": body.project, "studies": uids,
            "options": sorted(o.value for o in body.options),
            "allow_burned_in": body.allow_burned_in,
            "pixel_regions": [r.model_dump() for r in body.pixel_regions],
        }, title=f"De-identify {len(uids)} studies into {body.project}",
            org_id=principal.org_id, created_by=principal.user_id)
        job_id = job.id
    platform.events.poke()
    return DeidentifyQueued(job_id=job_id, project=body.project, studies=uids,
                            status_url=f"/api/jobs/{job_id}")


def _copy_study(session: Session, blobs: Any, org_id: str, project: str, study: DicomStudy,
                key: bytes, args: dict[str, Any], unused: list[str]
                ) -> tuple[str | None, int, list[str]]:
    """De-identify and store one study's instances; (new study UID, stored, problems)."""
    options = {Option(o) for o in args["options"]}
    regions = [Region(**r) for r in args.get("pixel_regions", [])]
    new_uid: str | None = None
    stored = 0
    problems: list[str] = []
    for ref in instance_refs(session, study):
        with blobs.open(ref.blob_sha256) as source:
            ds = pydicom.dcmread(io.BytesIO(source.read()))
        try:
            copy = deidentify(ds, project_key=key, options=options,
                              allow_burned_in=bool(args.get("allow_burned_in")),
                              pixel_regions=regions)
        except (BurnedInAnnotationError, ValueError) as exc:
            problems.append(f"instance {ref.sop_instance_uid} not copied: {exc}")
            continue
        out = io.BytesIO()
        copy.save_as(out, enforce_file_format=True)
        result = store_instance(session, blobs, org_id, out.getvalue(),
                                origin=f"deidentify:{project}"[:100],
                                policy=DuplicatePolicy.keep_first, unused=unused,
                                research_project=project)
        if isinstance(result, StoreFailure):
            problems.append(f"instance {ref.sop_instance_uid} not stored: {result.message}")
            continue
        new_uid = result.study_instance_uid
        stored += 1
    return new_uid, stored, problems


def deidentify_studies(ctx: Any) -> dict[str, Any]:
    """The job: copy ``ctx.args['studies']`` de-identified into ``ctx.args['project']``.

    Each study is one transaction and a checkpoint: a retried or recovered job starts after
    the last study it finished, and a study it redoes maps onto the same UIDs.
    """
    from careplane.platform.db import Database
    from careplane.security.encryption import blob_store_for
    from careplane.settings import load_settings

    settings = load_settings()
    org_id, project = str(ctx.args["org_id"]), str(ctx.args["project"])
    key = project_key(settings.secret_key, org_id, project)
    studies: list[str] = list(ctx.args["studies"])
    mapping: dict[str, str] = dict(ctx.state.get("mapping", {}))
    counts = {"instances": int(ctx.state.get("instances", 0)),
              "refused": int(ctx.state.get("refused", 0))}
    db = Database(settings.db_url)
    blobs = blob_store_for(settings)
    try:
        for position, uid in enumerate(studies):
            if uid in mapping or uid in ctx.state.get("skipped", []):
                continue
            ctx.check()
            unused: list[str] = []
            with db.session() as session:
                study = session.scalars(select(DicomStudy).where(
                    DicomStudy.org_id == org_id, DicomStudy.study_instance_uid == uid,
                    DicomStudy.research_project.is_(None))).first()
                if study is None:
                    problems = [f"study {uid} is no longer stored"]
                    new_uid, stored = None, 0
                else:
                    try:
                        new_uid, stored, problems = _copy_study(
                            session, blobs, org_id, project, study, key, ctx.args, unused)
                    except NotFound:
                        new_uid, stored, problems = None, 0, [f"study {uid} has no instances"]
            discard_unreferenced(db, blobs, unused)
            for line in problems:
                ctx.log(line, "warning")
            counts["instances"] += stored
            counts["refused"] += len(problems)
            if new_uid is not None:
                mapping[uid] = new_uid
                ctx.save_state(mapping=mapping, **counts)
            else:
                ctx.save_state(skipped=[*ctx.state.get("skipped", []), uid], mapping=mapping,
                               **counts)
            ctx.progress(position + 1, len(studies), f"{len(mapping)} studies copied")
    finally:
        db.dispose()
    if not mapping:
        raise JobFailed(f"no study could be copied into {project}: "
                        f"{counts['refused']} instances refused (see the job's log)")
    return {"project": project, "studies": mapping, **counts}
