"""The imaging pages: study lists per patient (/imaging) and the viewer (/imaging/studies/…)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from careplane.deps import PlatformDep
from careplane.imaging.browse import StudySummary, study_list, study_view
from careplane.imaging.wado import NotFound
from careplane.security import Principal
from careplane.security.deps import authenticate_request
from careplane.web.routes import render

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]


@dataclass
class PatientGroup:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    studies: list[StudySummary] = field(default_factory=list)


def _login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status.HTTP_303_SEE_OTHER)


@router.get("/imaging", response_class=HTMLResponse)
def studies_page(request: Request, platform: PlatformDep, principal: MaybePrincipal,
                 patient: str | None = None) -> Response:
    if principal is None:
        return _login(request)
    with platform.session() as session:
        studies = study_list(session, principal, patient=(patient or "")[:64] or None)
    groups: dict[tuple[str, str], PatientGroup] = {}
    for study in studies:
        key = (study.patient_id, study.patient_name)
        if key not in groups:
            groups[key] = PatientGroup(study.patient_id, study.patient_name, study.birth_date,
                                       study.sex)
        groups[key].studies.append(study)
    return render(request, "imaging/studies.html", principal, groups=list(groups.values()),
                  patient=patient, active="imaging")


@router.get("/imaging/studies/{study_uid}", response_class=HTMLResponse)
def viewer_page(study_uid: str, request: Request, platform: PlatformDep,
                principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login(request)
    try:
        with platform.session() as session:
            view = study_view(session, principal, study_uid[:64])
    except NotFound:
        return render(request, "error.html", principal, 404, message="No such study.")
    except HTTPException as exc:
        if exc.status_code != status.HTTP_403_FORBIDDEN:
            raise
        return render(request, "error.html", principal, 403, message=str(exc.detail))
    return render(request, "imaging/viewer.html", principal, view=view, active="imaging")
