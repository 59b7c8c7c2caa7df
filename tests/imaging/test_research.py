"""De-identified research copies on the real chest CR and mammograms: the route, the job, and
what researchers granted a project (and no one else) see of them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from careplane.imaging.sample_data import chest_cr, mammogram_files
from careplane.platform.db import Database
from careplane.platform.jobs import Worker
from careplane.security import Role
from careplane.security.grants import create_grant
from careplane.security.policy import Action
from careplane.settings import Settings
from tests.conftest import Account, Accounts
from tests.imaging.conftest import multipart

PROJECT = "lung-ai"
CODES = {"basic": "113100", "modified_dates": "113107", "descriptors": "113105",
         "graphics": "113103", "pixels": "113101"}


@pytest.fixture
def job_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job reads its settings from the environment, as a worker process does."""
    monkeypatch.setenv("CAREPLANE_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("CAREPLANE_DATA_DIR", str(settings.data_dir))


@pytest.fixture
def radiologist(accounts: Accounts) -> Account:
    return accounts.make("rad", Role.radiologist)


def _store(client: TestClient, who: Account, files: list[Path]) -> list[pydicom.Dataset]:
    body, headers = multipart([f.read_bytes() for f in files])
    response = client.post("/dicomweb/studies", content=body,
                           headers={**headers, **who.headers})
    assert response.status_code == 200, response.text
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _run_jobs(db: Database) -> None:
    while Worker(db).run_once():
        pass


def _deidentify(client: TestClient, db: Database, who: Account, **body: Any) -> dict[str, Any]:
    queued = client.post("/api/imaging/research/deidentify", json=body, headers=who.headers)
    assert queued.status_code == 202, queued.text
    _run_jobs(db)
    job = client.get(queued.json()["status_url"], headers=who.headers).json()
    assert job["status"] == "succeeded", job
    return dict(job["result"])


def _grant(db: Database, accounts: Accounts, researcher: Account, project: str,
           org: str = "org-a") -> None:
    with db.session() as session:
        create_grant(session, grantor_org_id=accounts.org(org), kinds=["imaging:*"],
                     actions=[Action.read, Action.search], grantee_user_id=researcher.user_id,
                     workspace_id=project, deidentified_only=True, reason="test")


def _instance(client: TestClient, who: Account, study: str) -> pydicom.Dataset:
    found = client.get(f"/dicomweb/studies/{study}/instances", headers=who.headers)
    assert found.status_code == 200, found.text
    item = found.json()[0]
    series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
    raw = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                     headers={**who.headers, "Accept": "application/dicom"})
    assert raw.status_code == 200
    return pydicom.dcmread(io.BytesIO(raw.content))


def _codes(ds: pydicom.Dataset) -> set[str]:
    return {str(item.CodeValue) for item in ds.DeidentificationMethodCodeSequence}


def test_study_copied_into_a_project_for_its_researchers(
        client: TestClient, db: Database, accounts: Accounts, radiologist: Account,
        job_env: None) -> None:
    (source,) = _store(client, radiologist, [chest_cr()])
    result = _deidentify(client, db, radiologist, project=PROJECT,
                         studies=[source.StudyInstanceUID],
                         options=["retain_longitudinal_modified_dates", "clean_descriptors",
                                  "clean_graphics"])
    copy_uid = result["studies"][source.StudyInstanceUID]
    assert copy_uid != source.StudyInstanceUID and result["instances"] == 1

    researcher = accounts.make("res", Role.researcher)
    denied = client.get("/dicomweb/studies", headers=researcher.headers)
    assert denied.status_code == 403 and "not granted" in denied.text
    _grant(db, accounts, researcher, PROJECT)
    listed = client.get("/dicomweb/studies", headers=researcher.headers).json()
    assert [s["0020000D"]["Value"][0] for s in listed] == [copy_uid]
    copy = _instance(client, researcher, copy_uid)
    assert copy.PatientIdentityRemoved == "YES"
    assert {CODES["basic"], CODES["modified_dates"], CODES["descriptors"],
            CODES["graphics"]} <= _codes(copy)
    assert copy.LongitudinalTemporalInformationModified == "MODIFIED"
    assert copy.PatientID != source.PatientID and copy.StudyDate != source.StudyDate
    assert copy.SOPInstanceUID != source.SOPInstanceUID
    assert str(source.PatientID) not in repr(copy)
    # the researcher never reaches the clinical original, even by its UID
    original = client.get(f"/dicomweb/studies/{source.StudyInstanceUID}/metadata",
                          headers=researcher.headers)
    assert original.status_code == 403
    # clinical lists and the chart leave the research copy out
    clinical = client.get("/dicomweb/studies", headers=radiologist.headers).json()
    assert [s["0020000D"]["Value"][0] for s in clinical] == [source.StudyInstanceUID]

    # the same source in the same project maps to the same copy; another project differs
    again = _deidentify(client, db, radiologist, project=PROJECT,
                        studies=[source.StudyInstanceUID],
                        options=["retain_longitudinal_modified_dates", "clean_descriptors",
                                 "clean_graphics"])
    assert again["studies"] == result["studies"]
    assert len(client.get("/dicomweb/studies", headers=researcher.headers).json()) == 1
    other = _deidentify(client, db, radiologist, project="other-study",
                        studies=[source.StudyInstanceUID])
    assert other["studies"][source.StudyInstanceUID] != copy_uid
    # a grant for one project shows nothing of another
    assert len(client.get("/dicomweb/studies", headers=researcher.headers).json()) == 1


