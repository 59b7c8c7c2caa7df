"""Authentication on every protected route: a bearer token (API) or a session cookie (web)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from careplane.deps import PlatformDep
from careplane.security._principal import Principal, Role
from careplane.security.identity import resolve_token

SESSION_COOKIE = "careplane_session"
CSRF_COOKIE = "careplane_csrf"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message,
                         headers={"WWW-Authenticate": 'Bearer realm="careplane"'})


def authenticate_request(request: Request, platform: PlatformDep) -> Principal | None:
    """The principal of this request, or None when it carries no credentials at all."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorised("the Authorization header must be 'Bearer <token>'")
        with platform.session() as session:
            principal = resolve_token(session, token.strip(), kind="bearer")
        if principal is None:
            raise _unauthorised("the bearer token is invalid, expired or revoked")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with platform.session() as session:
        principal = resolve_token(session, cookie, kind="session")
    if principal is None:
        return None
    if request.method not in _SAFE_METHODS:
        # A cookie is sent by the browser on its own; demand proof the page made this request.
        sent = request.headers.get(CSRF_HEADER, "")
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(sent, expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return principal


def current_principal(
        principal: Annotated[Principal | None, Depends(authenticate_request)]) -> Principal:
    if principal is None:
        raise _unauthorised("authentication required")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that admits only principals holding one of ``roles``."""

    def check(principal: PrincipalDep) -> Principal:
        if not principal.has(*roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"requires one of the roles: {', '.join(roles)}")
        return principal

    return check
