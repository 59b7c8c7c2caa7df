"""Mount the genomics domain: its API, its tables (for migrations) and its navigation entry."""

from __future__ import annotations

from fastapi import FastAPI

from careplane.demo import register_seeder
from careplane.genomics import models as _models  # noqa: F401 - registers the tables
from careplane.genomics.demo import seed_genomics
from careplane.genomics.routes import router
from careplane.genomics.web import router as pages
from careplane.genomics.wes import router as wes_router
from careplane.security import Role
from careplane.web.nav import NavItem, register

__all__ = ["mount"]

register(NavItem("genomics", "Genomics", "/genomics",
                 "FASTQ to BAM to VCF runs with QC reports; samples; the variant browser",
                 roles=frozenset({Role.clinician, Role.radiologist, Role.psychiatrist,
                                  Role.admin, Role.researcher})))
register_seeder(seed_genomics)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(wes_router)
    app.include_router(pages)