def test_all_of_a_patients_mammograms_with_pixels_cleaned(
        client: TestClient, db: Database, accounts: Accounts, radiologist: Account,
        job_env: None) -> None:
    files = [f for f in mammogram_files()
             if pydicom.dcmread(f, stop_before_pixels=True).PatientID
             == "Mass-Test_P_00173_RIGHT_CC"]
    assert files
    (source,) = _store(client, radiologist, files[:1])
    region = {"top": 0, "left": 0, "bottom": 200, "right": 600}
    result = _deidentify(client, db, radiologist, project=PROJECT,
                         patient_id=str(source.PatientID), options=["clean_pixel_data"],
                         pixel_regions=[region])
    copy_uid = result["studies"][source.StudyInstanceUID]
    researcher = accounts.make("res2", Role.researcher)
    _grant(db, accounts, researcher, PROJECT)
    copy = _instance(client, researcher, copy_uid)
    assert CODES["pixels"] in _codes(copy) and copy.BurnedInAnnotation == "NO"
    assert copy.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    original = pydicom.dcmread(files[0]).pixel_array
    pixels = copy.pixel_array
    assert pixels.shape == original.shape
    assert (pixels[:200, :600] == original.min()).all()
    assert np.array_equal(pixels[200:, :], original[200:, :])
    assert np.array_equal(pixels[:200, 600:], original[:200, 600:])


def test_burned_in_annotation_is_refused_unless_cleaned_or_accepted(
        client: TestClient, db: Database, radiologist: Account, job_env: None) -> None:
    ds = pydicom.dcmread(chest_cr())
    ds.BurnedInAnnotation = "YES"
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    body, headers = multipart([data.getvalue()])
    assert client.post("/dicomweb/studies", content=body,
                       headers={**headers, **radiologist.headers}).status_code == 200
    queued = client.post("/api/imaging/research/deidentify", headers=radiologist.headers,
                         json={"project": PROJECT, "studies": [ds.StudyInstanceUID]})
    _run_jobs(db)
    job = client.get(queued.json()["status_url"], headers=radiologist.headers).json()
    assert job["status"] == "failed" and "refused" in job["error"]
    accepted = _deidentify(client, db, radiologist, project=PROJECT,
                           studies=[ds.StudyInstanceUID], allow_burned_in=True)
    assert accepted["instances"] == 1


@pytest.mark.parametrize(("body", "code", "message"), [
    ({"project": PROJECT}, 422, "either studies or a patient_id"),
    ({"project": PROJECT, "studies": ["1.2.3"], "patient_id": "x"}, 422, "either"),
    ({"project": "no spaces", "studies": ["1.2.3"]}, 422, "project"),
    ({"project": PROJECT, "studies": ["1.2.3"], "options": ["retain_safe_private"]}, 422,
     "options"),
    ({"project": PROJECT, "studies": ["1.2.3"], "options": ["clean_pixel_data"]}, 422,
     "pixel_regions"),
    ({"project": PROJECT, "studies": ["1.2.3"]}, 404, "no clinical study 1.2.3"),
    ({"project": PROJECT, "patient_id": "nobody"}, 404, "no studies of patient nobody"),
])
def test_bad_requests(client: TestClient, radiologist: Account, body: dict[str, Any],
                      code: int, message: str) -> None:
    response = client.post("/api/imaging/research/deidentify", json=body,
                           headers=radiologist.headers)
    assert response.status_code == code, response.text
    assert message in response.text


def test_researchers_cannot_copy_identifiable_studies(
        client: TestClient, accounts: Accounts, radiologist: Account) -> None:
    (source,) = _store(client, radiologist, [chest_cr()])
    researcher = accounts.make("res3", Role.researcher)
    response = client.post("/api/imaging/research/deidentify", headers=researcher.headers,
                           json={"project": PROJECT, "studies": [source.StudyInstanceUID]})
    assert response.status_code == 403
