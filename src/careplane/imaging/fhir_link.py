"""Each stored study appears in the patient's chart: a FHIR ImagingStudy and its Patient.

Listens to the store through the job system: when a transaction changes studies of an
organisation, one job ``link_pending`` is queued for it (unless one is already waiting), and
that job brings every study changed since its last link up to date. Linking goes through the
records domain's public service functions (search, create, update), as a service principal
of the organisation, so the FHIR side is validated, indexed, audited and announced as if a
client had written it.

The Patient is matched by identifier: first the DICOM Patient ID under its issuer's system,
then (if exactly one Patient of the organisation carries it) the same value under any system,
e.g. the hospital number the chart already knows; else it is created from the DICOM
attributes. The ImagingStudy carries the Study Instance UID (``urn:dicom:uid``), the
accession number, modalities, counts, and each series with its instances.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from careplane.imaging.models import DicomInstance, DicomPatient, DicomSeries, DicomStudy
from careplane.platform.db import utcnow
from careplane.security import Principal, Role

__all__ = ["LINK_TASK", "PATIENT_ID_SYSTEM", "link_pending", "link_study", "queue_link"]

log = logging.getLogger(__name__)

LINK_TASK = "careplane.imaging.fhir_link:link_pending"
PATIENT_ID_SYSTEM = "urn:careplane:dicom:patient-id"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SEX = {"M": "male", "F": "female", "O": "other"}


def _service(org_id: str) -> Principal:
    return Principal(user_id="imaging-fhir-link", username="imaging (FHIR link)",
                     org_id=org_id, roles=frozenset({Role.service}), token_id="")


def _system(issuer: str) -> str:
    if not issuer:
        return PATIENT_ID_SYSTEM
    if re.match(r"^[a-z][a-z0-9+.-]*:", issuer, re.IGNORECASE):
        return issuer
    if re.match(r"^[0-2](\.\d+)+$", issuer):
        return f"urn:oid:{issuer}"
    return f"{PATIENT_ID_SYSTEM}:{re.sub(r'[^A-Za-z0-9._-]', '-', issuer)}"


def _date(value: str) -> str | None:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.match(r"^\d{8}$", value) else None


def _started(study: DicomStudy) -> str | None:
    day = _date(study.study_date)
    if day is None:
        return None
    time = re.match(r"^(\d{2})(\d{2})?(\d{2})?", study.study_time or "")
    if not time:
        return day
    hh, mm, ss = time.group(1), time.group(2) or "00", time.group(3) or "00"
    return f"{day}T{hh}:{mm}:{ss}Z"


def _search_ids(session: Session, principal: Principal, resource_type: str,
                pairs: list[tuple[str, str]]) -> list[str]:
    from careplane.records.search import run_search
    from careplane.records.search_params import parse_search

    request = parse_search(resource_type, [*pairs, ("_count", "2"), ("_total", "none")],
                           strict=True)
    return [found.id for found in run_search(session, principal, request).matches]


def _patient_body(patient: DicomPatient) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "identifier": [
        {"system": _system(patient.issuer_of_patient_id), "value": patient.patient_id}]}
    if patient.patient_name:
        alphabetic = patient.patient_name.split("=")[0]
        parts = alphabetic.split("^")
        name: dict[str, Any] = {"text": " ".join(p for p in (parts[1:2] + parts[:1]) if p)}
        if parts[0]:
            name["family"] = parts[0]
        given = [g for g in (parts[1:3] if len(parts) > 1 else []) if g]
        if given:
            name["given"] = given
        body["name"] = [name]
    if _date(patient.birth_date):
        body["birthDate"] = _date(patient.birth_date)
    body["gender"] = _SEX.get(patient.sex.upper(), "unknown")
    return body


def _patient(session: Session, principal: Principal, patient: DicomPatient) -> str | None:
    from careplane.records.store import create, read

    if patient.fhir_patient_id:
        try:
            read(session, principal, "Patient", patient.fhir_patient_id)
            return patient.fhir_patient_id
        except Exception:  # deleted or gone: match again
            patient.fhir_patient_id = None
    if not patient.patient_id:
        return None  # no identifier to match on: the study stays unlinked to a patient
    system = _system(patient.issuer_of_patient_id)
    found = _search_ids(session, principal, "Patient",
                        [("identifier", f"{system}|{patient.patient_id}")])
    if not found:
        found = _search_ids(session, principal, "Patient",
                            [("identifier", patient.patient_id)])
        found = found if len(found) == 1 else []
    if found:
        patient.fhir_patient_id = found[0]
    else:
        patient.fhir_patient_id = create(session, principal, _patient_body(patient)).id
    return patient.fhir_patient_id


def _imaging_study_body(session: Session, study: DicomStudy, patient_ref: str | None
                        ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "ImagingStudy", "status": "available",
        "identifier": [{"system": "urn:dicom:uid",
                        "value": f"urn:oid:{study.study_instance_uid}"}],
        "numberOfSeries": study.num_series, "numberOfInstances": study.num_instances,
    }
    if study.accession_number:
        body["identifier"].append({"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "value": study.accession_number})
    body["subject"] = ({"reference": f"Patient/{patient_ref}"} if patient_ref
                       else {"display": study.patient_name or "unknown patient"})
    started = _started(study)
    if started:
        body["started"] = started
    if study.study_description:
        body["description"] = study.study_description
    modalities = [m for m in study.modalities.split("\\") if m]
    if modalities:
        body["modality"] = [{"system": DCM, "code": m} for m in modalities]
    series_rows = session.scalars(select(DicomSeries).where(DicomSeries.study_pk == study.id)
                                  .order_by(DicomSeries.id)).all()
    instances: dict[int, list[DicomInstance]] = {}
    for instance in session.scalars(select(DicomInstance).where(
            DicomInstance.study_pk == study.id).order_by(DicomInstance.id)):
        instances.setdefault(instance.series_pk, []).append(instance)
    series_out = []
    for series in series_rows:
        item: dict[str, Any] = {"uid": series.series_instance_uid,
                                "modality": {"system": DCM, "code": series.modality or "OT"},
                                "numberOfInstances": series.num_instances}
        if series.series_number is not None and series.series_number >= 0:
            item["number"] = series.series_number
        if series.series_description:
            item["description"] = series.series_description
        if series.body_part_examined:
            item["bodySite"] = {"display": series.body_part_examined}
        if series.laterality in ("L", "R"):
            item["laterality"] = {"system": DCM, "code": series.laterality}
        item["instance"] = [
            {"uid": i.sop_instance_uid,
             "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
             **({"number": i.instance_number} if i.instance_number is not None
                and i.instance_number >= 0 else {})}
            for i in instances.get(series.id, [])]
        series_out.append(item)
    if series_out:
        body["series"] = series_out
    return body


def link_study(session: Session, study: DicomStudy) -> str:
    """Create or refresh the study's ImagingStudy (and match or create its Patient).

    Returns the ImagingStudy id. Runs in the caller's transaction.
    """
    from careplane.records.store import create, update

    principal = _service(study.org_id)
    patient = session.get(DicomPatient, study.patient_pk)
    patient_ref = _patient(session, principal, patient) if patient is not None else None
    body = _imaging_study_body(session, study, patient_ref)
    if study.fhir_imaging_study_id is None:
        found = _search_ids(session, principal, "ImagingStudy", [
            ("identifier", f"urn:dicom:uid|urn:oid:{study.study_instance_uid}")])
        if found:
            study.fhir_imaging_study_id = found[0]
    if study.fhir_imaging_study_id is None:
        study.fhir_imaging_study_id = create(session, principal, body).id
    else:
        body["id"] = study.fhir_imaging_study_id
        update(session, principal, "ImagingStudy", study.fhir_imaging_study_id, body)
    study.fhir_synced_at = utcnow()
    return study.fhir_imaging_study_id


def queue_link(session: Session, org_id: str) -> None:
    """Ask for the organisation's changed studies to be linked, once while none is waiting."""
    from careplane.platform.jobs import submit
    from careplane.platform.jobs._models import Job

    waiting = session.scalars(select(Job.id).where(
        Job.task == LINK_TASK, Job.org_id == org_id, Job.status == "queued").limit(1)).first()
    if waiting is None:
        submit(session, LINK_TASK, {"org_id": org_id}, title="Link imaging studies to FHIR",
               org_id=org_id, max_attempts=5)


