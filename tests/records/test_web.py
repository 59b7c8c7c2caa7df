"""The patient list and chart pages, and the chart's service."""

from __future__ import annotations

from typing import Any

from careplane.records.chart import Series, patient_row
from careplane.records.web import plot
from tests.records.conftest import Fhir, observation, patient


def _seed(fhir: Fhir) -> str:
    pid = fhir.create(patient("Haddad", "Mina", birthDate="1980-04-02", gender="female",
                              identifier=[{"system": "urn:mrn", "value": "A0042"}]))["id"]
    ref = f"Patient/{pid}"
    fhir.create({"resourceType": "Condition", "subject": {"reference": ref},
                 "code": {"text": "Hypertension"}, "onsetDateTime": "2019-05-01",
                 "clinicalStatus": {"coding": [{"code": "active"}]}})
    fhir.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                 "subject": {"reference": ref},
                 "medicationCodeableConcept": {"text": "amlodipine 5 MG Oral Tablet"}})
    fhir.create({"resourceType": "Encounter", "status": "finished", "subject": {"reference": ref},
                 "class": {"code": "AMB", "display": "ambulatory"},
                 "type": [{"text": "Check-up"}], "period": {"start": "2024-03-01T09:00:00Z"}})
    for day, (sys_, dia) in enumerate([(150, 95), (142, 90), (131, 84)], start=1):
        fhir.create({"resourceType": "Observation", "status": "final",
                     "category": [{"coding": [{"code": "vital-signs"}]}],
                     "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                                          "display": "Blood pressure"}]},
                     "subject": {"reference": ref},
                     "effectiveDateTime": f"2024-03-0{day}T10:00:00Z",
                     "component": [
                         {"code": {"coding": [{"code": "8480-6",
                                               "display": "Systolic blood pressure"}]},
                          "valueQuantity": {"value": sys_, "unit": "mm[Hg]"}},
                         {"code": {"coding": [{"code": "8462-4",
                                               "display": "Diastolic blood pressure"}]},
                          "valueQuantity": {"value": dia, "unit": "mm[Hg]"}}]})
    fhir.create(observation(ref, code="2345-7", value=5.4, unit="mmol/L",
                            category=[{"coding": [{"code": "laboratory"}]}]))
    return pid


def test_patient_list_and_chart(fhir: Fhir, client: Any) -> None:
    pid = _seed(fhir)
    fhir.create(patient("Other", "Person"))
    headers = fhir.headers
    page = client.get("/patients", params={"q": "hadd"}, headers=headers)
    assert page.status_code == 200
    assert "Mina Haddad" in page.text and "Other" not in page.text
    assert client.get("/patients", params={"q": "A0042"}, headers=headers).text.count(
        'data-testid="patient-row"') == 1
    assert client.get("/patients", headers=headers).text.count('data-testid="patient-row"') == 2
    chart = client.get(f"/patients/{pid}", headers=headers)
    assert chart.status_code == 200
    html = chart.text
    for text in ("Hypertension", "amlodipine", "Check-up", "Systolic blood pressure",
                 "Diastolic blood pressure", "A0042"):
        assert text in html, text
    assert "<polyline" in html and 'data-records-patient="' + pid in html
    fragment = client.get(f"/patients/{pid}/observations", headers=headers)
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "131 mm[Hg]" in fragment.text  # the latest systolic value
    assert client.get("/patients/nobody", headers=headers).status_code == 404


def test_pages_need_a_login_and_respect_the_organisation(fhir: Fhir, other_org: Fhir,
                                                         client: Any) -> None:
    pid = _seed(fhir)
    login = client.get(f"/patients/{pid}", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"].startswith("/login")
    assert client.get(f"/patients/{pid}", headers=other_org.headers).status_code == 403
    listing = client.get("/patients", headers=other_org.headers)
    assert "Haddad" not in listing.text


def test_patient_row_and_plot() -> None:
    row = patient_row({"resourceType": "Patient", "id": "p", "birthDate": "2000-06-15",
                       "name": [{"given": ["Ana"], "family": "Ruiz"}]})
    assert row.name == "Ana Ruiz" and row.age is not None and row.age >= 24
    series = Series("8867-4", "Heart rate", "/min", "vital-signs")
    from careplane.records.chart import Point

    series.points += [Point("2024-01-01", 60), Point("2024-01-02", 90), Point("2024-01-03", 75)]
    drawn = plot(series)
    xs = [float(p.split(",")[0]) for p in drawn.points.split()]
    ys = [float(p.split(",")[1]) for p in drawn.points.split()]
    assert xs == sorted(xs) and (drawn.low, drawn.high) == (60, 90)
    assert ys[1] < ys[2] < ys[0]  # higher values are drawn higher up
