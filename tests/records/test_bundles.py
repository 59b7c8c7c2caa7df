"""Batch and transaction bundles: atomicity, urn:uuid and conditional references, limits."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from careplane.platform.db import Database
from careplane.platform.events import EventRecord
from careplane.records.config import FhirConfig
from careplane.records.models import INDEX_TABLES, resource, resource_version
from careplane.security import Role
from careplane.security.audit import AuditRecord, flush_all, verify
from tests.records.conftest import Fhir, observation, patient

PATIENT_URN = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"


def entry(method: str, url: str, res: dict[str, Any] | None = None,
          full_url: str | None = None, **request: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if res is not None:
        e["resource"] = res
    if full_url:
        e["fullUrl"] = full_url
    return e


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def stored_rows(db: Database) -> tuple[int, ...]:
    with db.session() as s:
        return (s.scalar(select(func.count()).select_from(resource)) or 0,
                s.scalar(select(func.count()).select_from(resource_version)) or 0,
                *(s.scalar(select(func.count()).select_from(t)) or 0
                  for t in INDEX_TABLES.values()),
                s.scalar(select(func.count()).select_from(EventRecord)) or 0)


def test_transaction_resolves_urn_uuid_references(fhir: Fhir) -> None:
    r = fhir.post("", bundle(
        "transaction",
        entry("POST", "Observation", observation(PATIENT_URN)),
        entry("POST", "Patient", patient(identifier=[{"system": "urn:mrn", "value": "T1"}]),
              full_url=PATIENT_URN),
        entry("PUT", "Patient/fixed-id", patient("Fixed", id="fixed-id")),
    ))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    obs = out["entry"][0]["resource"]
    pid = out["entry"][1]["resource"]["id"]
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert out["entry"][1]["response"]["location"].endswith(f"/Patient/{pid}/_history/1")
    assert fhir.ids("Observation", {"patient": pid}) == [obs["id"]]
    # a second transaction: conditional reference and a conditional create that matches
    r = fhir.post("", bundle(
        "transaction",
        entry("POST", "Patient", patient(identifier=[{"system": "urn:mrn", "value": "T1"}]),
              full_url="urn:uuid:1", ifNoneExist="identifier=urn:mrn|T1"),
        entry("POST", "Observation", observation("urn:uuid:1")),
        entry("POST", "Observation", observation("Patient?identifier=urn:mrn|T1")),
        entry("GET", f"Patient/{pid}"),
        entry("DELETE", "Patient/fixed-id"),
    ))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert out[0]["response"]["status"] == "200 OK" and out[0]["resource"]["id"] == pid
    assert out[1]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert out[2]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert out[3]["resource"]["id"] == pid
    assert out[4]["response"]["status"] == "204 No Content"
    assert len(fhir.ids("Observation", {"patient": pid})) == 3
    minimal = fhir.post("", bundle("transaction", entry("POST", "Patient", patient())),
                        headers={"Prefer": "return=minimal"}).json()["entry"][0]
    assert "resource" not in minimal and minimal["response"]["location"]


def test_each_condition_of_a_transaction_is_answered_on_its_own(fhir: Fhir, db: Database
                                                                ) -> None:
    """A transaction's conditions are searched together; each entry still gets its own
    answer, and a condition that matches twice or cannot be searched names its entry."""
    def org(value: str) -> dict[str, Any]:
        return {"resourceType": "Organization", "name": value,
                "identifier": [{"system": "urn:org", "value": value}]}

    kept = fhir.create(org("kept"))["id"]
    twice = [fhir.create(org("twice"))["id"] for _ in range(2)]
    r = fhir.post("", bundle(
        "transaction",
        entry("POST", "Organization", org("new"), ifNoneExist="identifier=urn:org|new"),
        entry("POST", "Organization", org("kept"), ifNoneExist="identifier=urn:org|kept"),
        entry("PUT", "Organization?identifier=urn:org|other", org("other")),
        entry("PUT", "Organization?identifier=urn:org|kept", {**org("kept"), "active": True}),
    ))
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert [e["response"]["status"] for e in out] == ["201 Created", "200 OK", "201 Created",
                                                      "200 OK"]
    assert out[1]["resource"]["id"] == out[3]["resource"]["id"] == kept
    assert out[3]["resource"]["active"] is True
    assert len({e["resource"]["id"] for e in out}) == 3
    before = stored_rows(db)
    for bad, status, code in (("identifier=urn:org|twice", 412, "multiple-matches"),
                              ("colour=blue", 400, "")):
        r = fhir.post("", bundle(
            "transaction",
            entry("POST", "Organization", org("more"), ifNoneExist="identifier=urn:org|more"),
            entry("POST", "Organization", org("twice"), ifNoneExist=bad)))
        assert r.status_code == status, r.text
        issue = r.json()["issue"][0]
        assert "Bundle.entry[1]" in issue["diagnostics"], issue
        assert code in issue["code"]
        assert stored_rows(db) == before
    assert sorted(fhir.ids("Organization", {"identifier": "urn:org|twice"})) == sorted(twice)


@pytest.mark.parametrize("failing", ["invalid", "if-match", "dangling", "conditional"])
def test_a_failing_entry_leaves_nothing_of_the_others(fhir: Fhir, db: Database,
                                                      failing: str) -> None:
    existing = fhir.create(patient("Before"))
    before = stored_rows(db)
    bad = {
        "invalid": entry("POST", "Patient", patient(birthDate="1999-02-30")),
        "if-match": entry("PUT", f"Patient/{existing['id']}", existing, ifMatch='W/"9"'),
        "dangling": entry("POST", "Observation", observation("urn:uuid:nowhere")),
        "conditional": entry("POST", "Observation", observation("Patient?family=nobody")),
    }[failing]
    r = fhir.post("", bundle(
        "transaction",
        entry("POST", "Patient", patient("One"), full_url=PATIENT_URN),
        entry("POST", "Observation", observation(PATIENT_URN)),
        entry("PUT", f"Patient/{existing['id']}", {**existing, "gender": "other"}),
        entry("DELETE", f"Patient/{existing['id']}"),
        bad,
    ) if failing != "if-match" else bundle(
        "transaction",
        entry("POST", "Patient", patient("One"), full_url=PATIENT_URN),
        entry("POST", "Observation", observation(PATIENT_URN)),
        bad,
    ))
    assert 400 <= r.status_code < 500, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[" in outcome["issue"][0]["diagnostics"]
    assert stored_rows(db) == before
    assert fhir.get(f"Patient/{existing['id']}").json()["meta"]["versionId"] == "1"


def test_batch_entries_succeed_or_fail_on_their_own(fhir: Fhir) -> None:
    existing = fhir.create(patient("Batch"))
    r = fhir.post("", bundle(
        "batch",
        entry("POST", "Patient", patient("Good")),
        entry("POST", "Patient", patient(birthDate="2001-02-30")),
        entry("GET", f"Patient/{existing['id']}"),
        entry("GET", "Patient/missing"),
        entry("GET", "Patient?family=batch"),
        entry("DELETE", f"Patient/{existing['id']}"),
    ))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "422"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "200 OK" and statuses[3] == "404"
    assert out["entry"][4]["resource"]["type"] == "searchset"
    assert statuses[5] == "204 No Content"
    assert fhir.ids("Patient", {"family": "good"}) == [out["entry"][0]["resource"]["id"]]


def test_bundle_limits_and_shape(fhir: Fhir, client: Any) -> None:
    client.app.state.fhir_config = FhirConfig(max_bundle_entries=3)
    big = bundle("batch", *[entry("POST", "Patient", patient()) for _ in range(4)])
    r = fhir.post("", big)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    assert fhir.ids("Patient") == []
    client.app.state.fhir_config = FhirConfig(max_body_bytes=2048)
    r = fhir.post("", bundle("batch", entry("POST", "Patient", patient("x" * 4000))))
    assert r.status_code == 413
    client.app.state.fhir_config = FhirConfig()
    assert fhir.post("", patient()).status_code == 400
    assert fhir.post("", bundle("collection")).status_code == 400
    assert fhir.post("", bundle("transaction", {"resource": patient()})).status_code == 400
    assert fhir.post("", bundle("transaction", entry("POST", "Spaceship", {}))).status_code \
        == 400
    twice = bundle("transaction", entry("PUT", "Patient/a", patient(id="a")),
                   entry("PUT", "Patient/a", patient(id="a")))
    assert fhir.post("", twice).status_code == 400


def _deny_consent(admin: Fhir, pid: str, username: str) -> None:
    admin.create({"resourceType": "Consent", "status": "active",
                  "scope": {"coding": [{"system":
                                        "http://terminology.hl7.org/CodeSystem/consentscope",
                                        "code": "patient-privacy"}]},
                  "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                  "patient": {"reference": f"Patient/{pid}"},
                  "provision": {"type": "deny", "actor": [{
                      "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                           "v3-ParticipationType", "code": "PRCP"}]},
                      "reference": {"identifier": {"system": "urn:careplane:user",
                                                   "value": username}}}]}})


def test_a_transaction_refused_for_one_kind_of_access_keeps_nothing_and_audits_the_refusal(
        client: TestClient, accounts: Any, db: Database) -> None:
    """The decisions of a transaction's groups are asked together: the refused one (a
    patient's consent denies the caller) fails the transaction with 403 naming its entry,
    nothing of the allowed groups is stored or audited as done, and the refusal is audited."""
    admin = Fhir(client, accounts.make("registrar", Role.clinician, org="org-a").headers)
    nurse = Fhir(client, accounts.make("nurse-y", Role.clinician, org="org-a").headers)
    pid = admin.create(patient("Refused", "Rosa"))["id"]
    _deny_consent(admin, pid, "nurse-y")
    other = admin.create(patient("Open", "Otto"))["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(f"Patient/{other}"),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(f"Patient/{other}", code="8480-6"),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Condition", "subject": {"reference": f"Patient/{other}"},
                      "code": {"text": "asthma"}},
         "request": {"method": "POST", "url": "Condition"}},
        {"resource": observation(f"Patient/{pid}"),
         "request": {"method": "POST", "url": "Observation"}}]}
    r = nurse.post("", bundle)
    assert r.status_code == 403, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[3]" in outcome["issue"][0]["diagnostics"]
    for kind in ("Observation", "Condition"):
        found = admin.get(f"{kind}?subject=Patient/{other}")
        assert found.status_code == 200 and not found.json().get("entry"), found.text
    flush_all()
    with db.session() as session:
        mine = session.scalars(select(AuditRecord).where(
            AuditRecord.actor_name == "nurse-y")).all()
        assert [(a.outcome, a.patient_id) for a in mine] == [("denied", pid)]
        assert verify(session).ok


def test_a_transactions_kinds_of_access_are_each_audited_with_their_ids(
        client: TestClient, accounts: Any, db: Database) -> None:
    """One audit record per kind of access (action, type, patient), listing its ids."""
    nurse = Fhir(client, accounts.make("nurse-z", Role.clinician, org="org-a").headers)
    pid = nurse.create(patient("Many", "Mia"))["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        *({"resource": observation(f"Patient/{pid}", value=60 + i),
           "request": {"method": "POST", "url": "Observation"}} for i in range(3)),
        {"resource": {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                      "code": {"text": "asthma"}},
         "request": {"method": "POST", "url": "Condition"}}]}
    r = nurse.post("", bundle)
    assert r.status_code == 200, r.text
    made = [e["response"]["location"].split("/")[-3] for e in r.json()["entry"]]
    with db.session() as session:
        rows = session.scalars(select(AuditRecord).where(
            AuditRecord.actor_name == "nurse-z", AuditRecord.action == "create",
            AuditRecord.target_kind.in_(["records:Observation", "records:Condition"]))).all()
        by_kind = {a.target_kind: a for a in rows}
        assert sorted(by_kind) == ["records:Condition", "records:Observation"]
        assert by_kind["records:Observation"].detail["ids"] == made[:3]
        assert by_kind["records:Observation"].detail["count"] == 3
        assert by_kind["records:Condition"].target_id == made[3]
        assert all(a.patient_id == pid and a.outcome == "success" for a in rows)
        assert verify(session).ok


def test_a_refused_entry_after_a_change_in_a_batch_is_audited_without_blocking(
        client: TestClient, accounts: Any, db: Database) -> None:
    """Entry 0 writes (its audit record holds the chain's lock in the batch's transaction),
    entry 1 is refused by a patient's consent: the refusal is recorded once the batch's
    transaction ends, rather than waiting on that lock for ever (or SQLite's busy timeout)."""
    admin = Fhir(client, accounts.make("registrar", Role.clinician, org="org-a").headers)
    nurse = Fhir(client, accounts.make("nurse-x", Role.clinician, org="org-a").headers)
    pid = admin.create(patient("Refused", "Rita"))["id"]
    _deny_consent(admin, pid, "nurse-x")
    other = admin.create(patient("Open", "Olga"))["id"]
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation(f"Patient/{other}"),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}}]}
    started = time.monotonic()
    r = nurse.post("", batch)
    assert time.monotonic() - started < 5
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1] == "403"
    flush_all()
    with db.session() as session:
        refused = session.scalars(select(AuditRecord).where(
            AuditRecord.actor_name == "nurse-x", AuditRecord.outcome == "denied")).all()
        assert [(a.target_id, a.patient_id) for a in refused] == [(pid, pid)]
        assert verify(session).ok


