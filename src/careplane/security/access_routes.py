"""API for what decides access besides roles: patients' consents and explicit grants.

``/api/consents`` takes FHIR R4 Consent resources (the standard a consent is written in) and
answers with what careplane enforces from them, including the parts it could not enforce.
``/api/grants`` lets an organisation's administrator open data to another organisation, a
user, or a research workspace. Every call passes the policy and is audited like any other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from careplane.deps import SessionDep
from careplane.security._principal import Role
from careplane.security.actions import Action
from careplane.security.consent import (
    ConsentDirective,
    ConsentError,
    ConsentProvision,
    deactivate_consent,
    from_fhir,
    list_consents,
)
from careplane.security.deps import PrincipalDep
from careplane.security.grants import AccessGrant, create_grant, list_grants, revoke_grant
from careplane.security.guard import authorize
from careplane.security.identity import IdentityError, link_patient
from careplane.security.models import Organisation, User
from careplane.security.policy import Target

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["access"])


class ProvisionOut(BaseModel):
    id: str
    parent_id: str | None
    decision: str
    actor_user_ids: list[str]
    actor_org_ids: list[str]
    actor_roles: list[str]
    purposes: list[str]
    data_classes: list[str]
    actions: list[str]
    start: datetime | None
    end: datetime | None


class ConsentOut(BaseModel):
    id: str
    patient_id: str
    status: str
    scope: str
    source_ref: str | None
    warnings: list[str]
    updated_at: datetime
    provisions: list[ProvisionOut]


def _consent_out(session: SessionDep, directive: ConsentDirective) -> ConsentOut:
    rows = session.scalars(select(ConsentProvision).where(
        ConsentProvision.consent_id == directive.id).order_by(ConsentProvision.depth))
    return ConsentOut(
        id=directive.id, patient_id=directive.patient_id, status=directive.status,
        scope=directive.scope, source_ref=directive.source_ref,
        warnings=list(directive.warnings), updated_at=directive.updated_at,
        provisions=[ProvisionOut(
            id=r.id, parent_id=r.parent_id, decision=r.decision,
            actor_user_ids=r.actor_user_ids, actor_org_ids=r.actor_org_ids,
            actor_roles=r.actor_roles, purposes=r.purposes, data_classes=r.data_classes,
            actions=r.actions, start=r.start, end=r.end) for r in rows])


_CONSENT_EXAMPLE = {
    "resourceType": "Consent", "id": "c1", "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                          "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/p1"},
    "provision": {"type": "permit", "provision": [{
        "type": "deny", "purpose": [{"code": "HRESCH"}]}]}}


@router.post("/consents", response_model=ConsentOut, status_code=201)
def record_consent(principal: PrincipalDep, session: SessionDep,
                   resource: Annotated[dict[str, Any], Body(examples=[_CONSENT_EXAMPLE])]
                   ) -> ConsentOut:
    """Record a patient's consent (a FHIR R4 Consent); a new version replaces the old."""
    patient = (resource.get("patient") or {}).get("reference", "") if isinstance(
        resource.get("patient"), dict) else ""
    patient_id = str(patient).split("/", 1)[1] if str(patient).startswith("Patient/") else None
    authorize(session, principal, Action.create,
              Target("consent:directive", principal.org_id, id=resource.get("id"),
                     patient_id=patient_id), source="api")
    try:
        directive = from_fhir(session, principal.org_id, resource, created_by=principal.user_id)
    except ConsentError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return _consent_out(session, directive)


@router.get("/consents", response_model=list[ConsentOut])
def consents(principal: PrincipalDep, session: SessionDep,
             patient: Annotated[str | None, Query(max_length=64)] = None) -> list[ConsentOut]:
    """The organisation's consent directives (a patient sees their own)."""
    if patient is None and Role.patient in principal.roles:
        patient = principal.patient_id or "-"
    authorize(session, principal, Action.search,
              Target("consent:directive", principal.org_id, patient_id=patient), source="api")
    return [_consent_out(session, d) for d in list_consents(session, principal.org_id, patient)]


@router.delete("/consents/{consent_id}", status_code=204)
def withdraw_consent(consent_id: str, principal: PrincipalDep, session: SessionDep) -> None:
    """Make a consent inactive (its rules stop applying at once)."""
    directive = session.get(ConsentDirective, consent_id)
    if directive is None or directive.org_id != principal.org_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no consent {consent_id}")
    authorize(session, principal, Action.update,
              Target("consent:directive", directive.org_id, id=consent_id,
                     patient_id=directive.patient_id), source="api")
    deactivate_consent(session, consent_id, org_id=principal.org_id)


