"""Attribute matching over the index, shared by QIDO-RS and C-FIND.

Implements the matching kinds of PS3.4 C.2.2.2: single value, universal (empty), wild card
(``*`` and ``?``), UID list, range (dates and times), and sequence-free attribute matching on
the indexed attributes; plus the ``fuzzymatching`` of PS3.18 for person names (each word of
the query starts a name component, accents and case ignored). Person names always match
without regard to case, as most archives do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, false, or_, select
from sqlalchemy.orm import Bundle, InstrumentedAttribute

from careplane.imaging.attributes import Attribute, Level, by_keyword, name_key
from careplane.imaging.models import DicomInstance, DicomPatient, DicomSeries, DicomStudy

__all__ = ["Criteria", "QueryError", "build_select", "column_for"]


class QueryError(ValueError):
    """A query that cannot be run as asked (bad value, unknown attribute); a 400."""


@dataclass
class Criteria:
    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    study_uid: str | None = None
    series_uid: str | None = None
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


_PATIENT_COLUMNS = {"patient_name": "patient_name_key", "patient_id": "patient_id",
                    "issuer_of_patient_id": "issuer_of_patient_id",
                    "patient_birth_date": "birth_date", "patient_sex": "sex"}
_NAME_KEYS = {"patient_name": "patient_name_key",
              "referring_physician_name": "referring_physician_key"}
_LEVEL_RANK = {Level.patient: 0, Level.study: 1, Level.series: 2, Level.instance: 3}


def column_for(attr: Attribute, level: Level) -> InstrumentedAttribute[Any] | None:
    """The column an attribute is matched on, in a query at ``level``; None if not there."""
    if attr.column is None:
        return None
    if level is Level.patient:
        if attr.level is not Level.patient:
            return None
        column: InstrumentedAttribute[Any] = getattr(DicomPatient,
                                                     _PATIENT_COLUMNS[attr.column])
        return column
    if _LEVEL_RANK[attr.level] > _LEVEL_RANK[level]:
        return None
    model: Any = {Level.patient: DicomStudy, Level.study: DicomStudy,
                  Level.series: DicomSeries, Level.instance: DicomInstance}[attr.level]
    name = _NAME_KEYS.get(attr.column, attr.column) if attr.vr == "PN" else attr.column
    column = getattr(model, name)
    return column


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _values(value: str, vr: str) -> list[str]:
    separators = r"[\\,]" if vr in ("UI", "CS") else r"\\"
    return [v.strip() for v in re.split(separators, value) if v.strip()]


_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _check_datetime(value: str, vr: str, attr: Attribute) -> str:
    if not value:
        return value
    value = value.replace(":", "") if vr == "TM" else value.replace("-", "")
    pattern = _DATE if vr == "DA" else _TIME
    if not pattern.match(value):
        raise QueryError(f"{attr.keyword}: {value!r} is not a valid {vr} value")
    return value


def _end_of(time: str) -> str:
    """The last instant a partial time covers: ``12`` -> ``125959.999999``."""
    whole, _, fraction = time.partition(".")
    whole = whole + "5959"[max(0, len(whole) - 2):]
    return f"{whole}.{fraction.ljust(6, '9')}"


def _range(column: Any, value: str, attr: Attribute) -> ColumnElement[bool]:
    start, sep, end = value.partition("-")
    lo = _check_datetime(start.strip(), attr.vr, attr)
    hi = _check_datetime(end.strip(), attr.vr, attr)
    if not sep:
        return column == lo
    if not lo and not hi:
        raise QueryError(f"{attr.keyword}: a range needs a start, an end or both")
    conditions = [column != ""]
    if lo:
        conditions.append(column >= lo)
    if hi:
        # a time range's end includes every finer time inside it (1200 covers 12:00:59)
        conditions.append(column <= (hi if attr.vr == "DA" else _end_of(hi)))
    return and_(*conditions)


def _fuzzy_name(column: Any, value: str) -> ColumnElement[bool]:
    words = [w for w in re.split(r"[\^\s,=]+", name_key(value)) if w]
    if not words:
        raise QueryError("an empty name cannot be matched fuzzily")
    clauses = []
    for word in words:
        pattern = _like(word.replace("*", "").replace("?", ""))
        clauses.append(or_(column.like(f"{pattern}%", escape="\\"),
                           column.like(f"%^{pattern}%", escape="\\"),
                           column.like(f"% {pattern}%", escape="\\")))
    return and_(*clauses)


def _condition(attr: Attribute, column: Any, value: str, fuzzy: bool
               ) -> ColumnElement[bool] | None:
    value = value.strip()
    if value in ("", "*"):
        return None  # universal matching
    vr = attr.vr
    if attr.keyword == "ModalitiesInStudy":
        modalities = _values(value, "CS")
        return exists(select(DicomSeries.id).where(
            DicomSeries.study_pk == DicomStudy.id, DicomSeries.modality.in_(modalities)))
    if vr == "UI":
        uids = _values(value, "UI")
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if vr in ("DA", "TM", "DT"):
        return _range(column, value, attr)
    if vr in ("IS", "US", "UL", "SS", "SL"):
        try:
            numbers = [int(v) for v in _values(value, "CS")]
        except ValueError:
            raise QueryError(f"{attr.keyword}: {value!r} is not a whole number") from None
        return column.in_(numbers)
    if vr == "PN":
        if fuzzy:
            return _fuzzy_name(column, value)
        key = name_key(value)
        if "*" in key or "?" in key:
            return column.like(_like(key), escape="\\")
        return column == key
    options = _values(value, "CS") if vr == "CS" else [value]
    clauses = [column.like(_like(v), escape="\\") if ("*" in v or "?" in v) else column == v
               for v in options]
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


def _bundle(name: str, model: Any, leave_out: tuple[str, ...]) -> Bundle[Any]:
    columns = [getattr(model, c.name) for c in model.__table__.c if c.name not in leave_out]
    return Bundle(name, *columns)


# What query rows carry: plain column tuples, no ORM objects (a study list of thousands is
# rendered without building an object per row) and no stored headers.
_AUDIT = ("created_at", "updated_at", "org_id")
PATIENT = _bundle("patient", DicomPatient, (*_AUDIT, "fhir_patient_id"))
STUDY = _bundle("study", DicomStudy, (*_AUDIT, "patient_pk", "fhir_imaging_study_id",
                                      "fhir_synced_at"))
SERIES = _bundle("series", DicomSeries, (*_AUDIT, "study_pk"))
INSTANCE = _bundle("instance", DicomInstance, (*_AUDIT, "metadata_json", "source"))


def _studies_in(org_id: str, projects: Sequence[tuple[str, str]] | None
                ) -> ColumnElement[bool]:
    """Which studies a query may see: the organisation's clinical studies, or (``projects``)
    the de-identified copies of these (organisation, research project) pairs."""
    if projects is None:
        return and_(DicomStudy.org_id == org_id, DicomStudy.research_project.is_(None))
    return or_(false(), *(and_(DicomStudy.org_id == org, DicomStudy.research_project == project)
                          for org, project in projects))


def build_select(criteria: Criteria, org_id: str,
                 projects: Sequence[tuple[str, str]] | None = None
                 ) -> Select[*tuple[Any, ...]]:
    """The SELECT for a query at ``criteria.level`` inside one organisation, in a stable order.

    Rows are ``(patient,)``, ``(study,)``, ``(series, study)`` or ``(instance, series,
    study)``, each a bundle of the columns of that index row. Without ``projects`` the query
    sees the organisation's clinical studies; with them, only the de-identified copies made for
    those (organisation, research project) pairs.
    """
    level = criteria.level
    query: Select[*tuple[Any, ...]]
    scope = _studies_in(org_id, projects)
    if level is Level.patient:
        owners = [org_id] if projects is None else sorted({org for org, _ in projects})
        query = select(PATIENT).where(
            DicomPatient.org_id.in_(owners), DicomPatient.num_studies > 0,
            exists().where(DicomStudy.patient_pk == DicomPatient.id, scope))
        order: list[Any] = [DicomPatient.id]
    elif level is Level.study:
        query = select(STUDY).where(scope)
        order = [DicomStudy.id]
    elif level is Level.series:
        query = (select(SERIES, STUDY)
                 .join_from(DicomSeries, DicomStudy, DicomSeries.study_pk == DicomStudy.id)
                 .where(scope))
        order = [DicomStudy.id, DicomSeries.id]
    else:
        query = (select(INSTANCE, SERIES, STUDY)
                 .join_from(DicomInstance, DicomSeries, DicomInstance.series_pk == DicomSeries.id)
                 .join(DicomStudy, DicomInstance.study_pk == DicomStudy.id)
                 .where(scope))
        order = [DicomSeries.id, DicomInstance.instance_number.is_(None),
                 DicomInstance.instance_number, DicomInstance.id]
    if criteria.study_uid is not None:
        query = query.where(DicomStudy.study_instance_uid == criteria.study_uid)
    if criteria.series_uid is not None:
        query = query.where(DicomSeries.series_instance_uid == criteria.series_uid)
    for attr, value in criteria.filters:
        column = column_for(attr, level)
        if column is None and attr.keyword != "ModalitiesInStudy":
            continue
        condition = _condition(attr, column, value, criteria.fuzzy)
        if condition is not None:
            query = query.where(condition)
    query = query.order_by(*order)
    if criteria.offset:
        query = query.offset(criteria.offset)
    if criteria.limit is not None:
        query = query.limit(criteria.limit)
    return query


def matchable(keyword: str, level: Level) -> Attribute | None:
    """The attribute if a query at ``level`` can match on it."""
    attr = by_keyword(keyword)
    if attr is None or not attr.matchable:
        return None
    if attr.keyword == "ModalitiesInStudy":
        return attr if level is Level.study else None
    return attr if column_for(attr, level) is not None else None
