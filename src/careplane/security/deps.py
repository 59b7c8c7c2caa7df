"""Authentication on every protected route: a bearer token (API) or a session cookie (web).

Bearer tokens are either careplane's opaque tokens (``/api/auth/token``, ``careplane token
add``) or JWT access tokens from the built-in OAuth2 server; both resolve to a
:class:`Principal`. A refused token answers 401 with an RFC 6750 challenge
(``WWW-Authenticate: Bearer error="invalid_token", error_description=...``).

A clinician's emergency access is requested per request with the ``X-Break-Glass-Reason``
header; the reason travels on the principal to the policy and into the audit trail.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.platform.context import Platform
from careplane.security._principal import Principal, Role
from careplane.security.access_tokens import TokenRejected, is_jwt, resolve_access_token
from careplane.security.identity import resolve_token
from careplane.security.issuer import issuer_url

__all__ = ["BREAK_GLASS_HEADER", "CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE",
           "PrincipalDep", "authenticate_request", "current_principal", "require_roles",
           "token_session"]

SESSION_COOKIE = "careplane_session"
CSRF_COOKIE = "careplane_csrf"
CSRF_HEADER = "x-csrf-token"
BREAK_GLASS_HEADER = "x-break-glass-reason"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_FORM = "application/x-www-form-urlencoded"


def _unauthorised(message: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="careplane"'
    if error:
        safe = message.replace('"', "'")
        challenge += f', error="{error}", error_description="{safe}"'
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message,
                         headers={"WWW-Authenticate": challenge})


async def _form_csrf(request: Request) -> str | None:
    """The ``csrf`` field of a plain HTML form post that authenticates with the session cookie.

    Only url-encoded forms are read here (uploads must send the header), and only when the
    header is absent, so no other request pays for parsing its body.
    """
    if request.method in _SAFE_METHODS or CSRF_HEADER in request.headers \
            or "authorization" in request.headers or SESSION_COOKIE not in request.cookies:
        return None
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != _FORM:
        return None
    form = await request.form()
    value = form.get("csrf")
    return value if isinstance(value, str) else None


def _break_glass(request: Request, principal: Principal) -> Principal:
    reason = request.headers.get(BREAK_GLASS_HEADER, "").strip()
    if not reason:
        return principal
    if len(reason) < 10 or len(reason) > 500 or not reason.isprintable():
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            "X-Break-Glass-Reason must state the emergency in 10-500 "
                            "printable characters")
    return dataclasses.replace(principal, break_glass_reason=reason)


@contextmanager
def token_session(platform: Platform) -> Iterator[Session]:
    """Where a token is looked up: one indexed query and, at most once a minute, the token's
    last-use time. On PostgreSQL these run in autocommit, so authentication costs no BEGIN
    or COMMIT round trips of its own; on SQLite those cost nothing and the usual unit of work
    is kept."""
    if not platform.db.is_postgresql:
        with platform.db.session() as session:
            yield session
        return
    with platform.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn, \
            Session(bind=conn) as session:
        yield session


def authenticate_request(request: Request, platform: PlatformDep,
                         form_csrf: Annotated[str | None, Depends(_form_csrf)] = None
                         ) -> Principal | None:
    """The principal of this request, or None when it carries no credentials at all."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorised("the Authorization header must be 'Bearer <token>'",
                                "invalid_request")
        if len(token) > 8192:
            raise _unauthorised("the bearer token is too long", "invalid_token")
        with token_session(platform) as session:
            if is_jwt(token):
                external = getattr(request.app.state, "oidc_provider", None)  # security.oidc
                try:
                    principal: Principal | None = external.resolve(session, token) \
                        if external is not None and external.issued(token) \
                        else resolve_access_token(session, token, issuer=issuer_url(request))
                except TokenRejected as exc:
                    raise _unauthorised(str(exc), "invalid_token") from None
            else:
                principal = resolve_token(session, token, kind="bearer")
        if principal is None:
            raise _unauthorised("the bearer token is invalid, expired or revoked",
                                "invalid_token")
        return _break_glass(request, principal)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with token_session(platform) as session:
        principal = resolve_token(session, cookie, kind="session")
    if principal is None:
        return None
    if request.method not in _SAFE_METHODS:
        # A cookie is sent by the browser on its own; demand proof the page made this request.
        sent = request.headers.get(CSRF_HEADER) or form_csrf or ""
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return _break_glass(request, principal)


async def current_principal(
        principal: Annotated[Principal | None, Depends(authenticate_request)]) -> Principal:
    # async: no I/O here, so FastAPI need not hop to a worker thread to run it
    if principal is None:
        raise _unauthorised("authentication required")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals holding one of ``roles``."""

    async def check(principal: PrincipalDep) -> Principal:
        if not principal.has(*roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"requires one of the roles: {', '.join(roles)}")
        return principal

    return check
