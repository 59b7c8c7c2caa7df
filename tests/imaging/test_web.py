"""The imaging pages: study list per patient and the viewer page."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from careplane.security import Role
from tests.conftest import Accounts
from tests.imaging.conftest import make_instance, multipart


def test_study_list_and_viewer(client: TestClient, accounts: Accounts) -> None:
    doctor = accounts.make("ana", Role.clinician)
    study, series = generate_uid(), generate_uid()
    parts = [make_instance(patient_id="PID-9", patient_name="Okoye^Sam", study_uid=study,
                           series_uid=series, instance_number=n, frames=2 if n == 2 else None,
                           StudyDescription="Chest PA")
             for n in (1, 2)]
    parts.append(make_instance(patient_id="PID-3", patient_name="Lee^Kim"))
    body, headers = multipart(parts)
    assert client.post("/dicomweb/studies", content=body,
                       headers={**headers, **doctor.headers}).status_code == 200

    page = client.get("/imaging", headers=doctor.headers)
    assert page.status_code == 200
    assert 'href="/imaging"' in page.text and "Okoye Sam" in page.text and "Lee Kim" in page.text
    only = client.get("/imaging", params={"patient": "okoye"}, headers=doctor.headers)
    assert "Okoye Sam" in only.text and "Lee Kim" not in only.text
    assert f"/imaging/studies/{study}" in only.text
    assert client.get("/imaging", params={"patient": "PID-3"},
                      headers=doctor.headers).text.count('data-testid="study"') == 1

    viewer = client.get(f"/imaging/studies/{study}", headers=doctor.headers)
    assert viewer.status_code == 200
    assert "Chest PA" in viewer.text and "/static/imaging.js" in viewer.text
    assert f'data-series="{series}"' in viewer.text
    assert viewer.text.count("<li data-instance=") == 2 and 'data-frames="2"' in viewer.text
    script = client.get("/static/imaging.js")
    assert script.status_code == 200 and "/rendered?" in script.text


def test_pages_need_a_signed_in_user_of_the_organisation(client: TestClient,
                                                         accounts: Accounts) -> None:
    owner = accounts.make("owner", Role.radiologist)
    study = generate_uid()
    body, headers = multipart([make_instance(study_uid=study)])
    client.post("/dicomweb/studies", content=body, headers={**headers, **owner.headers})
    anonymous = client.get("/imaging", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    stranger = accounts.make("stranger", Role.radiologist, org="org-b")
    assert client.get(f"/imaging/studies/{study}", headers=stranger.headers).status_code == 403
    assert client.get(f"/imaging/studies/{generate_uid()}",
                      headers=owner.headers).status_code == 404
    assert "Okoye" not in client.get("/imaging", headers=stranger.headers).text
