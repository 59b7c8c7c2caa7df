"""/api/consents and /api/grants over HTTP, and their effect on FHIR reads end to end:
a deny consent refuses, a grant opens another organisation's record, a deny beats the grant,
and a clinician's stated emergency (X-Break-Glass-Reason) gets through, flagged."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.identity import link_patient
from careplane.security.models import Organisation, User
from tests.conftest import Account, Accounts


def _patient(client: TestClient, who: Account) -> str:
    response = client.post("/fhir/Patient", headers=who.headers,
                           json={"resourceType": "Patient", "name": [{"family": "Doe"}]})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _consent(patient_id: str, provision: dict[str, Any], cid: str = "c1") -> dict[str, Any]:
    return {"resourceType": "Consent", "id": cid, "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "patient": {"reference": f"Patient/{patient_id}"}, "provision": provision}


def test_consent_api_and_enforcement(client: TestClient, accounts: Accounts) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    nurse = accounts.make("nurse", Role.clinician)
    pid = _patient(client, doctor)
    deny_nurse = _consent(pid, {"type": "permit", "provision": [{
        "type": "deny", "actor": [{"reference": {"identifier": {
            "system": "urn:careplane:user", "value": "nurse"}}}]}]})
    made = client.post("/api/consents", json=deny_nurse, headers=doctor.headers)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["patient_id"] == pid and len(body["provisions"]) == 2
    assert client.get(f"/fhir/Patient/{pid}", headers=doctor.headers).status_code == 200
    refused = client.get(f"/fhir/Patient/{pid}", headers=nurse.headers)
    assert refused.status_code == 403
    urgent = client.get(f"/fhir/Patient/{pid}", headers={
        **nurse.headers, "X-Break-Glass-Reason": "patient collapsed on the ward"})
    assert urgent.status_code == 200
    too_short = client.get(f"/fhir/Patient/{pid}",
                           headers={**nurse.headers, "X-Break-Glass-Reason": "urgent"})
    assert too_short.status_code == 400
    listed = client.get("/api/consents", params={"patient": pid}, headers=doctor.headers)
    assert [c["id"] for c in listed.json()] == [body["id"]]
    assert client.delete(f"/api/consents/{body['id']}", headers=doctor.headers).status_code == 204
    assert client.get(f"/fhir/Patient/{pid}", headers=nurse.headers).status_code == 200
    bad = client.post("/api/consents", json={"resourceType": "Consent"}, headers=doctor.headers)
    assert bad.status_code == 422
    assert client.delete("/api/consents/nope", headers=doctor.headers).status_code == 404


def test_patient_records_own_consent_only(client: TestClient, accounts: Accounts,
                                          db: Database) -> None:
    doctor = accounts.make("doctor", Role.clinician)
    me = accounts.make("pat", Role.patient)
    pid = _patient(client, doctor)
    other = _patient(client, doctor)
    with db.session() as session:
        user, org = session.get(User, me.user_id), session.get(Organisation, me.org_id)
        assert user is not None and org is not None
        link_patient(session, user, org, pid)
    own = client.post("/api/consents", json=_consent(pid, {"type": "deny", "purpose": [
        {"code": "HRESCH"}]}), headers=me.headers)
    assert own.status_code == 201, own.text
    assert client.post("/api/consents", json=_consent(other, {"type": "deny"}, "c2"),
                       headers=me.headers).status_code == 403
    assert [c["patient_id"] for c in client.get("/api/consents", headers=me.headers).json()] \
        == [pid]
    assert client.get(f"/fhir/Patient/{pid}", headers=me.headers).status_code == 200
    assert client.get(f"/fhir/Patient/{other}", headers=me.headers).status_code == 403


def test_grant_across_organisations_and_deny_beats_it(client: TestClient,
                                                      accounts: Accounts) -> None:
    admin_a = accounts.make("admin-a", Role.admin, org="org-a")
    doctor_a = accounts.make("doctor-a", Role.clinician, org="org-a")
    doctor_b = accounts.make("doctor-b", Role.clinician, org="org-b")
    pid = _patient(client, doctor_a)
    assert client.get(f"/fhir/Patient/{pid}", headers=doctor_b.headers).status_code == 403
    # Only an administrator grants.
    grant_body = {"grantee_org": "org-b", "kinds": ["records:*"], "actions": ["read"],
                  "reason": "shared care"}
    assert client.post("/api/grants", json=grant_body,
                       headers=doctor_a.headers).status_code == 403
    made = client.post("/api/grants", json=grant_body, headers=admin_a.headers)
    assert made.status_code == 201, made.text
    grant_id = made.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers=doctor_b.headers).status_code == 200
    # The patient refuses org B: the refusal wins over the grant.
    deny_b = _consent(pid, {"type": "permit", "provision": [{
        "type": "deny", "actor": [{"reference": {"reference": "Organization/org-b"}}]}]})
    assert client.post("/api/consents", json=deny_b,
                       headers=doctor_a.headers).status_code == 201
    assert client.get(f"/fhir/Patient/{pid}", headers=doctor_b.headers).status_code == 403
    assert [g["id"] for g in client.get("/api/grants", headers=admin_a.headers).json()] \
        == [grant_id]
    assert client.delete(f"/api/grants/{grant_id}", headers=admin_a.headers).status_code == 204
    assert client.delete("/api/grants/nope", headers=admin_a.headers).status_code == 404
    for bad in ({**grant_body, "grantee_org": "nowhere"}, {**grant_body, "kinds": ["bad"]},
                {"kinds": ["records:*"], "actions": ["read"]},
                {**grant_body, "actions": ["fly"]},
                {**grant_body, "valid_until": "2030-01-01T00:00:00"}):
        assert client.post("/api/grants", json=bad, headers=admin_a.headers).status_code == 422


def test_admin_links_a_patient_user_to_their_record(client: TestClient,
                                                    accounts: Accounts) -> None:
    admin = accounts.make("admin", Role.admin)
    doctor = accounts.make("doctor", Role.clinician)
    me = accounts.make("pat", Role.patient)
    pid = _patient(client, doctor)
    assert client.get(f"/fhir/Patient/{pid}", headers=me.headers).status_code == 403
    body = {"username": "pat", "patient_id": pid}
    assert client.put("/api/patient-links", json=body, headers=doctor.headers).status_code == 403
    linked = client.put("/api/patient-links", json=body, headers=admin.headers)
    assert linked.status_code == 200, linked.text
    assert linked.json()["patient_id"] == pid
    assert client.get(f"/fhir/Patient/{pid}", headers=me.headers).status_code == 200
    assert client.put("/api/patient-links", json={**body, "username": "doctor"},
                      headers=admin.headers).status_code == 422  # not a patient
    assert client.put("/api/patient-links", json={**body, "username": "nobody"},
                      headers=admin.headers).status_code == 404
