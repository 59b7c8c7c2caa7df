"""The audit trail for administrators: ``/api/audit`` and the ``/admin/audit`` page.

An administrator sees the records of their own organisation (its members' actions and every
access to its data), the break-the-glass accesses waiting for review with the reasons given,
and can re-verify the hash chain. Reading the trail is itself audited.

The same records are served as FHIR AuditEvents, read-only, by the records domain at
``/fhir/AuditEvent`` (``careplane.records.audit_events``, mapped by ``audit_fhir``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep, SessionDep
from careplane.security._principal import Principal, Role
from careplane.security.actions import Action
from careplane.security.audit import AuditRecord, flush_all, verify
from careplane.security.deps import PrincipalDep, authenticate_request
from careplane.security.guard import authorize
from careplane.security.policy import Target
from careplane.security.review import (
    OUTCOMES,
    BreakGlassEntry,
    ReviewError,
    break_glass_entries,
    review_break_glass,
)

__all__ = ["api", "pages"]

api = APIRouter(prefix="/api/audit", tags=["audit"])
pages = APIRouter(include_in_schema=False)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor_id: str | None
    actor_name: str
    org_id: str | None
    action: str
    target_kind: str
    target_id: str | None
    target_org_id: str | None
    patient_id: str | None
    outcome: str
    reason: str
    purpose: str | None
    break_glass: bool
    source: str | None
    request_id: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: AuditRecord) -> AuditOut:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


class VerifyOut(BaseModel):
    ok: bool
    checked: int
    first_bad_id: int | None
    problem: str
    head_id: int | None = None
    head_hash: str | None = None


class BreakGlassOut(BaseModel):
    audit: AuditOut
    stated_reason: str
    reviewed: bool
    review_outcome: str | None = None
    reviewer: str | None = None
    review_note: str | None = None
    reviewed_at: datetime | None = None

    @classmethod
    def of(cls, entry: BreakGlassEntry) -> BreakGlassOut:
        review = entry.review
        return cls(audit=AuditOut.of(entry.record), stated_reason=entry.stated_reason,
                   reviewed=review is not None,
                   review_outcome=review.outcome if review else None,
                   reviewer=review.reviewer_name if review else None,
                   review_note=review.note if review else None,
                   reviewed_at=review.reviewed_at if review else None)


class ReviewIn(BaseModel):
    outcome: str = Field(pattern="^(justified|unjustified)$")
    note: str = Field(default="", max_length=2000)


def _query(org_id: str, *, patient: str | None = None, actor: str | None = None,
           kind: str | None = None, outcome: str | None = None,
           break_glass: bool | None = None, before_id: int | None = None,
           limit: int = 100) -> Select[AuditRecord]:
    query = select(AuditRecord).where(
        (AuditRecord.org_id == org_id) | (AuditRecord.target_org_id == org_id))
    if patient:
        query = query.where(AuditRecord.patient_id == patient)
    if actor:
        query = query.where(AuditRecord.actor_name == actor)
    if kind:
        query = query.where(AuditRecord.target_kind == kind)
    if outcome:
        query = query.where(AuditRecord.outcome == outcome)
    if break_glass is not None:
        query = query.where(AuditRecord.break_glass.is_(break_glass))
    if before_id is not None:
        query = query.where(AuditRecord.id < before_id)
    return query.order_by(AuditRecord.id.desc()).limit(limit)


@api.get("", response_model=list[AuditOut])
def list_audit(principal: PrincipalDep, session: SessionDep,
               patient: Annotated[str | None, Query(max_length=64)] = None,
               actor: Annotated[str | None, Query(max_length=150, description="username")]
               = None,
               kind: Annotated[str | None, Query(max_length=100)] = None,
               outcome: Annotated[str | None, Query(pattern="^(success|denied|failure)$")]
               = None,
               break_glass: bool | None = None,
               before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[AuditOut]:
    """Who did what to which record of this organisation, newest first (admin only)."""
    flush_all()  # reads recorded moments ago are listed too
    authorize(session, principal, Action.search, Target("audit:record", principal.org_id),
              source="api", detail={"patient": patient, "actor": actor})
    rows = session.scalars(_query(principal.org_id, patient=patient, actor=actor, kind=kind,
                                  outcome=outcome, break_glass=break_glass,
                                  before_id=before_id, limit=limit))
    return [AuditOut.of(r) for r in rows]


def _verify(session: Session, principal: Principal) -> VerifyOut:
    authorize(session, principal, Action.read, Target("audit:chain", principal.org_id),
              source="api")
    result = verify(session)  # in the request's transaction: a second one would wait on it
    return VerifyOut(ok=result.ok, checked=result.checked, first_bad_id=result.first_bad_id,
                     problem=result.problem, head_id=result.head_id,
                     head_hash=result.head_hash)


@api.get("/verify", response_model=VerifyOut)
def verify_chain(principal: PrincipalDep, session: SessionDep) -> VerifyOut:
    """Recompute the whole hash chain and report the first record that does not match."""
    return _verify(session, principal)


@api.get("/break-glass", response_model=list[BreakGlassOut])
def break_glass(principal: PrincipalDep, session: SessionDep,
                pending: bool = False) -> list[BreakGlassOut]:
    """Emergency accesses with the reasons given, and their reviews."""
    flush_all()
    authorize(session, principal, Action.search, Target("audit:break-glass", principal.org_id),
              source="api")
    return [BreakGlassOut.of(e) for e in break_glass_entries(session, principal.org_id,
                                                             pending_only=pending)]


@api.post("/break-glass/{audit_id}/review", response_model=BreakGlassOut)
def review(audit_id: Annotated[int, Path(ge=1, le=2**62)], body: ReviewIn,
           principal: PrincipalDep, session: SessionDep) -> BreakGlassOut:
    """Record the review of one emergency access (justified or not)."""
    flush_all()
    authorize(session, principal, Action.update,
              Target("audit:break-glass", principal.org_id, id=str(audit_id)), source="api")
    try:
        review_break_glass(session, principal, audit_id, body.outcome, body.note)
    except ReviewError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND if "no break" in str(exc)
                            else status.HTTP_409_CONFLICT, str(exc)) from None
    entry = next(e for e in break_glass_entries(session, principal.org_id)
                 if e.record.id == audit_id)
    return BreakGlassOut.of(entry)


# --- the admin page -------------------------------------------------------------------------

MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]


def _page_guard(request: Request, principal: Principal | None) -> Response | None:
    from careplane.web.routes import render

    if principal is None:
        return RedirectResponse(f"/login?next={request.url.path}", status.HTTP_303_SEE_OTHER)
    if Role.admin not in principal.roles:
        return render(request, "security/forbidden.html", principal, 403,
                      message="The audit trail is for administrators.")
    return None


@pages.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, platform: PlatformDep, principal: MaybePrincipal,
               patient: Annotated[str | None, Query(max_length=64)] = None,
               actor: Annotated[str | None, Query(max_length=150)] = None) -> Response:
    from careplane.web.routes import render

    refused = _page_guard(request, principal)
    if refused is not None:
        return refused
    assert principal is not None
    flush_all()
    with platform.session() as session:
        authorize(session, principal, Action.search, Target("audit:record", principal.org_id),
                  source="web", detail={"patient": patient, "actor": actor})
        rows = [AuditOut.of(r) for r in session.scalars(_query(
            principal.org_id, patient=patient or None, actor=actor or None, limit=200))]
        glass = [BreakGlassOut.of(e) for e in break_glass_entries(session, principal.org_id)]
    return render(request, "security/audit.html", principal, records=rows, glass=glass,
                  patient=patient or "", actor=actor or "", outcomes=OUTCOMES, active="audit")


@pages.post("/admin/audit/verify", response_class=HTMLResponse)
def audit_verify_fragment(request: Request, platform: PlatformDep,
                          principal: MaybePrincipal) -> Response:
    from careplane.web.routes import render

    refused = _page_guard(request, principal)
    if refused is not None:
        return refused
    assert principal is not None
    with platform.session() as session:
        result = _verify(session, principal)
    return render(request, "security/_verify.html", principal, result=result)


@pages.post("/admin/audit/break-glass/{audit_id}", response_class=HTMLResponse)
def audit_review_form(audit_id: Annotated[int, Path(ge=1, le=2**62)], request: Request,
                      platform: PlatformDep, principal: MaybePrincipal,
                      outcome: Annotated[str, Form(pattern="^(justified|unjustified)$")],
                      note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    refused = _page_guard(request, principal)
    if refused is not None:
        return refused
    assert principal is not None
    flush_all()
    with platform.session() as session:
        authorize(session, principal, Action.update,
                  Target("audit:break-glass", principal.org_id, id=str(audit_id)),
                  source="web")
        try:
            review_break_glass(session, principal, audit_id, outcome, note)
        except ReviewError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return RedirectResponse("/admin/audit#break-glass", status.HTTP_303_SEE_OTHER)