def test_a_consent_that_cannot_be_enforced_names_its_entry_and_keeps_nothing(
        fhir: Fhir) -> None:
    bad_consent = {"resourceType": "Consent", "status": "active",
                   "scope": {"coding": [{"system":
                                         "http://terminology.hl7.org/CodeSystem/consentscope",
                                         "code": "patient-privacy"}]},
                   "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                   "patient": {"reference": "urn:uuid:0d8c8c48-5c55-4a8e-9d0b-4f0a52d51f01"},
                   "provision": {"period": {"start": "2020-01-01"}}}  # permit or deny?
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d8c8c48-5c55-4a8e-9d0b-4f0a52d51f01",
         "resource": patient("Unsure", "Una"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad_consent, "request": {"method": "POST", "url": "Consent"}}]}
    r = fhir.post("", tx)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].resource"]
    assert "Bundle.entry[1]" in issue["diagnostics"] and "permit' or 'deny'" in issue["diagnostics"]
    assert fhir.search("Patient", {"family": "unsure"})["total"] == 0


def test_transactions_arriving_together_create_a_conditional_resource_once(fhir: Fhir) -> None:
    """Transactions that each create the same Organization if it does not exist, posted at
    the same time, leave one Organization, which every one of them refers to."""
    def bundle(i: int) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0b6c1f5e-8a63-4a8e-9d0e-3c2f4f1a7e01",
             "resource": {"resourceType": "Organization", "name": "Shared Clinic",
                          "identifier": [{"system": "urn:test:org", "value": "shared"}]},
             "request": {"method": "POST", "url": "Organization",
                         "ifNoneExist": "identifier=urn:test:org|shared"}},
            {"fullUrl": f"urn:uuid:0b6c1f5e-8a63-4a8e-9d0e-3c2f4f1a7f{i:02d}",
             "resource": {**patient(f"Parallel{i}"),
                          "managingOrganization": {
                              "reference": "urn:uuid:0b6c1f5e-8a63-4a8e-9d0e-3c2f4f1a7e01"}},
             "request": {"method": "POST", "url": "Patient"}}]}

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: fhir.post("", bundle(i)), range(12)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    orgs = fhir.get("Organization?identifier=urn:test:org|shared").json().get("entry") or []
    assert len(orgs) == 1
    org = f"Organization/{orgs[0]['resource']['id']}"
    found = fhir.get("Patient?organization=" + org + "&_count=50").json().get("entry") or []
    assert len(found) == 12
