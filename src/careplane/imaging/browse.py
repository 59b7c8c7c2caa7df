"""What the imaging pages show: study lists per patient and one study laid out for viewing.

The pages render what these functions return; every call passes the access decision (search
for lists, read for a study), so the pages see exactly what DICOMweb would let the same user
see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from careplane.imaging.attributes import name_key
from careplane.imaging.models import DicomInstance, DicomSeries, DicomStudy
from careplane.imaging.wado import NotFound, locate_study
from careplane.security import Principal
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["InstanceView", "SeriesView", "StudySummary", "StudyView", "study_list",
           "study_view"]


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else value


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    description: str
    accession_number: str
    modalities: str
    num_series: int
    num_instances: int


@dataclass(frozen=True)
class InstanceView:
    sop_instance_uid: str
    instance_number: int | None
    frames: int
    rows: int | None
    columns: int | None


@dataclass
class SeriesView:
    series_instance_uid: str
    modality: str
    number: int | None
    description: str
    body_part: str
    laterality: str
    instances: list[InstanceView] = field(default_factory=list)


@dataclass
class StudyView:
    summary: StudySummary
    series: list[SeriesView]


def _summary(study: DicomStudy) -> StudySummary:
    return StudySummary(study.study_instance_uid, study.patient_name.replace("^", " ").strip(),
                        study.patient_id, _date(study.patient_birth_date), study.patient_sex,
                        _date(study.study_date), study.study_description,
                        study.accession_number, study.modalities.replace("\\", ", "),
                        study.num_series, study.num_instances)


def study_list(session: Session, principal: Principal, *, patient: str | None = None,
               limit: int = 200) -> list[StudySummary]:
    """The organisation's studies, newest first; ``patient`` matches an ID or a name part."""
    authorize(session, principal, Action.search,
              Target(kind="imaging:study", org_id=principal.org_id))
    query = select(DicomStudy).where(DicomStudy.org_id == principal.org_id,
                                     DicomStudy.research_project.is_(None))
    if patient and patient.strip():
        text = patient.strip()
        key = name_key(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(or_(DicomStudy.patient_id == text,
                                DicomStudy.patient_name_key.like(f"{key}%", escape="\\"),
                                DicomStudy.patient_name_key.like(f"%^{key}%", escape="\\")))
    query = query.order_by(DicomStudy.patient_name_key, DicomStudy.study_date.desc(),
                           DicomStudy.id).limit(limit)
    return [_summary(s) for s in session.scalars(query)]


def study_view(session: Session, principal: Principal, study_uid: str) -> StudyView:
    """One study with its series and instances in display order; NotFound if absent."""
    study = locate_study(session, principal, study_uid)
    series_rows = session.scalars(select(DicomSeries).where(DicomSeries.study_pk == study.id)
                                  .order_by(DicomSeries.series_number.is_(None),
                                            DicomSeries.series_number, DicomSeries.id)).all()
    views = {s.id: SeriesView(s.series_instance_uid, s.modality, s.series_number,
                              s.series_description, s.body_part_examined, s.laterality)
             for s in series_rows}
    instances = session.scalars(select(DicomInstance).where(DicomInstance.study_pk == study.id)
                                .order_by(DicomInstance.instance_number.is_(None),
                                          DicomInstance.instance_number, DicomInstance.id))
    for instance in instances:
        views[instance.series_pk].instances.append(InstanceView(
            instance.sop_instance_uid, instance.instance_number,
            max(1, instance.number_of_frames or 1), instance.rows, instance.columns))
    return StudyView(_summary(study), [v for v in views.values() if v.instances])


_ = NotFound  # raised by study_view for an unknown study
