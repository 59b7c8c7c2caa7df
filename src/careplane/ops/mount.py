from fastapi import FastAPI

from careplane.ops.routes import router


def mount(app: FastAPI) -> None:
    app.include_router(router)
