"""Stored studies reach the chart: a FHIR ImagingStudy linked to the matched or new Patient."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from careplane.imaging.fhir_link import LINK_TASK, PATIENT_ID_SYSTEM
from careplane.imaging.models import DicomStudy
from careplane.imaging.store import store_instance
from careplane.platform.blobs import LocalBlobStore
from careplane.platform.db import Database
from careplane.platform.jobs import Worker
from careplane.platform.jobs._models import Job
from careplane.records.store import create, read
from careplane.security import Principal, Role
from careplane.security.identity import resolve_token
from tests.conftest import Accounts
from tests.imaging.conftest import make_instance


@pytest.fixture
def doctor(db: Database, accounts: Accounts, db_url: str,
           monkeypatch: pytest.MonkeyPatch) -> Principal:
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", db_url)  # where the job opens its database
    account = accounts.make("ana", Role.clinician)
    with db.session() as session:
        principal = resolve_token(session, account.token, kind="bearer")
    assert principal is not None
    return principal


def _run_jobs(db: Database) -> None:
    while Worker(db).run_once():
        pass


def test_study_linked_to_a_new_patient_and_refreshed(db: Database, blobs: LocalBlobStore,
                                                     doctor: Principal) -> None:
    study, series = generate_uid(), generate_uid()
    with db.session() as session:
        for number in (1, 2):
            assert store_instance(session, blobs, doctor, make_instance(
                study_uid=study, series_uid=series, instance_number=number,
                patient_id="NEW-1", patient_name="Haddad^Mina^J", modality="CR",
                accession="ACC-9", StudyDescription="Chest")).ok
    with db.session() as session:
        assert len(session.scalars(select(Job).where(Job.task == LINK_TASK)).all()) == 1
    _run_jobs(db)
    with db.session() as session:
        row = session.scalars(select(DicomStudy)).one()
        assert row.fhir_imaging_study_id is not None
        imaging = read(session, doctor, "ImagingStudy", row.fhir_imaging_study_id).content
        assert imaging is not None
        patient_ref = imaging["subject"]["reference"]
        patient = read(session, doctor, "Patient", patient_ref.split("/")[1]).content
    assert patient is not None
    assert patient["identifier"] == [{"system": PATIENT_ID_SYSTEM, "value": "NEW-1"}]
    assert patient["name"][0]["family"] == "Haddad"
    assert patient["name"][0]["given"] == ["Mina", "J"]
    assert patient["gender"] == "female" and patient["birthDate"] == "1970-01-01"
    assert imaging["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}
    assert imaging["identifier"][1]["value"] == "ACC-9"
    assert imaging["numberOfInstances"] == 2 and imaging["modality"][0]["code"] == "CR"
    assert imaging["started"] == "2024-01-02T10:15:00Z"
    assert [i["number"] for i in imaging["series"][0]["instance"]] == [1, 2]

    with db.session() as session:
        assert store_instance(session, blobs, doctor, make_instance(
            study_uid=study, patient_id="NEW-1", modality="DX", instance_number=3)).ok
    _run_jobs(db)
    with db.session() as session:
        again = session.scalars(select(DicomStudy)).one()
        assert again.fhir_imaging_study_id == row.fhir_imaging_study_id
        refreshed = read(session, doctor, "ImagingStudy", again.fhir_imaging_study_id)
    assert refreshed.version == 2
    assert refreshed.content is not None
    assert refreshed.content["numberOfSeries"] == 2
    assert {m["code"] for m in refreshed.content["modality"]} == {"CR", "DX"}


def test_existing_patient_matched_by_hospital_number(db: Database, blobs: LocalBlobStore,
                                                     doctor: Principal) -> None:
    with db.session() as session:
        chart = create(session, doctor, {
            "resourceType": "Patient", "name": [{"family": "Ruiz", "given": ["Ana"]}],
            "identifier": [{"system": "http://hospital.example/mrn", "value": "MRN-77"}]})
        assert store_instance(session, blobs, doctor, make_instance(patient_id="MRN-77")).ok
    _run_jobs(db)
    with db.session() as session:
        row = session.scalars(select(DicomStudy)).one()
        assert row.fhir_imaging_study_id is not None
        imaging = read(session, doctor, "ImagingStudy", row.fhir_imaging_study_id).content
    assert imaging is not None
    assert imaging["subject"] == {"reference": f"Patient/{chart.id}"}
