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
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.platform.context import Platform
from careplane.security._principal import Principal, Role
from careplane.security.access_tokens import (
    TokenRejected,
    access_token_id,
    is_jwt,
    resolve_access_token,
)
from careplane.security.identity import hash_token, resolve_token
from careplane.security.issuer import issuer_url

__all__ = ["BREAK_GLASS_HEADER", "CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "Credentials",
           "CredentialsDep", "PrincipalDep", "authenticate_request", "current_principal",
           "principal_of", "read_credentials", "require_roles", "resolve", "token_key",
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


def _break_glass(header: str, principal: Principal) -> Principal:
    reason = header.strip()
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
    last-use time. The statements run in autocommit (:meth:`Database.read_session`), so
    authentication costs no BEGIN or COMMIT round trips on PostgreSQL and takes no write lock
    on SQLite (the occasional last-use update is a transaction of its own)."""
    with platform.db.read_session() as session:
        yield session


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a request presents, read without I/O: a bearer token or a session cookie.

    :func:`resolve` turns it into a :class:`Principal` (database work). Handlers on the hot
    path take :data:`CredentialsDep` and call :func:`principal_of` inside their own worker
    thread, so authentication costs them no thread-pool hop of its own; everything else
    takes :data:`PrincipalDep`, which resolves in a dependency. Both decide the same way.
    """

    kind: str  # "bearer" or "session"
    token: str
    issuer: str
    external: Any  # security.oidc's provider, when one is trusted
    break_glass: str
    # session cookies on unsafe methods only: whether the CSRF proof matched
    csrf_ok: bool = True


async def read_credentials(request: Request,
                           form_csrf: Annotated[str | None, Depends(_form_csrf)] = None
                           ) -> Credentials | None:
    """The request's credentials (401 for a malformed Authorization header), or None."""
    header = request.headers.get("authorization")
    reason = request.headers.get(BREAK_GLASS_HEADER, "")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorised("the Authorization header must be 'Bearer <token>'",
                                "invalid_request")
        if len(token) > 8192:
            raise _unauthorised("the bearer token is too long", "invalid_token")
        if not is_jwt(token):  # an opaque careplane token: no issuer to compare
            return Credentials("bearer", token, "", None, reason)
        external = getattr(request.app.state, "oidc_provider", None)  # security.oidc
        return Credentials("bearer", token, issuer_url(request), external, reason)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    csrf_ok = True
    if request.method not in _SAFE_METHODS:
        # A cookie is sent by the browser on its own; demand proof the page made this request.
        sent = request.headers.get(CSRF_HEADER) or form_csrf or ""
        expected = request.cookies.get(CSRF_COOKIE, "")
        csrf_ok = bool(expected) and hmac.compare_digest(sent.encode(), expected.encode())
    return Credentials("session", cookie, "", None, reason, csrf_ok)


def _lookup(session: Session, credentials: Credentials) -> Principal | None:
    token = credentials.token
    if credentials.kind == "session":
        return resolve_token(session, token, kind="session")
    if not is_jwt(token):
        return resolve_token(session, token, kind="bearer")
    external = credentials.external
    try:
        principal: Principal | None = external.resolve(session, token) \
            if external is not None and external.issued(token) \
            else resolve_access_token(session, token, issuer=credentials.issuer)
    except TokenRejected as exc:
        raise _unauthorised(str(exc), "invalid_token") from None
    return principal


def token_key(credentials: Credentials | None, session: Session
              ) -> tuple[Literal["hash", "id"], str] | None:
    """How :func:`resolve` will look up the token row of ``credentials``, for a caller that
    reads it ahead together with rows of its own (:func:`identity.token_query`): by hash for
    an opaque token or a session cookie, by ``jti`` for a careplane JWT whose signature
    verifies; None when there is no row to read (no credentials, an external provider's
    token, a JWT that will be refused anyway)."""
    if credentials is None:
        return None
    token = credentials.token
    if credentials.kind == "session" or not is_jwt(token):
        return "hash", hash_token(token)
    external = credentials.external
    if external is not None and external.issued(token):
        return None
    jti = access_token_id(session, token, issuer=credentials.issuer)
    return None if jti is None else ("id", jti)


def resolve(platform: Platform, credentials: Credentials | None, *,
            session: Session | None = None) -> Principal | None:
    """The principal behind ``credentials`` (one indexed query), or None when there are none
    or a session cookie is unknown; 401 for a refused bearer token, 403 for a cookie
    without its CSRF proof, 400 for a malformed break-glass reason.

    ``session``: a read session (:meth:`Database.read_session`) the caller has open already,
    so that the lookup shares its connection; by default one of its own.
    """
    if credentials is None:
        return None
    if session is None:
        with token_session(platform) as own:
            principal = _lookup(own, credentials)
    else:
        principal = _lookup(session, credentials)
    if principal is None:
        if credentials.kind == "session":
            return None
        raise _unauthorised("the bearer token is invalid, expired or revoked",
                            "invalid_token")
    if not credentials.csrf_ok:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    return _break_glass(credentials.break_glass, principal)


def principal_of(platform: Platform, credentials: Credentials | None, *,
                 session: Session | None = None) -> Principal:
    """:func:`resolve`, and 401 when the request is not authenticated at all."""
    principal = resolve(platform, credentials, session=session)
    if principal is None:
        raise _unauthorised("authentication required")
    return principal


CredentialsDep = Annotated[Credentials | None, Depends(read_credentials)]


def authenticate_request(platform: PlatformDep, credentials: CredentialsDep
                         ) -> Principal | None:
    """The principal of this request, or None when it carries no credentials at all."""
    return resolve(platform, credentials)


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
