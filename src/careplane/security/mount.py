"""Mounts the security domain: password login API, OAuth2/OIDC server, its tables."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import careplane.security.audit
import careplane.security.models
import careplane.security.oauth_models  # noqa: F401 - registers the identity and audit tables
from careplane.security.oauth import OAuthError
from careplane.security.oauth_routes import router as oauth_router
from careplane.security.routes import router


async def _oauth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    return JSONResponse(exc.body(), exc.status, headers={"Cache-Control": "no-store",
                                                         **exc.headers})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(oauth_router)
    app.add_exception_handler(OAuthError, _oauth_error)
