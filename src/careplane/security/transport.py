"""Transport security: serving TLS directly (``careplane serve --tls-cert --tls-key``) and
telling browsers to keep to HTTPS (HSTS) once they have reached us over it.

The certificate and key are loaded once before the server starts, so a wrong path, a key that
does not match the certificate or an encrypted key is one clear error instead of a server that
fails on its first connection. TLS below 1.2 is refused.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HSTS", "HstsMiddleware", "TlsError", "tls_options"]

HSTS = b"max-age=31536000; includeSubDomains"


class TlsError(ValueError):
    """The certificate or key cannot be used; the message says which and why."""


def tls_options(cert: Path | None, key: Path | None) -> dict[str, Any]:
    """uvicorn keyword arguments for serving TLS (empty when neither file is given)."""
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise TlsError("--tls-cert and --tls-key go together")
    for path in (cert, key):
        if not path.is_file():
            raise TlsError(f"{path} is not a readable file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot use {cert} with {key}: {exc}") from exc
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER}


class HstsMiddleware:
    """Adds ``Strict-Transport-Security`` to every answer given over HTTPS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"strict-transport-security" for name, _ in headers):
                    headers.append((b"strict-transport-security", HSTS))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_hsts)
