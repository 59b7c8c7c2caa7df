"""``/api/genomics``: upload files, register samples and references, run and follow pipelines.

Uploads are the request body itself (``application/octet-stream``), streamed into the blob
store chunk by chunk, so a 50 GB FASTQ never sits in memory or in a temporary copy; the
SHA-256 the client announces (``X-Checksum-Sha256``) is checked against what arrived.
Every handler asks ``security.guard.authorize`` before it touches data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response

from careplane.deps import PlatformDep, SessionDep
from careplane.genomics import service
from careplane.genomics.ranges import ranged_response
from careplane.genomics.schemas import (
    FileOut,
    ReferenceIn,
    ReferenceOut,
    RunIn,
    RunOut,
    SampleIn,
    SampleOut,
    UploadIn,
)
from careplane.genomics.variants import GeneError, VariantQuery, VariantStore
from careplane.ops.schemas import JobLogOut
from careplane.platform import jobs
from careplane.platform.blobs import BlobTooLarge
from careplane.security import Principal
from careplane.security.deps import PrincipalDep
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

router = APIRouter(prefix="/api/genomics", tags=["genomics"])

_MEDIA = {"bam": "application/vnd.bam", "bai": "application/octet-stream",
          "vcf": "application/gzip", "tbi": "application/octet-stream",
          "qc": "application/json", "fastq": "application/octet-stream",
          "fasta": "text/plain", "bed": "text/plain"}


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc.args[0] if exc.args else exc))


def _bad(exc: service.GenomicsError) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


def _target(kind: str, principal: Principal, *, org_id: str | None = None,
            id: str | None = None, patient_id: str | None = None) -> Target:
    return Target(kind=f"genomics:{kind}", org_id=org_id or principal.org_id, id=id,
                  patient_id=patient_id)


# -- files ----------------------------------------------------------------------------------

def _body_chunks(request: Request) -> Callable[[], Iterator[bytes]]:
    """The request body as a plain iterator, for the blob store running in a worker thread."""
    body = request.stream()

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(body.__anext__)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    return chunks


@router.post("/files", status_code=status.HTTP_201_CREATED, response_model=FileOut)
async def upload_file(
    request: Request, platform: PlatformDep, principal: PrincipalDep,
    filename: Annotated[str, Query(min_length=1, max_length=300)],
    kind: Annotated[str | None, Query(description="fastq, fasta or bed (default: sniffed)")]
    = None,
    sample_id: Annotated[str | None, Query()] = None,
    checksum: Annotated[str | None, Header(alias="X-Checksum-Sha256",
                                           pattern="^[0-9a-fA-F]{64}$")] = None,
) -> FileOut:
    """Stream the request body into the blob store and register it as a file."""
    chunks = _body_chunks(request)

    def store() -> FileOut:
        with platform.session() as session:
            patient_id = None
            if sample_id is not None:
                try:
                    patient_id = service.get_sample(session, sample_id,
                                                    org_id=principal.org_id).patient_id
                except service.NotFound as exc:
                    raise _not_found(exc) from None
            authorize(session, principal, Action.create, _target("file", principal,
                                                                 patient_id=patient_id),
                      detail={"filename": filename})
            record = service.store_upload(
                session, platform.blobs, chunks(), org_id=principal.org_id,
                filename=filename.rsplit("/", 1)[-1], kind=kind, sample_id=sample_id,
                expected_sha256=checksum, created_by=principal.user_id,
                max_bytes=platform.settings.max_upload_bytes)
            return FileOut.of(record)

    try:
        return await anyio.to_thread.run_sync(store)
    except service.GenomicsError as exc:
        raise _bad(exc) from None
    except BlobTooLarge as exc:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(exc)) from None


@router.get("/files", response_model=list[FileOut])
def list_files(session: SessionDep, principal: PrincipalDep,
               sample_id: str | None = None, run_id: str | None = None) -> list[FileOut]:
    authorize(session, principal, Action.search, _target("file", principal))
    return [FileOut.of(f) for f in service.list_files(session, org_id=principal.org_id,
                                                      sample_id=sample_id, run_id=run_id)]


@router.get("/files/{file_id}", response_model=FileOut)
def get_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> FileOut:
    try:
        record = service.get_file(session, file_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.read, _target("file", principal, id=record.id))
    return FileOut.of(record)


@router.get("/files/{file_id}/content")
def download_file(file_id: str, session: SessionDep, platform: PlatformDep,
                  principal: PrincipalDep,
                  range_header: Annotated[str | None, Header(alias="Range")] = None,
                  if_range: Annotated[str | None, Header(alias="If-Range")] = None) -> Response:
    """The file's bytes; ``Range`` requests get 206 partial content (one or several ranges)
    or 416, so htslib and htsget-style clients read only the blocks they need."""
    try:
        record = service.get_file(session, file_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.read, _target("file", principal, id=record.id))
    sha256, blobs = record.sha256, platform.blobs

    def read(start: int, end: int | None) -> Iterator[bytes]:
        return blobs.iter_bytes(sha256, start, end)

    return ranged_response(
        range_header, if_range, size=record.size, etag=f'"{sha256}"', read=read,
        media_type=_MEDIA.get(record.kind, "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{record.filename}"',
                 "X-Checksum-Sha256": sha256})


# -- samples --------------------------------------------------------------------------------

@router.post("/samples", status_code=status.HTTP_201_CREATED, response_model=SampleOut)
def create_sample(body: SampleIn, session: SessionDep, principal: PrincipalDep) -> SampleOut:
    authorize(session, principal, Action.create,
              _target("sample", principal, patient_id=body.patient_id))
    try:
        sample = service.create_sample(session, org_id=principal.org_id, name=body.name,
                                       patient_id=body.patient_id,
                                       description=body.description,
                                       created_by=principal.user_id)
    except service.GenomicsError as exc:
        raise _bad(exc) from None
    return SampleOut.of(sample)


@router.get("/samples", response_model=list[SampleOut])
def list_samples(session: SessionDep, principal: PrincipalDep,
                 patient_id: str | None = None) -> list[SampleOut]:
    authorize(session, principal, Action.search,
              _target("sample", principal, patient_id=patient_id))
    return [SampleOut.of(s) for s in service.list_samples(session, org_id=principal.org_id,
                                                          patient_id=patient_id)]


@router.get("/samples/{sample_id}", response_model=SampleOut)
def get_sample(sample_id: str, session: SessionDep, principal: PrincipalDep) -> SampleOut:
    try:
        sample = service.get_sample(session, sample_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.read,
              _target("sample", principal, id=sample.id, patient_id=sample.patient_id))
    return SampleOut.of(sample)


# -- references -----------------------------------------------------------------------------

@router.post("/references", status_code=status.HTTP_201_CREATED, response_model=ReferenceOut,
             responses={202: {"model": ReferenceOut,
                              "description": "a large FASTA: registered, checked by a job"}})
def create_reference(body: ReferenceIn, session: SessionDep, platform: PlatformDep,
                     principal: PrincipalDep, response: Response) -> ReferenceOut:
    """Register an uploaded FASTA: checked at once (201), or, when large, by a job (202,
    ``status: checking``; follow it at ``GET /references/{id}``)."""
    authorize(session, principal, Action.create, _target("reference", principal))
    try:
        reference = service.create_reference(session, platform.blobs,
                                             org_id=principal.org_id, name=body.name,
                                             file_id=body.file_id,
                                             description=body.description,
                                             created_by=principal.user_id,
                                             data_dir=platform.settings.data_dir)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    except service.GenomicsError as exc:
        raise _bad(exc) from None
    if reference.status == "checking":
        response.status_code = status.HTTP_202_ACCEPTED
    return ReferenceOut.of(reference)


@router.get("/references", response_model=list[ReferenceOut])
def list_references(session: SessionDep, principal: PrincipalDep) -> list[ReferenceOut]:
    authorize(session, principal, Action.search, _target("reference", principal))
    return [ReferenceOut.of(r) for r in service.list_references(session,
                                                                org_id=principal.org_id)]


@router.get("/references/{reference_id}", response_model=ReferenceOut)
def get_reference(reference_id: str, session: SessionDep,
                  principal: PrincipalDep) -> ReferenceOut:
    try:
        reference = service.get_reference(session, reference_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.read, _target("reference", principal,
                                                       id=reference.id))
    return ReferenceOut.of(reference)


# -- runs -----------------------------------------------------------------------------------

def _run(session: SessionDep, run_id: str, principal: Principal,
         action: Action = Action.read) -> service.RunView:
    try:
        view = service.run_view(session, service.get_run(session, run_id,
                                                         org_id=principal.org_id))
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, action, _target("run", principal, id=view.run.id,
                                                  patient_id=view.sample.patient_id))
    return view


@router.post("/runs", status_code=status.HTTP_202_ACCEPTED, response_model=RunOut)
def submit_run(body: RunIn, session: SessionDep, platform: PlatformDep,
               principal: PrincipalDep) -> RunOut:
    try:
        sample = service.get_sample(session, body.sample_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.execute,
              _target("run", principal, patient_id=sample.patient_id))
    try:
        run = service.submit_run(session, org_id=principal.org_id, sample_id=body.sample_id,
                                 reference_id=body.reference_id, fastq_ids=body.fastq,
                                 aligner=body.aligner, threads=body.threads, tags=body.tags,
                                 created_by=principal.user_id,
                                 data_dir=platform.settings.data_dir)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    except service.GenomicsError as exc:
        raise _bad(exc) from None
    return RunOut.of(service.run_view(session, run))


@router.get("/runs", response_model=list[RunOut])
def list_runs(session: SessionDep, principal: PrincipalDep,
              sample_id: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[RunOut]:
    authorize(session, principal, Action.search, _target("run", principal))
    return [RunOut.of(v) for v in service.list_runs(session, org_id=principal.org_id,
                                                    sample_id=sample_id, limit=limit)]


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: str, session: SessionDep, principal: PrincipalDep) -> RunOut:
    return RunOut.of(_run(session, run_id, principal), with_qc=True)


@router.get("/runs/{run_id}/qc")
def get_run_qc(run_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    view = _run(session, run_id, principal)
    if view.run.qc is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} has no QC yet "
                            f"(it is {view.status})")
    return view.run.qc


@router.get("/runs/{run_id}/logs", response_model=list[JobLogOut])
def get_run_logs(run_id: str, session: SessionDep, principal: PrincipalDep,
                 after: Annotated[int, Query(ge=0)] = 0) -> list[JobLogOut]:
    view = _run(session, run_id, principal)
    return [JobLogOut.of(r) for r in jobs.job_logs(session, view.job.id, after=after)]


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: str, session: SessionDep, principal: PrincipalDep) -> RunOut:
    view = _run(session, run_id, principal, Action.update)
    try:
        service.cancel_run(session, view.run)
    except service.GenomicsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return RunOut.of(service.run_view(session, view.run))


# -- variants and genes ---------------------------------------------------------------------

@router.get("/variants")
def search_variants(
    session: SessionDep, platform: PlatformDep, principal: PrincipalDep,
    chrom: str | None = None,
    start: Annotated[int | None, Query(ge=1)] = None,
    end: Annotated[int | None, Query(ge=1)] = None,
    gene: str | None = None,
    sample_id: str | None = None,
    genotype: Annotated[str | None, Query(pattern="^(het|hom)$",
                                          description="het or hom (alternate)")] = None,
    variant_class: Annotated[str | None, Query(alias="class", pattern="^(snv|indel|mnp)$")]
    = None,
    min_qual: Annotated[float | None, Query(ge=0)] = None,
    max_cohort_af: Annotated[float | None, Query(ge=0, le=1)] = None,
    include_filtered: Annotated[bool, Query(
        description="also calls the pipeline filtered out (FILTER LowQual)")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Called variants of the organisation's samples, with cohort allele counts/frequency."""
    patient_id = None
    if sample_id is not None:
        try:
            patient_id = service.get_sample(session, sample_id,
                                            org_id=principal.org_id).patient_id
        except service.NotFound as exc:
            raise _not_found(exc) from None
    authorize(session, principal, Action.search,
              _target("variant", principal, patient_id=patient_id))
    if start is not None and end is not None and end < start:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "end is before start")
    query = VariantQuery(chrom=chrom, start=start, end=end, gene=gene, sample_id=sample_id,
                         zygosity=genotype, variant_class=variant_class, min_qual=min_qual,
                         max_cohort_af=max_cohort_af, include_filtered=include_filtered,
                         limit=limit, offset=offset)
    return VariantStore(platform.settings.data_dir).query(principal.org_id, query)


