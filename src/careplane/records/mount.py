"""Mount the FHIR R4 API at /fhir and register the records tables."""

from fastapi import FastAPI

import careplane.records.models  # noqa: F401 - registers the fhir_ tables
from careplane.records.routes import FhirNotFound, router


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.add_middleware(FhirNotFound)
