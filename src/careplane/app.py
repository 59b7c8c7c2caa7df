"""``create_app(settings)``: the one FastAPI application, with every installed domain mounted."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from careplane._version import __version__
from careplane.domains import modules
from careplane.platform.blobs import BlobStoreFull, BlobTooLarge
from careplane.platform.context import Platform
from careplane.platform.db import Database, DatabaseUnavailable, migrate
from careplane.platform.events import EventHub, PollingWakeup, PostgresListenWakeup, Wakeup
from careplane.platform.logs import request_id_var
from careplane.security.encryption import blob_store_for
from careplane.settings import Settings

log = logging.getLogger("careplane.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
        "form-action 'self'"),
    "Cache-Control": "no-store",
}


def build_platform(settings: Settings) -> Platform:
    """The shared services. Blobs are always encrypted at rest: the key file is made on first
    start (mode 0600) and a key file that cannot be used stops the start here."""
    blobs = blob_store_for(settings)
    db = Database(settings.db_url)
    wakeup: Wakeup
    if db.is_postgresql:
        conninfo = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        wakeup = PostgresListenWakeup(conninfo)
    else:
        wakeup = PollingWakeup(settings.event_poll_seconds)
    return Platform(settings=settings, db=db, blobs=blobs,
                    events=EventHub(db, wakeup))


def error_body(status: int, message: str, **extra: object) -> dict[str, object]:
    return {"error": {"status": status, "message": message, **extra},
            "request_id": request_id_var.get()}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                    for e in exc.errors()]
        return JSONResponse(error_body(422, "the request is not valid", problems=problems), 422)

    @app.exception_handler(BlobStoreFull)
    async def _disk_full(request: Request, exc: BlobStoreFull) -> Response:
        log.error("blob store is full")
        return JSONResponse(error_body(507, "storage is full; nothing was kept of this upload"),
                            507)

    @app.exception_handler(BlobTooLarge)
    async def _too_large(request: Request, exc: BlobTooLarge) -> Response:
        return JSONResponse(error_body(413, str(exc)), 413)

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: Exception) -> Response:
        log.error("database unavailable: %s", exc.__class__.__name__)
        return JSONResponse(error_body(503, "the database is unavailable; try again shortly"),
                            503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal error; quote the request id"), 500)


def create_app(settings: Settings, platform: Platform | None = None) -> FastAPI:
    """Build the application. Refuses unsafe settings before anything else happens."""
    settings.check_safe()
    plat = platform or build_platform(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plat.db.ping()
        migrate(plat.db, only_if_new=True)
        await plat.events.start()
        try:
            yield
        finally:
            await plat.events.close()
            plat.db.dispose()

    app = FastAPI(title="careplane", version=__version__, lifespan=lifespan,
                  docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.platform = plat
    _install_error_handlers(app)

    @app.middleware("http")
    async def _request_context(request: Request,
                               call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        incoming = request.headers.get("x-request-id", "")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() \
            else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = request_id
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        log.info("%s %s %s", request.method, request.url.path, response.status_code,
                 extra={"status": response.status_code, "method": request.method,
                        "path": request.url.path, "request_id": request_id,
                        "ms": round((time.perf_counter() - started) * 1000, 2)})
        return response

    for domain in modules():
        domain.mount(app)
    return app