class GrantIn(BaseModel):
    grantee_org: str | None = Field(default=None, max_length=64,
                                    description="organisation slug or id")
    grantee_user: str | None = Field(default=None, max_length=150, description="username")
    workspace_id: str | None = Field(default=None, max_length=64)
    patient_id: str | None = Field(default=None, max_length=64)
    kinds: list[str] = Field(min_length=1, max_length=50,
                             examples=[["records:*"], ["imaging:study", "genomics:*"]])
    actions: list[Action] = Field(min_length=1)
    deidentified_only: bool = False
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    reason: str = Field(default="", max_length=2000)


class GrantOut(BaseModel):
    id: str
    grantor_org_id: str
    grantee_org_id: str | None
    grantee_user_id: str | None
    workspace_id: str | None
    patient_id: str | None
    kinds: list[str]
    actions: list[str]
    deidentified_only: bool
    valid_from: datetime | None
    valid_until: datetime | None
    revoked_at: datetime | None
    reason: str

    @classmethod
    def of(cls, row: AccessGrant) -> GrantOut:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


@router.post("/grants", response_model=GrantOut, status_code=201)
def add_grant(body: GrantIn, principal: PrincipalDep, session: SessionDep) -> GrantOut:
    """Open some of this organisation's data to another organisation or a user."""
    authorize(session, principal, Action.create, Target("security:grant", principal.org_id),
              source="api")
    grantee_org_id = None
    if body.grantee_org:
        org = session.get(Organisation, body.grantee_org) or session.scalar(
            select(Organisation).where(Organisation.slug == body.grantee_org))
        if org is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"no organisation {body.grantee_org!r}")
        grantee_org_id = org.id
    grantee_user_id = None
    if body.grantee_user:
        user = session.scalar(select(User).where(User.username == body.grantee_user))
        if user is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"no user {body.grantee_user!r}")
        grantee_user_id = user.id
    for moment in (body.valid_from, body.valid_until):
        if moment is not None and moment.tzinfo is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "valid_from and valid_until need a time zone")
    try:
        row = create_grant(session, grantor_org_id=principal.org_id, kinds=body.kinds,
                           actions=body.actions, grantee_org_id=grantee_org_id,
                           grantee_user_id=grantee_user_id, workspace_id=body.workspace_id,
                           patient_id=body.patient_id,
                           deidentified_only=body.deidentified_only,
                           valid_from=body.valid_from, valid_until=body.valid_until,
                           reason=body.reason, created_by=principal.user_id)
    except IdentityError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return GrantOut.of(row)


@router.get("/grants", response_model=list[GrantOut])
def grants(principal: PrincipalDep, session: SessionDep) -> list[GrantOut]:
    """Grants this organisation gave or received."""
    authorize(session, principal, Action.search, Target("security:grant", principal.org_id),
              source="api")
    return [GrantOut.of(g) for g in list_grants(session, principal.org_id)]


@router.delete("/grants/{grant_id}", status_code=204)
def withdraw_grant(grant_id: str, principal: PrincipalDep, session: SessionDep) -> None:
    authorize(session, principal, Action.update,
              Target("security:grant", principal.org_id, id=grant_id), source="api")
    if not revoke_grant(session, grant_id, grantor_org_id=principal.org_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no grant {grant_id} of yours")


class PatientLinkIn(BaseModel):
    username: str = Field(min_length=1, max_length=150)
    patient_id: str = Field(min_length=1, max_length=64, description="the FHIR Patient id")


class PatientLinkOut(BaseModel):
    username: str
    organisation: str
    patient_id: str


@router.put("/patient-links", response_model=PatientLinkOut)
def put_patient_link(body: PatientLinkIn, principal: PrincipalDep,
                     session: SessionDep) -> PatientLinkOut:
    """Make a Patient record the own record of a user with the patient role (admin only):
    that user then sees exactly that patient's data, and SMART apps launch with it."""
    authorize(session, principal, Action.update,
              Target("security:patient-link", principal.org_id, id=body.username),
              source="api", detail={"patient_id": body.patient_id})
    user = session.scalar(select(User).where(User.username == body.username))
    org = session.get(Organisation, principal.org_id)
    if user is None or org is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {body.username!r}")
    try:
        link_patient(session, user, org, body.patient_id)
    except IdentityError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return PatientLinkOut(username=user.username, organisation=org.slug,
                          patient_id=body.patient_id)
