"""JSON shapes of the genomics API (``/api/genomics``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from careplane.genomics.models import GenomicsFile, GenomicsReference, GenomicsSample
from careplane.genomics.service import RunView

__all__ = ["FileOut", "ReferenceIn", "ReferenceOut", "RunIn", "RunOut", "SampleIn",
           "SampleOut", "UploadIn"]


class FileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    filename: str
    sha256: str
    size: int
    compressed: bool
    sample_id: str | None
    run_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, record: GenomicsFile) -> FileOut:
        return cls.model_validate(record)


class SampleIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    patient_id: str | None = Field(default=None, max_length=64,
                                   description="id of the FHIR Patient this sample is from")
    description: str = Field(default="", max_length=5000)


class SampleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    patient_id: str | None
    description: str
    created_at: datetime

    @classmethod
    def of(cls, sample: GenomicsSample) -> SampleOut:
        return cls.model_validate(sample)


class ReferenceIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    file_id: str = Field(description="an uploaded FASTA file")
    description: str = Field(default="", max_length=5000)


class ReferenceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    file_id: str
    sha256: str
    length: int
    contigs: list[Any]
    status: str = Field(description="ready; checking (a job checks and indexes a large FASTA, "
                        "then fills in contigs and length); failed (see error)")
    error: str | None = None
    job_id: str | None = None
    created_at: datetime

    @classmethod
    def of(cls, reference: GenomicsReference) -> ReferenceOut:
        return cls.model_validate(reference)


class RunIn(BaseModel):
    sample_id: str
    reference_id: str
    fastq: list[str] = Field(min_length=2, max_length=2,
                             description="file ids of read 1 and read 2")
    aligner: str = "minimap2"
    threads: int = Field(default=2, ge=1, le=64)
    tags: dict[str, Any] = Field(default_factory=dict)


class RunOut(BaseModel):
    id: str
    sample_id: str
    sample: str
    reference_id: str
    job_id: str
    status: str
    fraction: float | None
    message: str
    error: str | None
    aligner: str
    threads: int
    inputs: list[str]
    outputs: dict[str, str]
    qc: dict[str, Any] | None
    tags: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, view: RunView, *, with_qc: bool = False) -> RunOut:
        run, job = view.run, view.job
        return cls(id=run.id, sample_id=run.sample_id, sample=view.sample.name,
                   reference_id=run.reference_id, job_id=run.job_id, status=job.status,
                   fraction=job.fraction, message=job.progress_message,
                   error=job.error.split("\n", 1)[0] if job.error else None,
                   aligner=run.aligner, threads=run.threads, inputs=list(run.inputs),
                   outputs=dict(run.outputs), qc=run.qc if with_qc else None,
                   tags=dict(run.tags), created_at=run.created_at,
                   finished_at=job.finished_at)


class UploadIn(BaseModel):
    filename: str = Field(min_length=1, max_length=300)
    size: int = Field(gt=0, description="total length in bytes")
    kind: str | None = Field(default=None, description="fastq, fasta or bed")
    sample_id: str | None = None
    sha256: str | None = Field(default=None, pattern="^[0-9a-fA-F]{64}$",
                               description="checked once the last byte is in")
