"""Mount the genomics domain: its API, its tables (for migrations) and its navigation entry."""

from __future__ import annotations

from fastapi import FastAPI

from careplane.genomics import models as _models  # noqa: F401 - registers the tables
from careplane.genomics.routes import router
from careplane.genomics.wes import router as wes_router

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(wes_router)
