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
from careplane.imaging.models import DicomInstance
from careplane.imaging.query import Criteria, QueryError, matchable

__all__ = ["QidoRequest", "parse_qido", "render_rows", "render_rows_text"]

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


_PLAIN, _NAME, _LIST = 0, 1, 2


def _spec(attrs: list[Attribute], renames: dict[str, str] | None = None
          ) -> list[tuple[str, str, str, int]]:
    """(tag, column, VR, kind) for each attribute with a column, in tag order."""
    out = []
    for attr in attrs:
        if attr.column is None:
            continue
        kind = _NAME if attr.vr == "PN" else _LIST if attr.keyword == "ModalitiesInStudy" \
            else _PLAIN
        out.append((attr.tag, (renames or {}).get(attr.column, attr.column), attr.vr, kind))
    return sorted(out)


_STUDY_SPEC = _spec(_STUDY_GROUP)
_SERIES_SPEC = _spec(_GROUPS[Level.series])
_INSTANCE_SPEC = _spec(_GROUPS[Level.instance])
_PATIENT_SPEC = _spec(_GROUPS[Level.patient], {"patient_birth_date": "birth_date",
                                               "patient_sex": "sex"})


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


# Results are assembled as JSON text per attribute: a study list of ten thousand rows then
# allocates strings (which the cycle collector never scans) rather than hundreds of
# thousands of small dicts and lists.
def _fill(row: Any, spec: list[tuple[str, str, str, int]], out: dict[str, str]) -> None:
    for tag, column, vr, kind in spec:
        raw = getattr(row, column)
        if raw is None or raw == "":
            out[tag] = f'{{"vr":"{vr}"}}'
        elif kind == _PLAIN:
            out[tag] = f'{{"vr":"{vr}","Value":[{_text(raw)}]}}'
        elif kind == _NAME:
            out[tag] = f'{{"vr":"PN","Value":[{_text(person_name_json(raw))}]}}'
        else:
            values = [m for m in str(raw).split("\\") if m]
            out[tag] = f'{{"vr":"{vr}","Value":{_text(values)}}}'


def _is(value: int) -> str:
    return f'{{"vr":"IS","Value":[{int(value)}]}}'


def _study_part(study: Any, out: dict[str, str]) -> None:
    _fill(study, _STUDY_SPEC, out)
    out["00201206"] = _is(study.num_series)
    out["00201208"] = _is(study.num_instances)


def _series_part(series: Any, out: dict[str, str]) -> None:
    _fill(series, _SERIES_SPEC, out)
    out["00201209"] = _is(series.num_instances)


def _instance_part(instance: Any, out: dict[str, str]) -> None:
    _fill(instance, _INSTANCE_SPEC, out)


def _patient_part(patient: Any, out: dict[str, str]) -> None:
    _fill(patient, _PATIENT_SPEC, out)
    out["00201200"] = _is(patient.num_studies)


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


def _pick(header: dict[str, Any], tags: set[str], out: dict[str, str]) -> None:
    for tag in tags:
        if tag in header and tag not in out:
            value = header[tag]
            if "BulkDataURI" in value and str(value["BulkDataURI"]).startswith(BULK_BASE):
                continue  # bulk data is not returned by a query
            out[tag] = _text(value)


_CHARSET = '{"vr":"CS","Value":["ISO_IR 192"]}'
_ONLINE = '{"vr":"CS","Value":["ONLINE"]}'


def _url(url: str) -> str:
    return f'{{"vr":"UR","Value":[{_text(url)}]}}'


def _uid(uid: str) -> str:
    return f'{{"vr":"UI","Value":[{_text(uid)}]}}'


def render_rows_text(session: Session, request: QidoRequest, rows: Sequence[Any],
                     base_url: str) -> list[str]:
    """The DICOM JSON object of each query row, as JSON text."""
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
    with_study = level is not Level.patient and _wants(request, Level.study)
    with_series = level is Level.instance and _wants(request, Level.series)
    results = []
    for row in rows:
        out: dict[str, str] = {"00080005": _CHARSET}
        if level is Level.patient:
            _patient_part(row[0], out)
        elif level is Level.study:
            study = row[0]
            _study_part(study, out)
            out["00080056"] = _ONLINE
            out["00081190"] = _url(f"{base_url}/studies/{study.study_instance_uid}")
            if extra:
                _pick(headers.get(representative.get(study.id, -1), {}), extra, out)
        elif level is Level.series:
            series, study = row
            if with_study:
                _study_part(study, out)
            out[_STUDY_UID] = _uid(study.study_instance_uid)
            _series_part(series, out)
            out["00080056"] = _ONLINE
            out["00081190"] = _url(f"{base_url}/studies/{study.study_instance_uid}/series/"
                                   f"{series.series_instance_uid}")
            if extra:
                _pick(headers.get(representative.get(series.id, -1), {}), extra, out)
        else:
            instance, series, study = row
            if with_study:
                _study_part(study, out)
            if with_series:
                _series_part(series, out)
            out[_STUDY_UID] = _uid(study.study_instance_uid)
            out[_SERIES_UID] = _uid(series.series_instance_uid)
            _instance_part(instance, out)
            out["00080056"] = _ONLINE
            out["00081190"] = _url(
                f"{base_url}/studies/{study.study_instance_uid}/series/"
                f"{series.series_instance_uid}/instances/{instance.sop_instance_uid}")
            header = headers.get(instance.id)
            if header is not None:
                _pick(header, set(header) if request.include_all else extra, out)
        results.append("{" + ",".join(f'"{tag}":{value}' for tag, value in out.items()) + "}")
    return results


def render_rows(session: Session, request: QidoRequest, rows: Sequence[Any], base_url: str
                ) -> list[dict[str, Any]]:
    """DICOM JSON objects for one batch of query rows."""
    return [orjson.loads(text) for text in render_rows_text(session, request, rows, base_url)]
