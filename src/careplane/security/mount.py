"""Mounts the security domain: password login API, OAuth2/OIDC server, its tables."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware

import careplane.security.audit
import careplane.security.consent
import careplane.security.grants
import careplane.security.models
import careplane.security.oauth_models
import careplane.security.review
import careplane.security.totp  # noqa: F401 - registers the security domain's tables
from careplane.security import Role
from careplane.security.access_routes import router as access_router
from careplane.security.audit import configure as configure_audit
from careplane.security.audit_routes import api as audit_api
from careplane.security.audit_routes import pages as audit_pages
from careplane.security.cors import CorsMiddleware
from careplane.security.oauth import OAuthError
from careplane.security.oauth_routes import router as oauth_router
from careplane.security.oidc import external_provider
from careplane.security.ratelimit import RateLimitMiddleware
from careplane.security.routes import router
from careplane.security.transport import HstsMiddleware
from careplane.web.nav import NavItem, register

register(NavItem("audit", "Audit", "/admin/audit",
                 "Who opened which record, emergency accesses to review, chain verification",
                 roles=frozenset({Role.admin})))


async def _oauth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    return JSONResponse(exc.body(), exc.status, headers={"Cache-Control": "no-store",
                                                         **exc.headers})


def mount(app: FastAPI) -> None:
    configure_audit(delay=app.state.platform.settings.audit_delay_ms / 1000)
    app.include_router(router)
    app.include_router(oauth_router)
    app.include_router(access_router)
    app.include_router(audit_api)
    app.include_router(audit_pages)
    app.add_exception_handler(OAuthError, _oauth_error)
    # Outermost of the security middleware: a preflight is answered before anything else, and
    # refusals (401, 429) still carry the origin's label so the app can read them.
    app.add_middleware(CorsMiddleware, origins=app.state.platform.settings.cors_origins)
    # An external OIDC provider whose tokens are trusted too (None when not configured).
    app.state.oidc_provider = external_provider(app.state.platform.settings)
    # Innermost (appended, not inserted): the request-id and header middleware wrap a 429.
    app.user_middleware.append(Middleware(RateLimitMiddleware))
    app.user_middleware.append(Middleware(HstsMiddleware))
