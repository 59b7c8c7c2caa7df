from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from careplane.web.routes import router


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
