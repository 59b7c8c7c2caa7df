"""A FHIR Consent written through /fhir is enforced by the policy from the next request on."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.consent import ConsentDirective, ConsentProvision
from tests.conftest import Accounts
from tests.records.conftest import Fhir, patient


@pytest.fixture
def doctor(client: TestClient, accounts: Accounts) -> Fhir:
    return Fhir(client, accounts.make("doctor", Role.clinician, org="org-a").headers)


@pytest.fixture
def nurse(client: TestClient, accounts: Accounts) -> Fhir:
    return Fhir(client, accounts.make("nurse", Role.clinician, org="org-a").headers)


def _consent(pid: str, *, status: str = "active", actor: str | None = "nurse",
             decision: str = "deny", **extra: Any) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": decision}
    if actor:
        provision["actor"] = [{"role": {"text": "who"}, "reference": {"identifier": {
            "system": "urn:careplane:user", "value": actor}}}]
    return {"resourceType": "Consent", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                            "consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{pid}"}, "provision": provision, **extra}


def _directives(db: Database) -> list[tuple[str, str, int]]:
    with db.session() as session:
        rows = session.execute(select(ConsentDirective.source_ref, ConsentDirective.status,
                                      ConsentDirective.id)).all()
        return [(ref or "", status, len(session.scalars(select(ConsentProvision).where(
            ConsentProvision.consent_id == cid)).all())) for ref, status, cid in rows]


def test_consent_deny_written_by_fhir_is_enforced(doctor: Fhir, nurse: Fhir,
                                                  db: Database) -> None:
    pid = doctor.create(patient("Private"))["id"]
    assert nurse.get(f"Patient/{pid}").status_code == 200

    consent = doctor.create(_consent(pid))
    assert _directives(db) == [(f"Consent/{consent['id']}", "active", 1)]
    refused = nurse.get(f"Patient/{pid}")
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert doctor.get(f"Patient/{pid}").status_code == 200  # the deny names the nurse only

    # Withdrawn by an update (status inactive): the nurse reads again.
    updated = doctor.put(f"Consent/{consent['id']}",
                         {**_consent(pid, status="inactive"), "id": consent["id"]})
    assert updated.status_code == 200, updated.text
    assert nurse.get(f"Patient/{pid}").status_code == 200
    assert _directives(db) == [(f"Consent/{consent['id']}", "inactive", 0)]

    # Active again, then deleted: deleting the Consent removes its rules.
    again = doctor.put(f"Consent/{consent['id']}", {**_consent(pid), "id": consent["id"]})
    assert again.status_code == 200
    assert nurse.get(f"Patient/{pid}").status_code == 403
    assert doctor.delete(f"Consent/{consent['id']}").status_code in (200, 204)
    assert nurse.get(f"Patient/{pid}").status_code == 200
    assert _directives(db) == [(f"Consent/{consent['id']}", "inactive", 0)]


def test_consent_in_a_transaction_bundle_is_enforced(doctor: Fhir, nurse: Fhir) -> None:
    pid = doctor.create(patient("Bundled"))["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _consent(pid), "request": {"method": "POST", "url": "Consent"}}]}
    done = doctor.post("", bundle)
    assert done.status_code == 200, done.text
    assert nurse.get(f"Patient/{pid}").status_code == 403


def test_unenforceable_consent_is_refused_and_nothing_kept(doctor: Fhir, nurse: Fhir,
                                                           db: Database) -> None:
    pid = doctor.create(patient("Careful"))["id"]
    body = _consent(pid)
    del body["provision"]
    refused = doctor.post("Consent", body)
    assert refused.status_code == 422, refused.text
    assert "cannot be enforced" in refused.json()["issue"][0]["diagnostics"]
    assert doctor.ids("Consent") == [] and _directives(db) == []
    bad_time = _consent(pid)
    bad_time["provision"]["period"] = {"start": "2030-01-01T00:00:00Z",
                                       "end": "2020-01-01T00:00:00Z"}
    assert doctor.post("Consent", bad_time).status_code == 422
    assert nurse.get(f"Patient/{pid}").status_code == 200


def test_other_scopes_are_stored_but_not_rules(doctor: Fhir, nurse: Fhir,
                                               db: Database) -> None:
    pid = doctor.create(patient("Treatment"))["id"]
    body = _consent(pid)
    body["scope"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                           "consentscope", "code": "treatment"}]}
    assert doctor.post("Consent", body).status_code == 201
    assert _directives(db) == []
    assert nurse.get(f"Patient/{pid}").status_code == 200


def test_audit_event_cannot_be_written_through_a_bundle(doctor: Fhir) -> None:
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"},
             "recorded": "2024-01-01T00:00:00Z", "agent": [{"requestor": True}],
             "source": {"observer": {"display": "x"}}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]}
    refused = doctor.post("", bundle)
    assert refused.status_code == 405, refused.text
    assert "read-only" in refused.text
    batch = doctor.post("", {**bundle, "type": "batch"})
    assert batch.status_code == 200
    assert batch.json()["entry"][0]["response"]["status"].startswith("405")
