"""Mount the FHIR R4 API at /fhir and the patient pages; register tables, nav and demo data."""

from fastapi import FastAPI

import careplane.records.models  # noqa: F401 - registers the fhir_ tables
from careplane.demo import register_seeder
from careplane.records.demo import seed_records
from careplane.records.routes import FhirNotFound, router
from careplane.security import Role
from careplane.web.nav import NavItem, register

register(NavItem("patients", "Patients", "/patients",
                 "Find a patient; the chart with problems, medicines and vital signs",
                 roles=frozenset({Role.clinician, Role.radiologist, Role.psychiatrist,
                                  Role.counsellor, Role.admin, Role.patient})))
register_seeder(seed_records)


def mount(app: FastAPI) -> None:
    from careplane.records.audit_events import router as audit_events
    from careplane.records.web import router as pages

    app.include_router(audit_events)  # before the generic /fhir/{type} routes
    app.include_router(router)
    app.include_router(pages)
    app.add_middleware(FhirNotFound)
