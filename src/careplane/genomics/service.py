"""Registry operations: store uploads, describe samples and references, submit and follow runs.

Why it exists: routes, the WES API, the CLI and the job tasks all need the same rules (a file
belongs to one organisation; a run's inputs must be FASTQ of the caller's organisation; a
reference is validated once on registration), so they live here, as functions over a session,
and the callers stay thin. Nothing here decides access: callers ask ``security.guard`` first.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.genomics.align import ALIGNERS
from careplane.genomics.models import (
    FileKind,
    GenomicsFile,
    GenomicsReference,
    GenomicsRun,
    GenomicsSample,
    GenomicsUpload,
)
from careplane.genomics.reference import ReferenceError, validate_fasta
from careplane.platform import jobs
from careplane.platform.blobs import CHUNK, BlobStore
from careplane.platform.db import utcnow
from careplane.platform.events import publish
from careplane.platform.jobs import Job, JobStatus

__all__ = [
    "GenomicsError",
    "NotFound",
    "OffsetMismatch",
    "RunView",
    "append",
    "blob_file",
    "cancel_run",
    "create_reference",
    "create_sample",
    "create_upload",
    "get_file",
    "get_reference",
    "get_run",
    "get_sample",
    "get_upload",
    "list_files",
    "list_references",
    "list_runs",
    "list_samples",
    "plain_copy",
    "run_view",
    "store_upload",
    "submit_run",
]

RUN_TASK = "careplane.genomics.tasks:run"
CHECK_REFERENCE_TASK = "careplane.genomics.tasks:check_reference"
INLINE_CHECK_BYTES = 16 * 1024 * 1024  # larger FASTA files are checked by a job


class GenomicsError(ValueError):
    """The request cannot be honoured as asked (a 4xx); the message says why."""


class NotFound(LookupError):
    pass


# -- files -------------------------------------------------------------------------------------

def _peek(head: bytes) -> tuple[bytes, bool]:
    """The first decompressed bytes of an upload, and whether it was gzip."""
    if head[:2] == b"\x1f\x8b":
        try:
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return decomp.decompress(head, 4096), True
        except zlib.error as exc:
            raise GenomicsError(f"the file starts like gzip but cannot be decompressed: {exc}"
                                ) from exc
    return head[:4096], False


def _sniff(filename: str, kind: str | None, text: bytes) -> str:
    first = text.lstrip()[:1]
    found = {b"@": FileKind.fastq, b">": FileKind.fasta}.get(first)
    if kind is None:
        if found is None:
            if filename.endswith((".bed", ".bed.gz")):
                return FileKind.bed
            raise GenomicsError(f"{filename}: neither FASTQ ('@') nor FASTA ('>'); name the "
                                "kind with ?kind=")
        return found
    if kind not in FileKind.uploadable:
        raise GenomicsError(f"kind {kind!r} cannot be uploaded (choose from "
                            f"{', '.join(sorted(FileKind.uploadable))})")
    if kind in (FileKind.fastq, FileKind.fasta) and found != kind:
        expected = "@" if kind == FileKind.fastq else ">"
        raise GenomicsError(f"{filename}: a {kind.upper()} file starts with {expected!r}, this "
                            f"one with {first.decode('latin-1')!r}")
    return kind


def store_upload(session: Session, blobs: BlobStore, chunks: Iterable[bytes], *, org_id: str,
                 filename: str, kind: str | None = None, sample_id: str | None = None,
                 expected_sha256: str | None = None, created_by: str | None = None,
                 max_bytes: int | None = None) -> GenomicsFile:
    """Stream an upload into the blob store and register it; checksum verified if given.

    Every check runs while the bytes stream in, and a failed one is raised from inside the
    stream, before the blob store keeps anything: a rejected upload (empty, wrong checksum, not
    the kind of file it claims to be) leaves no blob behind, and a blob that was already stored
    for someone else is never touched.
    """
    if sample_id is not None:
        get_sample(session, sample_id, org_id=org_id)
    head = bytearray()
    digest = hashlib.sha256() if expected_sha256 else None
    checked: dict[str, Any] = {}

    def tee() -> Iterator[bytes]:
        size = 0
        for chunk in chunks:
            if len(head) < 65536:
                head.extend(chunk[: 65536 - len(head)])
            if digest is not None:
                digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size == 0:
            raise GenomicsError(f"{filename}: the file is empty")
        if digest is not None and expected_sha256 \
                and expected_sha256.lower() != digest.hexdigest():
            raise GenomicsError(f"{filename}: checksum mismatch: the upload has SHA-256 "
                                f"{digest.hexdigest()}, the client announced "
                                f"{expected_sha256.lower()}")
        text, checked["compressed"] = _peek(bytes(head))
        checked["kind"] = _sniff(filename, kind, text)

    ref = blobs.put(tee(), max_bytes=max_bytes)
    resolved, compressed = checked["kind"], checked["compressed"]
    record = GenomicsFile(org_id=org_id, sample_id=sample_id, kind=resolved,
                          filename=filename, sha256=ref.sha256, size=ref.size,
                          compressed=compressed, created_by=created_by)
    session.add(record)
    session.flush()
    return record


def register_output(session: Session, blobs: BlobStore, path: Path, *, org_id: str, kind: str,
                    sample_id: str | None, run_id: str, created_by: str | None,
                    details: dict[str, Any] | None = None) -> GenomicsFile:
    with path.open("rb") as fh:
        ref = blobs.put(fh)
    record = GenomicsFile(org_id=org_id, sample_id=sample_id, run_id=run_id, kind=kind,
                          filename=path.name, sha256=ref.sha256, size=ref.size,
                          compressed=kind in (FileKind.bam, FileKind.vcf),
                          details=details or {}, created_by=created_by)
    session.add(record)
    session.flush()
    return record


def get_file(session: Session, file_id: str, *, org_id: str) -> GenomicsFile:
    record = session.get(GenomicsFile, file_id)
    if record is None or record.org_id != org_id:
        raise NotFound(f"no file {file_id}")
    return record


def list_files(session: Session, *, org_id: str, sample_id: str | None = None,
               run_id: str | None = None, limit: int = 200) -> Sequence[GenomicsFile]:
    query = select(GenomicsFile).where(GenomicsFile.org_id == org_id)
    if sample_id:
        query = query.where(GenomicsFile.sample_id == sample_id)
    if run_id:
        query = query.where(GenomicsFile.run_id == run_id)
    return session.scalars(query.order_by(GenomicsFile.created_at.desc(),
                                          GenomicsFile.id).limit(limit)).all()


@contextmanager
def blob_file(blobs: BlobStore, sha256: str, directory: Path | None = None) -> Iterator[Path]:
    """A plaintext file of a blob for tools that need a path (validators, aligners, samtools).

    From the encrypted store: a decrypted copy (mode 0600) in ``directory`` (default: the
    store's scratch directory), removed when the block ends, also on an error. From a plain
    local store: its own file.
    """
    local_copy = getattr(blobs, "local_copy", None)
    if local_copy is not None:
        with local_copy(sha256, directory) as copy:
            yield Path(copy)
        return
    path = getattr(blobs, "path", None)
    if path is None:
        raise GenomicsError("the pipeline needs a blob store with local files")
    yield Path(path(sha256))


def plain_copy(blobs: BlobStore, sha256: str, target: Path) -> Path:
    """Keep a plaintext copy of a blob at ``target`` (made once, never rewritten in place).

    For a reference genome: its indexes (``.fai``, ``.mmi``) hold the sequence anyway and are
    reused by every run, so the FASTA they were built from stays beside them. A copy of the
    wrong size (cut short by a crash) is made again.
    """
    if target.is_file() and target.stat().st_size == blobs.size(sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with blob_file(blobs, sha256, target.parent) as copy:
        target.unlink(missing_ok=True)
        with suppress(FileExistsError):  # never replaces a copy another run has just made
            os.link(copy, target)
    return target


# -- samples and references ---------------------------------------------------------------

def create_sample(session: Session, *, org_id: str, name: str, patient_id: str | None = None,
                  description: str = "", created_by: str | None = None) -> GenomicsSample:
    name = name.strip()
    if not name or any(c in name for c in "/\\\t\n\r") or name.startswith("."):
        raise GenomicsError(f"sample name {name!r} is not usable (no slashes, tabs or newlines,"
                            " and it must not start with a dot)")
    if session.scalar(select(GenomicsSample.id).where(GenomicsSample.org_id == org_id,
                                                      GenomicsSample.name == name)):
        raise GenomicsError(f"a sample named {name!r} already exists")
    sample = GenomicsSample(org_id=org_id, name=name, patient_id=patient_id or None,
                            description=description, created_by=created_by)
    session.add(sample)
    session.flush()
    return sample


def get_sample(session: Session, sample_id: str, *, org_id: str) -> GenomicsSample:
    sample = session.get(GenomicsSample, sample_id)
    if sample is None or sample.org_id != org_id:
        raise NotFound(f"no sample {sample_id}")
    return sample


def list_samples(session: Session, *, org_id: str, patient_id: str | None = None
                 ) -> Sequence[GenomicsSample]:
    query = select(GenomicsSample).where(GenomicsSample.org_id == org_id)
    if patient_id:
        query = query.where(GenomicsSample.patient_id == patient_id)
    return session.scalars(query.order_by(GenomicsSample.name)).all()


def create_reference(session: Session, blobs: BlobStore, *, org_id: str, name: str,
                     file_id: str, description: str = "", created_by: str | None = None,
                     data_dir: str | Path | None = None) -> GenomicsReference:
    """Register an uploaded FASTA as a reference.

    A small FASTA (up to :data:`INLINE_CHECK_BYTES`) is checked line by line at once; a larger
    one (a human genome is gigabytes) is registered as ``checking`` and a job checks and
    indexes it, filling in its contigs, so no request reads a whole genome. ``data_dir`` is the
    submitting server's data directory, carried by that job (see :func:`submit_run`).
    """
    record = get_file(session, file_id, org_id=org_id)
    if record.kind != FileKind.fasta:
        raise GenomicsError(f"file {file_id} is {record.kind}, not FASTA")
    if session.scalar(select(GenomicsReference.id).where(GenomicsReference.org_id == org_id,
                                                         GenomicsReference.name == name)):
        raise GenomicsError(f"a reference named {name!r} already exists")
    reference = GenomicsReference(org_id=org_id, name=name, description=description,
                                  file_id=record.id, sha256=record.sha256, contigs=[],
                                  length=0, created_by=created_by)
    if record.size <= INLINE_CHECK_BYTES:
        try:
            with blob_file(blobs, record.sha256) as fasta:
                contigs = validate_fasta(fasta, record.filename)
        except ReferenceError as exc:
            raise GenomicsError(str(exc)) from exc
        reference.contigs = [[c, n] for c, n in contigs]
        reference.length = sum(n for _, n in contigs)
        session.add(reference)
        session.flush()
        return reference
    reference.status = "checking"
    session.add(reference)
    session.flush()
    reference.job_id = _queue(session, CHECK_REFERENCE_TASK, {"reference_id": reference.id},
                              data_dir, org_id=org_id, created_by=created_by,
                              title=f"Genomics reference check: {name}")
    session.flush()
    return reference


def _queue(session: Session, task: str, args: dict[str, Any], data_dir: str | Path | None, *,
           org_id: str, created_by: str | None, title: str) -> str:
    """Submit a genomics job (retried up to three times); returns its id. ``data_dir`` (the
    submitting server's data directory) travels with it: see :func:`submit_run`."""
    if data_dir is not None:
        args = {**args, "data_dir": str(data_dir)}
    job = jobs.submit(session, task, args, org_id=org_id, created_by=created_by, title=title,
                      max_attempts=3)
    return job.id


def get_reference(session: Session, reference_id: str, *, org_id: str) -> GenomicsReference:
    reference = session.get(GenomicsReference, reference_id)
    if reference is None or reference.org_id != org_id:
        raise NotFound(f"no reference {reference_id}")
    return reference


def list_references(session: Session, *, org_id: str) -> Sequence[GenomicsReference]:
    return session.scalars(select(GenomicsReference).where(GenomicsReference.org_id == org_id)
                           .order_by(GenomicsReference.name)).all()


# -- runs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunView:
    """A run with its job: what pages and APIs show."""

    run: GenomicsRun
    job: Job
    sample: GenomicsSample

    @property
    def status(self) -> str:
        return self.job.status

    @property
    def fraction(self) -> float | None:
        return self.job.fraction


def submit_run(session: Session, *, org_id: str, sample_id: str, reference_id: str,
               fastq_ids: Sequence[str], aligner: str = "minimap2", threads: int = 2,
               params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
               created_by: str | None = None, data_dir: str | Path | None = None
               ) -> GenomicsRun:
    """Register a run and queue its job.

    ``data_dir`` is the submitting server's data directory; the job carries it so that a
    worker started without ``CAREPLANE_DATA_DIR`` (``careplane serve --data-dir D`` passes the
    directory on the command line only) still finds the blobs and, when no database URL is
    configured, the database inside it.
    """
    sample = get_sample(session, sample_id, org_id=org_id)
    reference = get_reference(session, reference_id, org_id=org_id)
    if reference.status == "failed":
        raise GenomicsError(f"the reference {reference.name!r} failed its check: "
                            f"{reference.error}")
    # A reference still being checked may be used: the run checks and indexes it itself
    # (one index per reference, built under a lock, whichever job gets there first).
    if len(fastq_ids) != 2:
        raise GenomicsError("a run needs exactly two FASTQ files (read 1 and read 2)")
    for fid in fastq_ids:
        record = get_file(session, fid, org_id=org_id)
        if record.kind != FileKind.fastq:
            raise GenomicsError(f"file {fid} ({record.filename}) is {record.kind}, not FASTQ")
    if aligner not in ALIGNERS:
        raise GenomicsError(f"unknown aligner {aligner!r}; choose from {', '.join(ALIGNERS)}")
    if not 1 <= threads <= 64:
        raise GenomicsError("threads must be between 1 and 64")
    run = GenomicsRun(org_id=org_id, sample_id=sample.id, reference_id=reference.id,
                      job_id="", aligner=aligner, threads=threads, inputs=list(fastq_ids),
                      params=params or {}, tags=tags or {}, created_by=created_by)
    session.add(run)
    session.flush()
    run.job_id = _queue(session, RUN_TASK, {"run_id": run.id}, data_dir, org_id=org_id,
                        created_by=created_by, title=f"Genomics pipeline: {sample.name}")
    session.flush()
    return run


def get_run(session: Session, run_id: str, *, org_id: str) -> GenomicsRun:
    run = session.get(GenomicsRun, run_id)
    if run is None or run.org_id != org_id:
        raise NotFound(f"no run {run_id}")
    return run


def run_view(session: Session, run: GenomicsRun) -> RunView:
    job = session.get(Job, run.job_id)
    sample = session.get(GenomicsSample, run.sample_id)
    assert job is not None and sample is not None
    return RunView(run=run, job=job, sample=sample)


def list_runs(session: Session, *, org_id: str, sample_id: str | None = None,
              limit: int = 100, offset: int = 0) -> list[RunView]:
    query = (select(GenomicsRun, Job, GenomicsSample)
             .join(Job, Job.id == GenomicsRun.job_id)
             .join(GenomicsSample, GenomicsSample.id == GenomicsRun.sample_id)
             .where(GenomicsRun.org_id == org_id))
    if sample_id:
        query = query.where(GenomicsRun.sample_id == sample_id)
    rows = session.execute(query.order_by(GenomicsRun.created_at.desc(), GenomicsRun.id.desc())
                           .limit(limit).offset(offset)).all()
    return [RunView(run=r, job=j, sample=s) for r, j, s in rows]


def cancel_run(session: Session, run: GenomicsRun) -> Job:
    job = session.get(Job, run.job_id)
    assert job is not None
    if JobStatus(job.status).finished:
        raise GenomicsError(f"run {run.id} has already {job.status}")
    return jobs.cancel(session, job)


def publish_outputs(session: Session, blobs: BlobStore, run: GenomicsRun,
                    files: dict[str, Path], qc_document: dict[str, Any]) -> dict[str, str]:
    """Store a finished run's files and link them, in the caller's (one) transaction."""
    outputs: dict[str, str] = {}
    for kind, path in files.items():
        record = register_output(session, blobs, path, org_id=run.org_id, kind=kind,
                                 sample_id=run.sample_id, run_id=run.id,
                                 created_by=run.created_by)
        outputs[kind] = record.id
    run.outputs = outputs
    run.qc = qc_document
    run.published_at = utcnow()
    session.flush()
    publish(session, "genomics.run.published", {"run_id": run.id, "outputs": outputs},
            org_id=run.org_id)
    return outputs



# -- resumable uploads ----------------------------------------------------------------------

class OffsetMismatch(GenomicsError):
    """A chunk was sent for another offset than the one the upload has reached."""

    def __init__(self, expected: int) -> None:
        super().__init__(f"the upload is at offset {expected}")
        self.expected = expected


def _part_path(uploads_dir: Path, upload: GenomicsUpload) -> Path:
    return uploads_dir / f"{upload.id}.part"


def create_upload(session: Session, *, org_id: str, filename: str, size: int,
                  kind: str | None = None, sample_id: str | None = None,
                  sha256: str | None = None, created_by: str | None = None) -> GenomicsUpload:
    """Open a resumable upload of ``size`` bytes; chunks are appended with :func:`append`."""
    if size <= 0:
        raise GenomicsError(f"{filename}: the file is empty")
    if kind is not None and kind not in FileKind.uploadable:
        raise GenomicsError(f"kind {kind!r} cannot be uploaded")
    if sample_id is not None:
        get_sample(session, sample_id, org_id=org_id)
    upload = GenomicsUpload(org_id=org_id, filename=filename, size=size, kind=kind,
                            sample_id=sample_id, sha256=sha256.lower() if sha256 else None,
                            created_by=created_by)
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, upload_id: str, *, org_id: str,
               for_update: bool = False) -> GenomicsUpload:
    upload = session.get(GenomicsUpload, upload_id, with_for_update=for_update or None)
    if upload is None or upload.org_id != org_id:
        raise NotFound(f"no upload {upload_id}")
    return upload


def append(session: Session, blobs: BlobStore, uploads_dir: Path, upload: GenomicsUpload,
           offset: int, chunks: Iterable[bytes], *, max_bytes: int | None = None
           ) -> GenomicsFile | None:
    """Append bytes at ``offset`` (which must be where the upload stands); when the last byte
    arrives the upload becomes a registered file, which is returned.

    The caller holds the upload's row lock (``get_upload(for_update=True)``), so two clients
    resuming the same upload cannot interleave their bytes.
    """
    if upload.file_id is not None:
        raise GenomicsError(f"upload {upload.id} is already complete")
    if offset != upload.received:
        raise OffsetMismatch(upload.received)
    uploads_dir.mkdir(parents=True, exist_ok=True)
    part = _part_path(uploads_dir, upload)
    received = upload.received
    with part.open("r+b" if part.exists() else "wb") as fh:
        fh.seek(received)
        fh.truncate()  # bytes past the recorded offset are from an interrupted request
        for chunk in chunks:
            received += len(chunk)
            if received > upload.size:
                raise GenomicsError(f"the upload would exceed its declared size of "
                                    f"{upload.size} bytes")
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    upload.received = received
    upload.updated_at = utcnow()
    session.flush()
    if received < upload.size:
        return None
    with part.open("rb") as fh:
        record = store_upload(session, blobs, iter(lambda: fh.read(CHUNK), b""),
                              org_id=upload.org_id, filename=upload.filename, kind=upload.kind,
                              sample_id=upload.sample_id, expected_sha256=upload.sha256,
                              created_by=upload.created_by, max_bytes=max_bytes)
    upload.file_id = record.id
    session.flush()
    part.unlink(missing_ok=True)
    return record
