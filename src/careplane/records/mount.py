"""Mount the FHIR R4 API at /fhir and the patient pages; register tables, nav, demo data and
what a server loads at start."""

from fastapi import FastAPI
from sqlalchemy.orm import Session

import careplane.records.models  # noqa: F401 - registers the fhir_ tables
from careplane.demo import register_seeder
from careplane.platform import heap
from careplane.records import store
from careplane.records.demo import seed_records
from careplane.records.errors import FhirError
from careplane.records.indexer import load_plans
from careplane.records.routes import FhirNotFound, note_warnings, router
from careplane.records.validation import load_models
from careplane.security import Role
from careplane.security.consent import ConsentError, sync_fhir
from careplane.web.nav import NavItem, register

register(NavItem("patients", "Patients", "/patients",
                 "Find a patient; the chart with problems, medicines and vital signs",
                 roles=frozenset({Role.clinician, Role.radiologist, Role.psychiatrist,
                                  Role.counsellor, Role.admin, Role.patient})))
register_seeder(seed_records)
heap.load_at_start(load_models)
heap.load_at_start(load_plans)


def _sync_consent(session: Session, write: store.Write) -> None:
    """A Consent written through FHIR is the policy's rule from the same transaction on."""
    try:
        directive = sync_fhir(session, org_id=write.org_id, rid=write.id,
                              resource=write.content)
    except ConsentError as exc:
        raise FhirError.of(422, "processing", f"this Consent cannot be enforced: {exc}",
                           expression="Consent") from None
    if directive is not None and directive.warnings:
        note_warnings(session, [f"Consent/{write.id}: {w}" for w in directive.warnings])


def _refuse_audit_event(session: Session, write: store.Write) -> None:
    """The audit trail is written by the server alone (also not through a bundle)."""
    raise FhirError.of(405, "not-supported", "AuditEvent is read-only: the server writes its "
                       "audit trail itself", headers={"Allow": "GET"})


store.on_write("Consent", _sync_consent)
store.on_write("AuditEvent", _refuse_audit_event)


def mount(app: FastAPI) -> None:
    from careplane.records.audit_events import router as audit_events
    from careplane.records.web import router as pages

    app.include_router(audit_events)  # before the generic /fhir/{type} routes
    app.include_router(router)
    app.include_router(pages)
    app.add_middleware(FhirNotFound)