@router.put("/genes", status_code=status.HTTP_200_OK)
async def load_genes(request: Request, platform: PlatformDep,
                     principal: PrincipalDep) -> dict[str, Any]:
    """Replace the organisation's gene table with a BED body (chrom, start, end, name)."""
    body = await request.body()

    def store() -> dict[str, Any]:
        with platform.session() as session:
            authorize(session, principal, Action.update, _target("gene", principal))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                "the BED file is not UTF-8 text") from None
        try:
            count = VariantStore(platform.settings.data_dir).load_genes(
                text, org_id=principal.org_id)
        except GeneError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"genes BED {exc}") from None
        return {"genes": count}

    if len(body) > 64 * 1024 * 1024:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "gene table over 64 MiB")
    return await anyio.to_thread.run_sync(store)


@router.get("/genes")
def list_genes(session: SessionDep, platform: PlatformDep, principal: PrincipalDep,
               response: Response) -> list[dict[str, Any]]:
    """The gene table of ``gene=`` queries: the organisation's own, or else the shipped one
    (header ``Gene-Table: organisation`` or ``default``)."""
    authorize(session, principal, Action.search, _target("gene", principal))
    store = VariantStore(platform.settings.data_dir)
    response.headers["Gene-Table"] = store.gene_table(principal.org_id)
    return store.genes(principal.org_id)


