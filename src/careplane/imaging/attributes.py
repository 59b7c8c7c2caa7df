"""Which DICOM attributes the index keeps, per level, and how they come out of a data set.

The list follows the QIDO-RS matching and return attributes of PS3.18 (Tables 10.6.1-5 to
10.6.1-7) and the C-FIND unique/required keys of PS3.4 C.6: what a query may match on is
exactly what has a column. Values are clipped to their VR's maximum length, so a malformed
header can never make an insert fail.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

__all__ = ["ATTRIBUTES", "Attribute", "IndexValues", "Level", "by_keyword", "by_tag",
           "index_values", "name_key", "resolve_attribute"]


class Level(StrEnum):
    patient = "PATIENT"
    study = "STUDY"
    series = "SERIES"
    instance = "IMAGE"


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: str  # eight upper-case hex digits, as in DICOM JSON
    vr: str
    level: Level
    column: str | None  # the model attribute holding it; None: computed (counts, URLs)
    matchable: bool = True


def _a(keyword: str, level: Level, column: str | None, matchable: bool = True) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(keyword, f"{tag:08X}", dictionary_VR(tag), level, column, matchable)


P, ST, SE, IN = Level.patient, Level.study, Level.series, Level.instance
ATTRIBUTES: tuple[Attribute, ...] = (
    _a("PatientName", P, "patient_name"),
    _a("PatientID", P, "patient_id"),
    _a("IssuerOfPatientID", P, "issuer_of_patient_id"),
    _a("PatientBirthDate", P, "patient_birth_date"),
    _a("PatientSex", P, "patient_sex"),
    _a("NumberOfPatientRelatedStudies", P, None, False),
    _a("StudyInstanceUID", ST, "study_instance_uid"),
    _a("StudyDate", ST, "study_date"),
    _a("StudyTime", ST, "study_time"),
    _a("AccessionNumber", ST, "accession_number"),
    _a("StudyID", ST, "study_id"),
    _a("StudyDescription", ST, "study_description"),
    _a("ReferringPhysicianName", ST, "referring_physician_name"),
    _a("TimezoneOffsetFromUTC", ST, "timezone_offset"),
    _a("ModalitiesInStudy", ST, "modalities"),
    _a("NumberOfStudyRelatedSeries", ST, None, False),
    _a("NumberOfStudyRelatedInstances", ST, None, False),
    _a("SeriesInstanceUID", SE, "series_instance_uid"),
    _a("Modality", SE, "modality"),
    _a("SeriesNumber", SE, "series_number"),
    _a("SeriesDescription", SE, "series_description"),
    _a("BodyPartExamined", SE, "body_part_examined"),
    _a("Laterality", SE, "laterality"),
    _a("PerformedProcedureStepStartDate", SE, "performed_start_date"),
    _a("PerformedProcedureStepStartTime", SE, "performed_start_time"),
    _a("NumberOfSeriesRelatedInstances", SE, None, False),
    _a("SOPInstanceUID", IN, "sop_instance_uid"),
    _a("SOPClassUID", IN, "sop_class_uid"),
    _a("InstanceNumber", IN, "instance_number"),
    _a("Rows", IN, "rows"),
    _a("Columns", IN, "columns"),
    _a("BitsAllocated", IN, "bits_allocated"),
    _a("NumberOfFrames", IN, "number_of_frames"),
    _a("AvailableTransferSyntaxUID", IN, "transfer_syntax_uid"),
)
_BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}
_BY_TAG = {a.tag: a for a in ATTRIBUTES}


def by_keyword(keyword: str) -> Attribute | None:
    return _BY_KEYWORD.get(keyword)


def by_tag(tag: str) -> Attribute | None:
    return _BY_TAG.get(tag.upper())


def resolve_attribute(name: str) -> tuple[str, str] | None:
    """A query key (keyword or eight hex digits) as (keyword, tag); None if not DICOM."""
    if len(name) == 8:
        try:
            tag = int(name, 16)
        except ValueError:
            tag = None
        if tag is not None:
            return keyword_for_tag(tag) or name.upper(), f"{tag:08X}"
    tag_value = tag_for_keyword(name)
    if tag_value is None:
        return None
    return name, f"{tag_value:08X}"


def name_key(value: str) -> str:
    """A person name folded for matching: no accents, upper case, single spaces."""
    folded = unicodedata.normalize("NFKD", value)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return " ".join(folded.upper().split())[:330]


_MAX = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "PN": 324,
        "SH": 16, "TM": 16, "UI": 64}


def _text(ds: Dataset, keyword: str, vr: str, limit: int | None = None) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # an undecodable value indexes as empty
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().rstrip("\0").strip()
    return text[: limit or _MAX.get(vr, 64)]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        number = int(value)
    except Exception:  # a malformed number indexes as absent
        return None
    return number if -(2**31) <= number < 2**31 else None


@dataclass
class IndexValues:
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]


def index_values(ds: Dataset) -> IndexValues:
    """The column values of the four index rows an instance belongs to."""
    name = _text(ds, "PatientName", "PN")
    patient = {
        "patient_id": _text(ds, "PatientID", "LO"),
        "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", "LO"),
        "patient_name": name,
        "patient_name_key": name_key(name),
        "birth_date": _text(ds, "PatientBirthDate", "DA"),
        "sex": _text(ds, "PatientSex", "CS"),
    }
    referring = _text(ds, "ReferringPhysicianName", "PN")
    study = {
        "study_date": _text(ds, "StudyDate", "DA"),
        "study_time": _text(ds, "StudyTime", "TM"),
        "accession_number": _text(ds, "AccessionNumber", "SH"),
        "study_id": _text(ds, "StudyID", "SH"),
        "study_description": _text(ds, "StudyDescription", "LO"),
        "referring_physician_name": referring,
        "referring_physician_key": name_key(referring),
        "timezone_offset": _text(ds, "TimezoneOffsetFromUTC", "SH", 5),
        "patient_id": patient["patient_id"],
        "issuer_of_patient_id": patient["issuer_of_patient_id"],
        "patient_name": name,
        "patient_name_key": patient["patient_name_key"],
        "patient_birth_date": patient["birth_date"],
        "patient_sex": patient["sex"],
    }
    series = {
        "modality": _text(ds, "Modality", "CS"),
        "series_number": _int(ds, "SeriesNumber"),
        "series_description": _text(ds, "SeriesDescription", "LO"),
        "body_part_examined": _text(ds, "BodyPartExamined", "CS"),
        "laterality": _text(ds, "Laterality", "CS") or _text(ds, "ImageLaterality", "CS"),
        "performed_start_date": _text(ds, "PerformedProcedureStepStartDate", "DA"),
        "performed_start_time": _text(ds, "PerformedProcedureStepStartTime", "TM"),
    }
    instance = {
        "instance_number": _int(ds, "InstanceNumber"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "number_of_frames": _int(ds, "NumberOfFrames"),
    }
    return IndexValues(patient, study, series, instance)
