"""Genomics registry tables: references, samples, files and pipeline runs, per organisation.

Why these tables: sequencing data is large and immutable, so the bytes live in the
content-addressed blob store (named by SHA-256, which doubles as the checksum a user verifies)
and these rows only describe them: who owns them (``org_id``), which sample and patient they
belong to, and which run made them. A run's state is its job's state (one source of truth);
the run row keeps what the job cannot: the inputs chosen, and the published outputs and QC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from careplane.platform.db import Base, JSONType, UTCDateTime, new_id, utcnow

__all__ = ["FileKind", "GenomicsFile", "GenomicsReference", "GenomicsRun", "GenomicsSample",
           "GenomicsUpload"]


class FileKind:
    """The kinds of file the registry knows; uploads are FASTQ or FASTA, the rest are outputs."""

    fastq = "fastq"
    fasta = "fasta"
    bam = "bam"
    bai = "bai"
    vcf = "vcf"
    tbi = "tbi"
    qc = "qc"
    bed = "bed"
    uploadable = frozenset({"fastq", "fasta", "bed"})
    all = frozenset({"fastq", "fasta", "bam", "bai", "vcf", "tbi", "qc", "bed"})


class GenomicsFile(Base):
    __tablename__ = "genomics_file"
    __table_args__ = (Index("ix_genomics_file_org_sample", "org_id", "sample_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(String(32), index=True)
    sample_id: Mapped[str | None] = mapped_column(
        ForeignKey("genomics_sample.id", ondelete="SET NULL"))
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    compressed: Mapped[bool] = mapped_column(default=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GenomicsReference(Base):
    __tablename__ = "genomics_reference"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_genomics_reference_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    file_id: Mapped[str] = mapped_column(ForeignKey("genomics_file.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    contigs: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    length: Mapped[int] = mapped_column(BigInteger, default=0)
    # "ready"; "checking" while a job validates and indexes a large FASTA (contigs and length
    # are filled in then); "failed" with the reason in ``error``.
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GenomicsSample(Base):
    __tablename__ = "genomics_sample"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_genomics_sample_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)  # FHIR Patient id
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GenomicsRun(Base):
    __tablename__ = "genomics_run"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(String(32), index=True)
    sample_id: Mapped[str] = mapped_column(ForeignKey("genomics_sample.id"), index=True)
    reference_id: Mapped[str] = mapped_column(ForeignKey("genomics_reference.id"))
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    aligner: Mapped[str] = mapped_column(String(32), default="minimap2")
    threads: Mapped[int] = mapped_column(Integer, default=2)
    inputs: Mapped[list[str]] = mapped_column(JSONType, default=list)  # file ids: R1, R2
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    outputs: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)  # kind -> file id
    qc: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class GenomicsUpload(Base):
    """A resumable upload in progress: the bytes received so far sit in a part file; once all
    ``size`` bytes are in, they become a :class:`GenomicsFile` (``file_id``)."""

    __tablename__ = "genomics_upload"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(String(32), index=True)
    created_by: Mapped[str | None] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str | None] = mapped_column(String(16))
    sample_id: Mapped[str | None] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    file_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
