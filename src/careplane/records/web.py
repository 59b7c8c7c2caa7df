"""The records pages: the patient list (/patients) and the patient chart (/patients/{id}).

The pages render what ``careplane.records.chart`` returns; the only work done here is the
drawing of each series as an SVG line, which is presentation. The chart's vital signs refresh
by themselves when a change to this patient's records is announced on the event stream
(``static/records.js``), so a blood pressure recorded on another device appears without a
reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from careplane.deps import PlatformDep
from careplane.records.chart import Chart, Series, patient_chart, patient_list
from careplane.records.errors import FhirError
from careplane.security import Principal
from careplane.security.deps import authenticate_request
from careplane.web.routes import render

__all__ = ["Plot", "plot", "router"]

router = APIRouter(include_in_schema=False)
MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]
WIDTH, HEIGHT, PAD = 320, 90, 6


@dataclass(frozen=True)
class Plot:
    """A series drawn as an SVG polyline (in a WIDTH x HEIGHT box), with its range."""

    series: Series
    points: str
    low: float
    high: float
    first: str
    last: str


def plot(series: Series) -> Plot:
    values = [p.value for p in series.points]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    n = len(values)
    coords = []
    for i, v in enumerate(values):
        x = PAD + (WIDTH - 2 * PAD) * (i / (n - 1) if n > 1 else 0.5)
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * ((v - low) / span)
        coords.append(f"{x:.1f},{y:.1f}")
    return Plot(series, " ".join(coords), low, high, series.points[0].when[:10],
                series.points[-1].when[:10])


def _login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)


@router.get("/patients", response_class=HTMLResponse)
def patients_page(request: Request, platform: PlatformDep, principal: MaybePrincipal,
                  q: str = "", cursor: str | None = None) -> Response:
    if principal is None:
        return _login(request)
    try:
        with platform.session() as session:
            rows, total, next_cursor = patient_list(session, principal, q[:100],
                                                    cursor=cursor)
    except FhirError as exc:
        return render(request, "error.html", principal, exc.status, message=str(exc))
    return render(request, "records/patients.html", principal, rows=rows, total=total,
                  q=q, next_cursor=next_cursor, active="patients")


def _chart(request: Request, platform: PlatformDep, principal: Principal, pid: str
           ) -> Chart | Response:
    try:
        with platform.session() as session:
            return patient_chart(session, principal, pid[:64])
    except FhirError as exc:
        return render(request, "error.html", principal, exc.status, message=str(exc))


@router.get("/patients/{pid}", response_class=HTMLResponse)
def chart_page(pid: str, request: Request, platform: PlatformDep, principal: MaybePrincipal
               ) -> Response:
    if principal is None:
        return _login(request)
    chart = _chart(request, platform, principal, pid)
    if isinstance(chart, Response):
        return chart
    return render(request, "records/chart.html", principal, chart=chart,
                  vitals=[plot(s) for s in chart.vitals], labs=[plot(s) for s in chart.labs],
                  width=WIDTH, height=HEIGHT, active="patients")


@router.get("/patients/{pid}/observations", response_class=HTMLResponse)
def observations_fragment(pid: str, request: Request, platform: PlatformDep,
                          principal: MaybePrincipal) -> Response:
    """The vital signs and labs panel alone, for the live refresh."""
    if principal is None:
        return Response(status_code=401)
    chart = _chart(request, platform, principal, pid)
    if isinstance(chart, Response):
        return chart
    return render(request, "records/_observations.html", principal, chart=chart,
                  vitals=[plot(s) for s in chart.vitals], labs=[plot(s) for s in chart.labs],
                  width=WIDTH, height=HEIGHT)