@router.delete("/genes", status_code=status.HTTP_204_NO_CONTENT)
def reset_genes(session: SessionDep, platform: PlatformDep, principal: PrincipalDep) -> None:
    """Drop the organisation's own gene table: gene queries use the shipped one again."""
    authorize(session, principal, Action.update, _target("gene", principal))
    VariantStore(platform.settings.data_dir).reset_genes(principal.org_id)


# -- resumable uploads ----------------------------------------------------------------------

def _upload_out(upload: Any) -> dict[str, Any]:
    return {"id": upload.id, "filename": upload.filename, "size": upload.size,
            "offset": upload.received, "complete": upload.file_id is not None,
            "file_id": upload.file_id}


@router.post("/uploads", status_code=status.HTTP_201_CREATED)
def create_upload(body: UploadIn, session: SessionDep, principal: PrincipalDep,
                  platform: PlatformDep) -> Response:
    """Open a resumable upload; send its bytes with PATCH and ``Upload-Offset``."""
    patient_id = None
    if body.sample_id is not None:
        try:
            patient_id = service.get_sample(session, body.sample_id,
                                            org_id=principal.org_id).patient_id
        except service.NotFound as exc:
            raise _not_found(exc) from None
    authorize(session, principal, Action.create, _target("file", principal,
                                                         patient_id=patient_id),
              detail={"filename": body.filename, "resumable": True})
    if body.size > platform.settings.max_upload_bytes:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"uploads are limited to {platform.settings.max_upload_bytes} bytes")
    try:
        upload = service.create_upload(session, org_id=principal.org_id,
                                       filename=body.filename.rsplit("/", 1)[-1],
                                       size=body.size, kind=body.kind,
                                       sample_id=body.sample_id, sha256=body.sha256,
                                       created_by=principal.user_id)
    except service.GenomicsError as exc:
        raise _bad(exc) from None
    return JSONResponse(_upload_out(upload), status.HTTP_201_CREATED, headers={
        "Location": f"/api/genomics/uploads/{upload.id}", "Upload-Offset": "0",
        "Upload-Length": str(upload.size)})


