"""The DICOM index: patient, study, series and instance rows, one organisation each.

The files themselves sit unchanged in the blob store; these tables hold what queries need
(the QIDO-RS / C-FIND matching and return attributes) and where each file is. Study rows
repeat the patient attributes and keep running counts so that a study list is one indexed
table scan, however many studies there are. UIDs are unique per organisation, not globally:
two hospitals may hold copies of the same study.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from careplane.platform.db import Base, UTCDateTime, utcnow

__all__ = ["DicomInstance", "DicomPatient", "DicomRemoteAE", "DicomSeries", "DicomStudy"]

_ID = BigInteger().with_variant(Integer, "sqlite")
_ORG_FK = "organisation.id"


class DicomPatient(Base):
    __tablename__ = "dicom_patient"
    __table_args__ = (
        UniqueConstraint("org_id", "patient_id", "issuer_of_patient_id",
                         name="uq_dicom_patient_org_id"),
        Index("ix_dicom_patient_org_name", "org_id", "patient_name_key"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey(_ORG_FK, ondelete="CASCADE"))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_key: Mapped[str] = mapped_column(String(330), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    num_studies: Mapped[int] = mapped_column(Integer, default=0)
    fhir_patient_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DicomStudy(Base):
    __tablename__ = "dicom_study"
    __table_args__ = (
        UniqueConstraint("org_id", "study_instance_uid", name="uq_dicom_study_org_id"),
        Index("ix_dicom_study_org_date", "org_id", "study_date"),
        Index("ix_dicom_study_org_patient", "org_id", "patient_id"),
        Index("ix_dicom_study_org_name", "org_id", "patient_name_key"),
        Index("ix_dicom_study_org_accession", "org_id", "accession_number"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey(_ORG_FK, ondelete="CASCADE"))
    patient_pk: Mapped[int] = mapped_column(
        _ID, ForeignKey("dicom_patient.id", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_key: Mapped[str] = mapped_column(String(330), default="")
    timezone_offset: Mapped[str] = mapped_column(String(5), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_key: Mapped[str] = mapped_column(String(330), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    modalities: Mapped[str] = mapped_column(String(200), default="")  # backslash-separated
    # the research project a de-identified copy was made for; None: the clinical original
    research_project: Mapped[str | None] = mapped_column(String(64), index=True)
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    fhir_imaging_study_id: Mapped[str | None] = mapped_column(String(64))
    fhir_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DicomSeries(Base):
    __tablename__ = "dicom_series"
    __table_args__ = (
        UniqueConstraint("org_id", "series_instance_uid", name="uq_dicom_series_org_id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey(_ORG_FK, ondelete="CASCADE"))
    study_pk: Mapped[int] = mapped_column(
        _ID, ForeignKey("dicom_study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    laterality: Mapped[str] = mapped_column(String(16), default="")
    performed_start_date: Mapped[str] = mapped_column(String(8), default="")
    performed_start_time: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DicomInstance(Base):
    __tablename__ = "dicom_instance"
    __table_args__ = (
        UniqueConstraint("org_id", "sop_instance_uid", name="uq_dicom_instance_org_id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey(_ORG_FK, ondelete="CASCADE"))
    study_pk: Mapped[int] = mapped_column(
        _ID, ForeignKey("dicom_study.id", ondelete="CASCADE"), index=True)
    series_pk: Mapped[int] = mapped_column(
        _ID, ForeignKey("dicom_series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    blob_sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # The DICOM JSON model of the header, bulk data replaced by BulkDataURI placeholders.
    metadata_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DicomRemoteAE(Base):
    """A DICOM peer allowed to associate (by calling AE title), and for which organisation."""

    __tablename__ = "dicom_remote_ae"
    __table_args__ = (UniqueConstraint("ae_title", name="uq_dicom_remote_ae_ae_title"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(32), ForeignKey(_ORG_FK, ondelete="CASCADE"),
                                        index=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
