"""The genomics pages: runs with live progress, a run's QC report, samples, variant browser.

Pages render what the genomics service returns, after the same access decision (and audit
record) as the API. Live progress comes from the job events: the runs table re-renders when the
server-sent event stream announces a job change (see ``static/careplane.js``).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.genomics import service
from careplane.genomics.schemas import FileOut, RunOut
from careplane.genomics.svg import bar_chart
from careplane.genomics.variants import VariantQuery, VariantStore
from careplane.ops.schemas import JobLogOut
from careplane.platform import jobs
from careplane.security import Principal
from careplane.security.deps import authenticate_request
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target
from careplane.web.routes import render

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
MaybePrincipal = Annotated[Principal | None, Depends(authenticate_request)]


def _login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status.HTTP_303_SEE_OTHER)


def _allowed(session: Session, principal: Principal, action: Action, kind: str, *,
             id: str | None = None, patient_id: str | None = None) -> str | None:
    """None when allowed (and audited), else the refusal to show."""
    try:
        authorize(session, principal, action, Target(kind=f"genomics:{kind}",
                                                     org_id=principal.org_id, id=id,
                                                     patient_id=patient_id))
    except HTTPException as exc:
        return str(exc.detail)
    return None


def _runs(session: Session, principal: Principal, sample_id: str | None = None
          ) -> list[RunOut]:
    return [RunOut.of(v) for v in service.list_runs(session, org_id=principal.org_id,
                                                    sample_id=sample_id, limit=100)]


@router.get("/genomics", response_class=HTMLResponse)
def genomics_home(request: Request, platform: PlatformDep, principal: MaybePrincipal
                  ) -> Response:
    if principal is None:
        return _login(request)
    with platform.session() as session:
        refused = _allowed(session, principal, Action.search, "run")
        if refused:
            return render(request, "error.html", principal, 403, message=refused)
        runs = _runs(session, principal)
        samples = list(service.list_samples(session, org_id=principal.org_id))
        references = list(service.list_references(session, org_id=principal.org_id))
    return render(request, "genomics/home.html", principal, runs=runs, samples=samples,
                  references=references, active="genomics")


@router.get("/genomics/_runs", response_class=HTMLResponse)
def runs_table(request: Request, platform: PlatformDep, principal: MaybePrincipal,
               sample_id: str | None = None) -> Response:
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "authentication required")
    with platform.session() as session:
        refused = _allowed(session, principal, Action.search, "run")
        if refused:
            raise HTTPException(status.HTTP_403_FORBIDDEN, refused)
        runs = _runs(session, principal, sample_id)
    return render(request, "genomics/_runs.html", principal, runs=runs)


def _qc_view(qc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not qc:
        return None
    alignment = qc.get("alignment", {})
    coverage = alignment.get("coverage", {})
    insert = alignment.get("insert_size", {})
    cov_hist = [(d, n) for d, n in coverage.get("histogram", []) if d <= 200]
    return {
        "coverage_chart": bar_chart(cov_hist, title="Coverage histogram",
                                    x_label="depth", y_label="bases",
                                    mark=coverage.get("mean")),
        "insert_chart": bar_chart([(s, n) for s, n in insert.get("histogram", []) if s <= 2000],
                                  title="Insert size", x_label="insert size (bp)",
                                  y_label="pairs", mark=insert.get("mean")),
        "alignment": alignment, "coverage": coverage, "insert": insert,
        "variants": qc.get("variants", {}), "reference": qc.get("reference", {}),
        "read_pairs": qc.get("read_pairs"), "min_qual": qc.get("min_qual"),
    }


@router.get("/genomics/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, request: Request, platform: PlatformDep,
             principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login(request)
    with platform.session() as session:
        try:
            view = service.run_view(session, service.get_run(session, run_id,
                                                             org_id=principal.org_id))
        except service.NotFound:
            return render(request, "error.html", principal, 404, message="No such run.")
        refused = _allowed(session, principal, Action.read, "run", id=view.run.id,
                           patient_id=view.sample.patient_id)
        if refused:
            return render(request, "error.html", principal, 403, message=refused)
        run = RunOut.of(view, with_qc=True)
        files = [FileOut.of(f) for f in service.list_files(session, org_id=principal.org_id,
                                                           run_id=view.run.id)]
        logs = [JobLogOut.of(r) for r in jobs.job_logs(session, view.job.id)]
    return render(request, "genomics/run.html", principal, run=run, files=files, logs=logs,
                  qc=_qc_view(run.qc), active="genomics")


@router.get("/genomics/samples/{sample_id}", response_class=HTMLResponse)
def sample_page(sample_id: str, request: Request, platform: PlatformDep,
                principal: MaybePrincipal) -> Response:
    if principal is None:
        return _login(request)
    with platform.session() as session:
        try:
            sample = service.get_sample(session, sample_id, org_id=principal.org_id)
        except service.NotFound:
            return render(request, "error.html", principal, 404, message="No such sample.")
        refused = _allowed(session, principal, Action.read, "sample", id=sample.id,
                           patient_id=sample.patient_id)
        if refused:
            return render(request, "error.html", principal, 403, message=refused)
        runs = _runs(session, principal, sample.id)
        files = [FileOut.of(f) for f in service.list_files(session, org_id=principal.org_id,
                                                           sample_id=sample.id)]
    summary = VariantStore(platform.settings.data_dir).summary(principal.org_id, [sample.id])
    return render(request, "genomics/sample.html", principal, sample=sample, runs=runs,
                  files=files, summary=summary[0] if summary else None, active="genomics")


@router.get("/genomics/variants", response_class=HTMLResponse)
def variant_browser(
    request: Request, platform: PlatformDep, principal: MaybePrincipal,
    chrom: Annotated[str | None, Query(max_length=200)] = None,
    start: Annotated[str | None, Query(max_length=12)] = None,
    end: Annotated[str | None, Query(max_length=12)] = None,
    gene: Annotated[str | None, Query(max_length=100)] = None,
    sample_id: Annotated[str | None, Query(max_length=32)] = None,
    genotype: Annotated[str | None, Query(max_length=3)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    if principal is None:
        return _login(request)
    per_page = 50
    problem = None

    def number(text: str | None, name: str) -> int | None:
        nonlocal problem
        if not text:
            return None
        try:
            value = int(text.replace(",", ""))
        except ValueError:
            problem = f"{name} must be a whole number"
            return None
        if value < 1:
            problem = f"{name} must be 1 or more"
        return value

    first, last = number(start, "start"), number(end, "end")
    if first is not None and last is not None and last < first:
        problem = "end is before start"
    zygosity = genotype if genotype in ("het", "hom") else None
    with platform.session() as session:
        refused = _allowed(session, principal, Action.search, "variant")
        if refused:
            return render(request, "error.html", principal, 403, message=refused)
        samples = list(service.list_samples(session, org_id=principal.org_id))
    result: dict[str, Any] = {"total": 0, "variants": [], "samples_in_cohort": 0}
    if problem is None:
        result = VariantStore(platform.settings.data_dir).query(
            principal.org_id, VariantQuery(chrom=chrom or None, start=first, end=last,
                                           gene=gene or None, sample_id=sample_id or None,
                                           zygosity=zygosity, limit=per_page,
                                           offset=(page - 1) * per_page))
    params = {k: v for k, v in {"chrom": chrom, "start": start, "end": end, "gene": gene,
                                "sample_id": sample_id, "genotype": genotype}.items() if v}
    pages = max(1, -(-int(result["total"]) // per_page))
    return render(request, "genomics/variants.html", principal, result=result,
                  samples=samples, form=params, problem=problem, page=page, pages=pages,
                  prev_url=f"?{urlencode({**params, 'page': page - 1})}" if page > 1 else None,
                  next_url=(f"?{urlencode({**params, 'page': page + 1})}"
                            if page < pages else None), active="genomics")
