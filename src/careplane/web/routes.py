from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from careplane._version import __version__
from careplane.deps import PlatformDep
from careplane.ops.schemas import JobLogOut, JobOut
from careplane.platform import jobs
from careplane.security import Principal
from careplane.security.deps import CSRF_COOKIE, SESSION_COOKIE, authenticate_request
from careplane.security.guard import authorize
from careplane.security.identity import check_login, issue_token, resolve_token, revoke_token
from careplane.security.policy import Action, Target, decide
from careplane.web.nav import items_for

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.globals["version"] = __version__

MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]


def _csrf(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)


def render(request: Request, name: str, principal: Principal | None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    token = _csrf(request)
    response = templates.TemplateResponse(
        request, name, {"principal": principal, "csrf": token,
                        "nav": items_for(principal) if principal else [], **context},
        status_code=status_code)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict",
                            secure=request.url.scheme == "https")
    return response


def _login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status.HTTP_303_SEE_OTHER)


def _same_token(sent: str, expected: str) -> bool:
    """Constant-time comparison that also copes with non-ASCII input (a forged form)."""
    return bool(expected) and secrets.compare_digest(sent.encode(), expected.encode())


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _jobs_seen_by(session: Session, principal: Principal, *, limit: int = 100,
                  quiet: bool = False) -> list[JobOut]:
    """The organisation's jobs, through the access policy; ``quiet`` (the dashboard summary)
    shows nothing instead of refusing when the policy says no."""
    target = Target(kind="jobs:job", org_id=principal.org_id)
    if quiet and not decide(principal, Action.search, target).allowed:
        return []
    authorize(session, principal, Action.search, target)
    return [JobOut.of(j) for j in jobs.list_jobs(session, org_id=principal.org_id, limit=limit)]


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, principal: MaybePrincipal, next: str = "/") -> Response:
    if principal:
        return RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    return render(request, "login.html", None, next=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, platform: PlatformDep,
          username: Annotated[str, Form(max_length=150)],
          password: Annotated[str, Form(max_length=1000)],
          csrf: Annotated[str, Form()], next: Annotated[str, Form()] = "/",
          otp: Annotated[str | None, Form(max_length=10)] = None) -> Response:
    if not _same_token(csrf, request.cookies.get(CSRF_COOKIE, "")):
        return render(request, "login.html", None, 403, next=_safe_next(next),
                      error="Your session form expired; please try again.")
    with platform.session() as session:
        result = check_login(session, username, password, totp=(otp or "").strip() or None,
                             secret_key=platform.settings.secret_key)
        session.commit()
        if result.needs_code:
            return render(request, "login.html", None, 401, next=_safe_next(next),
                          username=username, ask_code=True,
                          error="Enter the 6-digit code from your authenticator app.")
        user = result.user
        if user is None:
            return render(request, "login.html", None, 401, next=_safe_next(next),
                          username=username, ask_code=bool(otp),
                          error="Wrong username, password or code.")
        issued = issue_token(session, user, kind="session", name="web",
                             lifetime=timedelta(hours=platform.settings.session_hours))
    response = RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, issued.token, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https",
                        max_age=int(platform.settings.session_hours * 3600))
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request, platform: PlatformDep,
           csrf: Annotated[str, Form()] = "") -> Response:
    """Sign out: the session token is revoked on the server, not only forgotten by the browser."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        if not _same_token(csrf, request.cookies.get(CSRF_COOKIE, "")):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        with platform.session() as session:
            principal = resolve_token(session, cookie, kind="session")
            if principal is not None:
                revoke_token(session, principal.token_id)
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, platform: PlatformDep, principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login_redirect(request)
    with platform.session() as session:
        recent = _jobs_seen_by(session, principal, limit=5, quiet=True)
    return render(request, "dashboard.html", principal, recent=recent, active="dashboard")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, platform: PlatformDep, principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login_redirect(request)
    with platform.session() as session:
        rows = _jobs_seen_by(session, principal)
        counts = jobs.job_counts(session, org_id=principal.org_id)
    return render(request, "jobs.html", principal, jobs=rows, counts=counts, active="jobs")


@router.get("/jobs/_table", response_class=HTMLResponse)
def jobs_table(request: Request, platform: PlatformDep, principal: MaybePrincipal) -> Response:
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "authentication required")
    with platform.session() as session:
        rows = _jobs_seen_by(session, principal)
        counts = jobs.job_counts(session, org_id=principal.org_id)
    return render(request, "_jobs_table.html", principal, jobs=rows, counts=counts)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, platform: PlatformDep,
             principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login_redirect(request)
    with platform.session() as session:
        try:
            job = jobs.get_job(session, job_id, org_id=principal.org_id)
        except jobs.JobNotFound:
            return render(request, "error.html", principal, 404, message="No such job.")
        authorize(session, principal, Action.read,
                  Target(kind="jobs:job", org_id=job.org_id, id=job.id))
        logs = [JobLogOut.of(r) for r in jobs.job_logs(session, job.id)]
        out = JobOut.of(job)
    return render(request, "job.html", principal, job=out, logs=logs, active="jobs")