@router.head("/uploads/{upload_id}")
@router.get("/uploads/{upload_id}")
def upload_status(upload_id: str, session: SessionDep, principal: PrincipalDep) -> Response:
    """Where an upload stands (``Upload-Offset``): the byte to resume from."""
    try:
        upload = service.get_upload(session, upload_id, org_id=principal.org_id)
    except service.NotFound as exc:
        raise _not_found(exc) from None
    authorize(session, principal, Action.read, _target("file", principal, id=upload.id))
    return JSONResponse(_upload_out(upload), headers={
        "Upload-Offset": str(upload.received), "Upload-Length": str(upload.size)})


@router.patch("/uploads/{upload_id}")
async def upload_chunk(
    upload_id: str, request: Request, platform: PlatformDep, principal: PrincipalDep,
    offset: Annotated[int, Header(alias="Upload-Offset", ge=0)],
) -> Response:
    """Append the body at ``Upload-Offset``; the last chunk turns the upload into a file."""
    chunks = _body_chunks(request)

    def store() -> Response:
        with platform.session() as session:
            try:
                upload = service.get_upload(session, upload_id, org_id=principal.org_id,
                                            for_update=True)
            except service.NotFound as exc:
                raise _not_found(exc) from None
            authorize(session, principal, Action.update, _target("file", principal,
                                                                 id=upload.id))
            try:
                record = service.append(
                    session, platform.blobs,
                    platform.settings.data_dir / "genomics" / "uploads", upload, offset,
                    chunks(), max_bytes=platform.settings.max_upload_bytes)
            except service.OffsetMismatch as exc:
                return JSONResponse(
                    {"error": {"status": 409, "message": str(exc)}, "offset": exc.expected},
                    status.HTTP_409_CONFLICT, headers={"Upload-Offset": str(exc.expected)})
            out = _upload_out(upload)
            if record is not None:
                out["file"] = FileOut.of(record).model_dump(mode="json")
            return JSONResponse(out, headers={"Upload-Offset": str(upload.received)})

    try:
        return await anyio.to_thread.run_sync(store)
    except service.GenomicsError as exc:
        raise _bad(exc) from None
