"""/api/audit and the /admin/audit page: admin only, organisation-scoped, break-the-glass
list with reasons and reviews, and a chain verification that notices tampering."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from careplane.platform.db import Database
from careplane.security import Role
from tests.conftest import Accounts
from tests.security.conftest import sign_in


def _emergency(client: TestClient, accounts: Accounts) -> tuple[str, dict[str, str]]:
    doctor = accounts.make("doctor", Role.clinician)
    admin = accounts.make("admin", Role.admin)
    pid = client.post("/fhir/Patient", headers=doctor.headers,
                      json={"resourceType": "Patient"}).json()["id"]
    client.post("/api/consents", headers=doctor.headers, json={
        "resourceType": "Consent", "status": "active", "scope": {"coding": [
            {"code": "patient-privacy"}]}, "patient": {"reference": f"Patient/{pid}"},
        "provision": {"type": "deny"}})
    response = client.get(f"/fhir/Patient/{pid}", headers={
        **doctor.headers, "X-Break-Glass-Reason": "anaphylaxis, need allergy list"})
    assert response.status_code == 200
    return pid, admin.headers


def test_audit_api_is_admin_only_and_filters(client: TestClient, accounts: Accounts) -> None:
    pid, admin = _emergency(client, accounts)
    nurse = accounts.make("nurse", Role.clinician)
    assert client.get("/api/audit", headers=nurse.headers).status_code == 403
    rows = client.get("/api/audit", params={"patient": pid}, headers=admin).json()
    assert rows and all(r["patient_id"] == pid for r in rows)
    flagged = client.get("/api/audit", params={"break_glass": True}, headers=admin).json()
    assert len(flagged) == 1 and flagged[0]["actor_name"] == "doctor"
    assert flagged[0]["purpose"] == "ETREAT"
    by_actor = client.get("/api/audit", params={"actor": "nurse"}, headers=admin).json()
    assert {r["outcome"] for r in by_actor} == {"denied"}  # the refused look at the trail
    other_org_admin = accounts.make("admin-b", Role.admin, org="org-b")
    assert all(r["patient_id"] != pid for r in client.get(
        "/api/audit", headers=other_org_admin.headers).json())


def test_break_glass_list_and_review(client: TestClient, accounts: Accounts) -> None:
    _pid, admin = _emergency(client, accounts)
    pending = client.get("/api/audit/break-glass", params={"pending": True},
                         headers=admin).json()
    assert len(pending) == 1
    entry = pending[0]
    assert entry["stated_reason"] == "anaphylaxis, need allergy list"
    audit_id = entry["audit"]["id"]
    reviewed = client.post(f"/api/audit/break-glass/{audit_id}/review", headers=admin,
                           json={"outcome": "justified", "note": "confirmed with ED"})
    assert reviewed.status_code == 200, reviewed.text
    assert reviewed.json()["reviewer"] == "admin"
    assert client.post(f"/api/audit/break-glass/{audit_id}/review", headers=admin,
                       json={"outcome": "justified"}).status_code == 409
    assert client.post("/api/audit/break-glass/1/review", headers=admin,
                       json={"outcome": "justified"}).status_code in (404, 409)
    assert client.post(f"/api/audit/break-glass/{audit_id}/review", headers=admin,
                       json={"outcome": "maybe"}).status_code == 422
    assert client.get("/api/audit/break-glass", params={"pending": True},
                      headers=admin).json() == []


def test_verify_api_reports_tampering(client: TestClient, accounts: Accounts,
                                      db: Database) -> None:
    _pid, admin = _emergency(client, accounts)
    ok = client.get("/api/audit/verify", headers=admin).json()
    assert ok["ok"] and ok["checked"] >= 3
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_record SET reason = 'nothing happened' "
                          "WHERE break_glass = :t"), {"t": True})
    broken = client.get("/api/audit/verify", headers=admin).json()
    assert not broken["ok"] and broken["first_bad_id"] is not None


def test_admin_page(client: TestClient, accounts: Accounts) -> None:
    pid, _admin = _emergency(client, accounts)
    csrf = sign_in(client, "admin", "admin-password")
    page = client.get("/admin/audit")
    assert page.status_code == 200
    assert "anaphylaxis, need allergy list" in page.text and pid in page.text
    assert 'href="/admin/audit"' in page.text  # in the navigation for admins
    verified = client.post("/admin/audit/verify", headers={"X-CSRF-Token": csrf})
    assert verified.status_code == 200 and "Chain intact" in verified.text
    audit_id = page.text.split('action="/admin/audit/break-glass/', 1)[1].split('"', 1)[0]
    # A plain HTML form post proves CSRF with its hidden field.
    reviewed = client.post(f"/admin/audit/break-glass/{audit_id}",
                           data={"csrf": csrf, "outcome": "unjustified", "note": "no ED record"},
                           follow_redirects=False)
    assert reviewed.status_code == 303, reviewed.text
    assert "unjustified by admin" in client.get("/admin/audit").text
    client.cookies.clear()
    nurse = accounts.make("nurse", Role.clinician)
    sign_in(client, "nurse", nurse.password)
    assert client.get("/admin/audit").status_code == 403
    assert 'href="/admin/audit"' not in client.get("/").text
    client.cookies.clear()
    assert client.get("/admin/audit", follow_redirects=False).status_code == 303