def pending(session: Session, org_id: str, limit: int = 200) -> list[DicomStudy]:
    return list(session.scalars(select(DicomStudy).where(
        DicomStudy.org_id == org_id,
        DicomStudy.research_project.is_(None),  # research copies stay out of the chart
        or_(DicomStudy.fhir_synced_at.is_(None),
            DicomStudy.fhir_synced_at < DicomStudy.updated_at))
        .order_by(DicomStudy.id).limit(limit)))


def link_pending(ctx: Any) -> dict[str, Any]:
    """The job: link every study of ``ctx.args['org_id']`` changed since it was last linked."""
    from careplane.platform.db import Database
    from careplane.settings import load_settings

    org_id = str(ctx.args["org_id"])
    db = Database(load_settings().db_url)
    linked = failed = 0
    try:
        while True:
            ctx.check()
            problems: list[str] = []
            # Report progress only between transactions: the worker writes it through its
            # own connection, which must not wait on this one's locks (SQLite).
            with db.session() as session:
                batch = pending(session, org_id)
                if not batch:
                    break
                for study in batch:
                    try:
                        with session.begin_nested():
                            link_study(session, study)
                        linked += 1
                    except Exception as exc:  # one bad study must not block the others
                        failed += 1
                        study.fhir_synced_at = utcnow()  # not retried until it changes again
                        problems.append(f"study {study.study_instance_uid} not linked: {exc}")
            for line in problems:
                ctx.log(line, "warning")
            ctx.progress(linked + failed, None, f"{linked} studies linked")
    finally:
        db.dispose()
    return {"linked": linked, "failed": failed}
