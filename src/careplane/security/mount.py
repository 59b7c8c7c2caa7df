from fastapi import FastAPI

import careplane.security.audit
import careplane.security.models  # noqa: F401 - registers the identity and audit tables
from careplane.security.routes import router


def mount(app: FastAPI) -> None:
    app.include_router(router)
