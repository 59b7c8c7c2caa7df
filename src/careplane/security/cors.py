"""CORS for browser apps (SMART on FHIR apps, viewers) served from other origins.

A SMART app running in a browser on ``https://app.example.org`` calls ``/fhir``, exchanges its
code at ``/oauth2/token`` and reads ``/.well-known/...`` with ``fetch``; the browser hands it
the answers only when they name its origin. Only the origins listed in
``CAREPLANE_CORS_ORIGINS`` are named, exactly (no wildcard, no pattern), and only on the API
paths apps need (``/fhir``, ``/dicomweb``, the OAuth2 token, revocation, introspection,
userinfo and JWKS endpoints, the discovery documents). Credentials are never allowed: apps
authenticate with bearer tokens, and careplane's session cookie must never ride along on a
cross-origin request. Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) from a
listed origin are answered here, before authentication, with the methods and request headers
the APIs use; anything else passes through untouched.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CorsMiddleware", "cors_path"]

_PREFIXES = ("/fhir", "/dicomweb", "/oauth2/token", "/oauth2/revoke", "/oauth2/introspect",
             "/oauth2/userinfo", "/oauth2/jwks", "/.well-known/")
_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_REQUEST_HEADERS = frozenset({
    "authorization", "content-type", "accept", "if-match", "if-none-match", "if-none-exist",
    "if-modified-since", "if-range", "range", "prefer", "x-request-id",
    "x-break-glass-reason"})
_EXPOSED = ("Location, Content-Location, ETag, Last-Modified, Content-Range, Content-Length, "
            "X-Request-ID, Warning, Retry-After, WWW-Authenticate")
_MAX_AGE = "600"


def cors_path(path: str) -> bool:
    """Whether browser apps of other origins may call ``path``."""
    for prefix in _PREFIXES:
        if prefix.endswith("/"):
            if path.startswith(prefix):
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


class CorsMiddleware:
    """ASGI middleware: answers listed origins' preflights, labels their responses."""

    def __init__(self, app: ASGIApp, origins: list[str] | tuple[str, ...] = ()) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.origins or not cors_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or origin not in self.origins:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers)(scope, receive, send)
            return

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = {k.lower(): v for k, v in message.get("headers", [])}
                extra = [(b"vary", b"Origin")]
                if b"access-control-allow-origin" not in out:  # a route may have set its own
                    extra += [(b"access-control-allow-origin", origin.encode("latin-1")),
                              (b"access-control-expose-headers", _EXPOSED.encode())]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, labelled)

    @staticmethod
    def _preflight(origin: str, headers: Headers) -> Response:
        method = headers["access-control-request-method"].strip().upper()
        asked = [h.strip().lower() for h in
                 headers.get("access-control-request-headers", "").split(",") if h.strip()]
        refused = [h for h in asked if h not in _REQUEST_HEADERS]
        if method not in _METHODS.split(", ") or refused:
            # No CORS headers: the browser refuses the request and says why in its console.
            return Response(status_code=204, headers={"Vary": "Origin"})
        return Response(status_code=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": ", ".join(sorted(_REQUEST_HEADERS)),
            "Access-Control-Max-Age": _MAX_AGE,
            "Vary": "Origin"})
