"""Mounts the imaging domain: DICOMweb under /dicomweb, the viewer pages, the demo studies."""

from __future__ import annotations

from fastapi import FastAPI

import careplane.imaging.models  # noqa: F401 - registers the dicom_ tables for migrations


def mount(app: FastAPI) -> None:
    from careplane.imaging.dicomweb import router

    app.include_router(router)
