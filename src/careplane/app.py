"""``create_app(settings)``: the one FastAPI application, with every installed domain mounted."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careplane._version import __version__
from careplane.domains import modules
from careplane.platform import heap
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


_SECURITY_HEADERS_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                         for k, v in SECURITY_HEADERS.items()]


class RequestContext:
    """Request id, security headers and the access log line, for every HTTP request.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs
    the rest of the application in a task of its own and streams the response through a
    memory channel, which costs every request a few hundred microseconds.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() \
            else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                present = {k.lower() for k, _ in headers}
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers += [(k, v) for k, v in _SECURITY_HEADERS_RAW if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id_var.reset(token)
            if log.isEnabledFor(logging.INFO):
                path = scope["path"]
                log.info("%s %s %s", scope["method"], path, status,
                         extra={"status": status, "method": scope["method"], "path": path,
                                "request_id": request_id,
                                "ms": round((time.perf_counter() - started) * 1000, 2)})


def app_from_environment() -> FastAPI:
    """The application of one HTTP worker process of ``careplane serve --http-workers N``.

    Each worker is a fresh interpreter: it reads its settings from the environment, which
    ``serve`` exported (data directory, database), and opens its own connections. The
    serving process keeps the DICOM listener and the job workers; the database has been
    migrated before any worker starts.
    """
    from careplane.platform.logs import configure_logging
    from careplane.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    # uvicorn's access line stays off, as in a single process: the application logs each
    # request by its path alone, and a query string can carry an OAuth code.
    logging.getLogger("uvicorn.access").propagate = False
    app = create_app(settings)
    heap.settle()
    return app


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

    app.add_middleware(RequestContext)
    for domain in modules():
        domain.mount(app)
    return app
