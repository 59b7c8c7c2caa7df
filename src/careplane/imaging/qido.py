"""QIDO-RS: query parameters in, DICOM JSON results out (PS3.18 10.6).

Results are built from the index columns, never from the files, so a study list costs one
indexed query. Attributes asked for with ``includefield`` that the index does not keep are
taken from the stored header of a representative instance (the first one of the study or
series), fetched in one batch per page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from careplane.imaging.attributes import ATTRIBUTES, Attribute, Level, resolve_attribute
from careplane.imaging.dicomjson import BULK_BASE, person_name_json
from careplane.imaging.models import DicomInstance, DicomPatient, DicomSeries, DicomStudy
from careplane.imaging.query import Criteria, QueryError, matchable

__all__ = ["QidoRequest", "parse_qido", "render_rows"]

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "emptyvaluematching",
            "multiplevaluematching"}
_GROUPS: dict[Level, list[Attribute]] = {
    level: [a for a in ATTRIBUTES if a.level is level] for level in Level}
_STUDY_GROUP = _GROUPS[Level.patient] + _GROUPS[Level.study]
_ALWAYS = {"00081190", "00080056", "00080005"}
# What the index can answer at each query level; other attributes come from a stored header.
_ANSWERABLE = {
    Level.patient: {a.tag for a in _GROUPS[Level.patient]} | _ALWAYS,
    Level.study: {a.tag for a in _STUDY_GROUP} | _ALWAYS,
    Level.series: {a.tag for a in _STUDY_GROUP + _GROUPS[Level.series]} | _ALWAYS,
    Level.instance: {a.tag for a in ATTRIBUTES} | _ALWAYS,
}
_STUDY_UID, _SERIES_UID = "0020000D", "0020000E"


@dataclass
class QidoRequest:
    criteria: Criteria
    include_all: bool = False
    include: set[str] = field(default_factory=set)  # tags
    ignored: list[str] = field(default_factory=list)  # keys that cannot be matched


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise QueryError(f"{name} must be true or false")


def _count(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise QueryError(f"{name} must be a whole number") from None
    if number < 0:
        raise QueryError(f"{name} must not be negative")
    return number


def parse_qido(params: Sequence[tuple[str, str]], level: Level, *,
               study_uid: str | None = None, series_uid: str | None = None) -> QidoRequest:
    request = QidoRequest(Criteria(level, study_uid=study_uid, series_uid=series_uid))
    criteria = request.criteria
    for key, value in params:
        if key == "limit":
            criteria.limit = _count(value, "limit")
        elif key == "offset":
            criteria.offset = _count(value, "offset")
        elif key == "fuzzymatching":
            criteria.fuzzy = _flag(value, key)
        elif key == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item == "all":
                    request.include_all = True
                    continue
                resolved = resolve_attribute(item)
                if resolved is None:
                    raise QueryError(f"includefield: {item!r} is not a DICOM attribute")
                request.include.add(resolved[1])
        elif key in _CONTROL:
            continue
        else:
            resolved = resolve_attribute(key)
            if resolved is None:
                raise QueryError(f"{key!r} is not a DICOM attribute keyword or tag, nor a "
                                 "query parameter")
            attr = matchable(resolved[0], level)
            if attr is None:
                request.ignored.append(resolved[0])
                continue
            criteria.filters.append((attr, value))
    return request


def _value(attr: Attribute, raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {"vr": attr.vr}
    if attr.vr == "PN":
        return {"vr": "PN", "Value": [person_name_json(raw)]}
    if attr.keyword == "ModalitiesInStudy":
        return {"vr": "CS", "Value": [m for m in str(raw).split("\\") if m]}
    return {"vr": attr.vr, "Value": [raw]}


_STUDY_VALUES = {"patient_name": "patient_name", "patient_id": "patient_id",
                 "issuer_of_patient_id": "issuer_of_patient_id",
                 "patient_birth_date": "patient_birth_date", "patient_sex": "patient_sex"}


def _study_part(study: DicomStudy, out: dict[str, Any]) -> None:
    for attr in _STUDY_GROUP:
        if attr.column is not None:
            out[attr.tag] = _value(attr, getattr(study, attr.column))
    out["00201206"] = {"vr": "IS", "Value": [study.num_series]}
    out["00201208"] = {"vr": "IS", "Value": [study.num_instances]}


def _series_part(series: DicomSeries, out: dict[str, Any]) -> None:
    for attr in _GROUPS[Level.series]:
        if attr.column is not None:
            out[attr.tag] = _value(attr, getattr(series, attr.column))
    out["00201209"] = {"vr": "IS", "Value": [series.num_instances]}


def _instance_part(instance: DicomInstance, out: dict[str, Any]) -> None:
    for attr in _GROUPS[Level.instance]:
        if attr.column is not None:
            out[attr.tag] = _value(attr, getattr(instance, attr.column))


def _patient_part(patient: DicomPatient, out: dict[str, Any]) -> None:
    values = {"patient_name": patient.patient_name, "patient_id": patient.patient_id,
              "issuer_of_patient_id": patient.issuer_of_patient_id,
              "patient_birth_date": patient.birth_date, "patient_sex": patient.sex}
    for attr in _GROUPS[Level.patient]:
        if attr.column is not None:
            out[attr.tag] = _value(attr, values[attr.column])
    out["00201200"] = {"vr": "IS", "Value": [patient.num_studies]}


def _wants(request: QidoRequest, level: Level) -> bool:
    """Whether attributes of ``level`` beyond the UIDs belong in results of this query."""
    criteria = request.criteria
    if request.include_all:
        return True
    group = _STUDY_GROUP if level is Level.study else _GROUPS[level]
    if any(a.tag in request.include for a in group):
        return True
    if level is Level.study:
        return criteria.study_uid is None
    return criteria.series_uid is None


def _representatives(session: Session, level: Level, pks: list[int]) -> dict[int, int]:
    if not pks:
        return {}
    key = DicomInstance.study_pk if level is Level.study else DicomInstance.series_pk
    rows = session.execute(select(key, func.min(DicomInstance.id)).where(key.in_(pks))
                           .group_by(key)).all()
    return {int(k): int(v) for k, v in rows}


def _headers(session: Session, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = list(set(ids))
    if not wanted:
        return {}
    rows = session.execute(select(DicomInstance.id, DicomInstance.metadata_json)
                           .where(DicomInstance.id.in_(wanted))).all()
    return {int(i): orjson.loads(text) for i, text in rows}


def _pick(header: dict[str, Any], tags: set[str], out: dict[str, Any]) -> None:
    for tag in tags:
        if tag in header and tag not in out:
            value = header[tag]
            if "BulkDataURI" in value and str(value["BulkDataURI"]).startswith(BULK_BASE):
                continue  # bulk data is not returned by a query
            out[tag] = value


def render_rows(session: Session, request: QidoRequest, rows: Sequence[Any], base_url: str
                ) -> list[dict[str, Any]]:
    """DICOM JSON objects for one batch of query rows."""
    level = request.criteria.level
    extra = {t for t in request.include if t not in _ANSWERABLE[level]}
    headers: dict[int, dict[str, Any]] = {}
    representative: dict[int, int] = {}
    if extra and level is Level.instance:
        headers = _headers(session, (r[0].id for r in rows))
    elif extra and level in (Level.study, Level.series):
        representative = _representatives(session, level, [r[0].id for r in rows])
        headers = _headers(session, representative.values())
    if request.include_all and level is Level.instance and not headers:
        headers = _headers(session, (r[0].id for r in rows))
    results = []
    for row in rows:
        out: dict[str, Any] = {"00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}}
        if level is Level.patient:
            _patient_part(row[0], out)
        elif level is Level.study:
            study = row[0]
            _study_part(study, out)
            out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
            out["00081190"] = {"vr": "UR", "Value": [
                f"{base_url}/studies/{study.study_instance_uid}"]}
            if extra:
                _pick(headers.get(representative.get(study.id, -1), {}), extra, out)
        elif level is Level.series:
            series, study = row
            if _wants(request, Level.study):
                _study_part(study, out)
            out[_STUDY_UID] = {"vr": "UI", "Value": [study.study_instance_uid]}
            _series_part(series, out)
            out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
            out["00081190"] = {"vr": "UR", "Value": [
                f"{base_url}/studies/{study.study_instance_uid}/series/"
                f"{series.series_instance_uid}"]}
            if extra:
                _pick(headers.get(representative.get(series.id, -1), {}), extra, out)
        else:
            instance, series, study = row
            if _wants(request, Level.study):
                _study_part(study, out)
            if _wants(request, Level.series):
                _series_part(series, out)
            out[_STUDY_UID] = {"vr": "UI", "Value": [study.study_instance_uid]}
            out[_SERIES_UID] = {"vr": "UI", "Value": [series.series_instance_uid]}
            _instance_part(instance, out)
            out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
            out["00081190"] = {"vr": "UR", "Value": [
                f"{base_url}/studies/{study.study_instance_uid}/series/"
                f"{series.series_instance_uid}/instances/{instance.sop_instance_uid}"]}
            header = headers.get(instance.id)
            if header is not None:
                _pick(header, set(header) if request.include_all else extra, out)
        results.append(dict(sorted(out.items())))
    return results
