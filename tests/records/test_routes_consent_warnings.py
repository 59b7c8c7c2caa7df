"""A FHIR Consent kept with parts careplane cannot enforce tells the client which parts, as
OperationOutcome warnings (``Prefer: return=OperationOutcome``), rather than only storing them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplane.security import Role
from tests.conftest import Accounts
from tests.records.conftest import Fhir, patient

OUTCOME = {"Prefer": "return=OperationOutcome"}


@pytest.fixture
def doctor(client: TestClient, accounts: Accounts) -> Fhir:
    return Fhir(client, accounts.make("doctor", Role.clinician, org="org-a").headers)


def _consent(pid: str, provision: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                            "consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"}, "provision": provision}


def _warnings(response: Any) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    return [i["diagnostics"] for i in body["issue"] if i["severity"] == "warning"]


def test_unenforced_parts_come_back_as_warnings(doctor: Fhir) -> None:
    pid = doctor.create(patient("Warned"))["id"]
    provision = {"type": "permit", "data": [{"meaning": "instance", "reference": {
        "reference": f"Patient/{pid}"}}]}
    created = doctor.post("Consent", _consent(pid, provision), headers=OUTCOME)
    assert created.status_code == 201, created.text
    cid = created.headers["Location"].split("/Consent/")[1].split("/")[0]
    warned = _warnings(created)
    assert len(warned) == 1 and warned[0].startswith(f"Consent/{cid}: Consent.provision")
    assert "not enforced" in warned[0]
    informational = [i for i in created.json()["issue"] if i["severity"] == "information"]
    assert informational and f"Consent/{cid}" in informational[0]["diagnostics"]

    # A new version says what it cannot enforce; one whose every part is enforced, nothing.
    changed = {"type": "permit", "dataPeriod": {"start": "2020-01-01"}}
    body = {**_consent(pid, changed), "id": cid}
    updated = doctor.put(f"Consent/{cid}", body, headers=OUTCOME)
    assert updated.status_code == 200, updated.text
    assert _warnings(updated) == warned
    clean = doctor.put(f"Consent/{cid}", {**_consent(pid, {"type": "permit"}), "id": cid},
                       headers=OUTCOME)
    assert clean.status_code == 200 and _warnings(clean) == []


def test_the_representation_is_unchanged_without_the_preference(doctor: Fhir) -> None:
    pid = doctor.create(patient("Plain"))["id"]
    provision = {"type": "permit", "data": [{"meaning": "instance", "reference": {
        "reference": f"Patient/{pid}"}}]}
    created = doctor.post("Consent", _consent(pid, provision))
    assert created.status_code == 201
    assert created.json()["resourceType"] == "Consent"
    other = doctor.post("Patient", patient("Nobody warned"), headers=OUTCOME)
    assert other.status_code == 201 and _warnings(other) == []


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_bundle_entry_carries_its_own_warnings(doctor: Fhir, kind: str) -> None:
    """In a bundle the warnings go to the entry that caused them, as its response.outcome
    (FHIR's place for an entry's hints and warnings); the other entries carry none."""
    pid = doctor.create(patient("Bundled"))["id"]
    unenforced = {"type": "permit", "data": [{"meaning": "instance", "reference": {
        "reference": f"Patient/{pid}"}}]}
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": patient("Beside"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": _consent(pid, unenforced), "request": {"method": "POST",
                                                             "url": "Consent"}},
        {"resource": _consent(pid, {"type": "permit"}), "request": {"method": "POST",
                                                                     "url": "Consent"}}]}
    answered = doctor.post("", bundle)
    assert answered.status_code == 200, answered.text
    entries = answered.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["201", "201", "201"]
    first, warned, clean = (e["response"] for e in entries)
    assert "outcome" not in first and "outcome" not in clean, entries
    cid = warned["location"].split("/Consent/")[1].split("/")[0]
    issues = warned["outcome"]["issue"]
    assert [i["severity"] for i in issues] == ["warning"]
    assert issues[0]["diagnostics"].startswith(f"Consent/{cid}: Consent.provision")
    assert "not enforced" in issues[0]["diagnostics"]
