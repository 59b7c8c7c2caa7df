"""Mounts the imaging domain: DICOMweb under /dicomweb, the viewer pages, the demo studies."""

from __future__ import annotations

from fastapi import FastAPI

import careplane.imaging.models  # noqa: F401 - registers the dicom_ tables for migrations
from careplane.demo import register_seeder
from careplane.imaging.demo import seed_imaging
from careplane.security import Role
from careplane.web.nav import NavItem, register

register(NavItem("imaging", "Imaging", "/imaging",
                 "Studies per patient from modalities and PACS; the image viewer",
                 roles=frozenset({Role.clinician, Role.radiologist, Role.psychiatrist,
                                  Role.admin})))
register_seeder(seed_imaging)


def mount(app: FastAPI) -> None:
    from careplane.imaging.dicomweb import router as dicomweb
    from careplane.imaging.ohif import router as ohif
    from careplane.imaging.research import router as research
    from careplane.imaging.web import router as pages

    app.include_router(dicomweb)
    app.include_router(pages)
    app.include_router(ohif)
    app.include_router(research)
