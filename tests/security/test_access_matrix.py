"""The access matrix: every role, every protected route family, own and other organisation.

Each cell states the expected answer independently of the policy's own tables, calls the real
route over HTTP, and the test reports every cell that disagrees. Where a list is allowed, the
answer must carry no data of the other organisation.

Known gaps (cells that disagree today, kept here so that fixing them is noticed: a gap that
closes fails this test until it is removed from ``KNOWN_GAPS``): none at present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplane.platform.db import Database
from careplane.security import Role
from careplane.security.identity import link_patient
from careplane.security.models import Organisation, User
from tests.conftest import Accounts

CLINICAL = {Role.clinician, Role.radiologist, Role.psychiatrist, Role.admin, Role.service}
EVERYONE = set(Role)


@dataclass
class World:
    client: TestClient
    headers: dict[Role, dict[str, str]]
    own_patient: str  # the patient-role user's own record (org A)
    other_patient_a: str  # another patient of org A
    patient_b: str  # a patient of org B
    org_a: str


@dataclass(frozen=True)
class Family:
    name: str
    call: Callable[[World, Role], Any]
    allowed: set[Role]
    # A check on an allowed answer: it must not carry data the caller may not see.
    clean: Callable[[World, Role, Any], bool] | None = None


def _patients_visible(world: World, role: Role, response: Any) -> bool:
    ids = {e["resource"]["id"] for e in response.json().get("entry", [])}
    if role is Role.patient:  # a patient's search stays inside their own record
        return ids <= {world.own_patient}
    return world.patient_b not in ids


def _no_b_audit(world: World, role: Role, response: Any) -> bool:
    # Org A's trail holds what org A's people did and what was done to org A's data only.
    return all(world.org_a in (r["org_id"], r["target_org_id"]) for r in response.json())


def _no_b_consents(world: World, role: Role, response: Any) -> bool:
    return all(c["patient_id"] != world.patient_b for c in response.json())


FAMILIES = [
    Family("records: read a patient of own organisation",
           lambda w, r: w.client.get(f"/fhir/Patient/{w.other_patient_a}", headers=w.headers[r]),
           CLINICAL | {Role.counsellor}),
    Family("records: read a patient of the other organisation",
           lambda w, r: w.client.get(f"/fhir/Patient/{w.patient_b}", headers=w.headers[r]),
           set()),
    Family("records: a patient reads their own record",
           lambda w, r: w.client.get(f"/fhir/Patient/{w.own_patient}", headers=w.headers[r]),
           CLINICAL | {Role.counsellor, Role.patient}),
    Family("records: create",
           lambda w, r: w.client.post("/fhir/Patient", headers=w.headers[r],
                                      json={"resourceType": "Patient"}),
           CLINICAL | {Role.counsellor}),
    Family("records: search",
           lambda w, r: w.client.get("/fhir/Patient", headers=w.headers[r]),
           CLINICAL | {Role.counsellor, Role.patient}, _patients_visible),
    Family("imaging: search studies",
           lambda w, r: w.client.get("/dicomweb/studies", headers=w.headers[r]),
           CLINICAL),
    Family("genomics: list samples",
           lambda w, r: w.client.get("/api/genomics/samples", headers=w.headers[r]),
           CLINICAL | {Role.researcher}),
    Family("jobs: list",
           lambda w, r: w.client.get("/api/jobs", headers=w.headers[r]),
           EVERYONE - {Role.patient}),
    Family("consent: list",
           lambda w, r: w.client.get("/api/consents", headers=w.headers[r]),
           CLINICAL - {Role.service} | {Role.counsellor, Role.patient}, _no_b_consents),
    Family("security: list grants",
           lambda w, r: w.client.get("/api/grants", headers=w.headers[r]),
           {Role.admin}),
    Family("audit: list",
           lambda w, r: w.client.get("/api/audit", headers=w.headers[r]),
           {Role.admin}, _no_b_audit),
    Family("audit: verify the chain",
           lambda w, r: w.client.get("/api/audit/verify", headers=w.headers[r]),
           {Role.admin}),
    Family("auth: who am I",
           lambda w, r: w.client.get("/api/auth/me", headers=w.headers[r]),
           EVERYONE),
]

KNOWN_GAPS: set[tuple[str, Role]] = set()


def _world(client: TestClient, accounts: Accounts, db: Database) -> World:
    headers = {role: accounts.make(f"user-{role.value}", role).headers for role in Role}
    doctor_b = accounts.make("doctor-b", Role.clinician, org="org-b")

    def patient(who: dict[str, str]) -> str:
        response = client.post("/fhir/Patient", headers=who, json={"resourceType": "Patient"})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    own, other_a = patient(headers[Role.clinician]), patient(headers[Role.clinician])
    patient_b = patient(doctor_b.headers)
    consent = {"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"code": "patient-privacy"}]},
               "provision": {"type": "permit"}}
    for who, pid in ((headers[Role.clinician], own), (doctor_b.headers, patient_b)):
        made = client.post("/api/consents", headers=who,
                           json={**consent, "patient": {"reference": f"Patient/{pid}"}})
        assert made.status_code == 201, made.text
    with db.session() as session:
        user = session.get(User, accounts_user_id(accounts, db, "user-patient"))
        org = session.get(Organisation, accounts.org("org-a"))
        assert user is not None and org is not None
        link_patient(session, user, org, own)
    # Some audit records of org B that an org A administrator must never see.
    client.get(f"/fhir/Patient/{patient_b}", headers=doctor_b.headers)
    return World(client, headers, own, other_a, patient_b, accounts.org("org-a"))


def accounts_user_id(accounts: Accounts, db: Database, username: str) -> str:
    from sqlalchemy import select

    with db.session() as session:
        user_id = session.scalar(select(User.id).where(User.username == username))
        assert user_id is not None
        return user_id


def test_access_matrix(client: TestClient, accounts: Accounts, db: Database) -> None:
    world = _world(client, accounts, db)
    disagreements = []
    gaps_seen = set()
    for family in FAMILIES:
        for role in Role:
            response = family.call(world, role)
            expected = role in family.allowed
            allowed = 200 <= response.status_code < 300
            refused = response.status_code in (403, 404)
            assert response.status_code < 500, (family.name, role, response.text)
            ok = allowed if expected else refused
            if ok and allowed and family.clean is not None and not family.clean(world, role,
                                                                                response):
                disagreements.append(f"{family.name} / {role.value}: answer carries data "
                                     "the caller may not see")
                continue
            if (family.name, role) in KNOWN_GAPS:
                if not ok:
                    gaps_seen.add((family.name, role))
                continue
            if not ok:
                disagreements.append(
                    f"{family.name} / {role.value}: expected "
                    f"{'allow' if expected else 'deny'}, got {response.status_code}")
    assert not disagreements, "\n".join(disagreements)
    assert gaps_seen == KNOWN_GAPS, f"gaps closed, update KNOWN_GAPS: {KNOWN_GAPS - gaps_seen}"


@pytest.mark.parametrize("role", [Role.clinician, Role.admin])
def test_other_organisation_is_invisible_even_by_id(client: TestClient, accounts: Accounts,
                                                    role: Role) -> None:
    """Each kind of id-addressed route refuses (403/404) another organisation's object."""
    me = accounts.make("member", role, org="org-a")
    them = accounts.make("them", Role.admin, org="org-b")
    pid = client.post("/fhir/Patient", headers=them.headers,
                      json={"resourceType": "Patient"}).json()["id"]
    consent = client.post("/api/consents", headers=them.headers, json={
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "permit"}}).json()
    grant = client.post("/api/grants", headers=them.headers, json={
        "grantee_org": "org-b", "kinds": ["records:*"], "actions": ["read"]}).json()
    sample = client.post("/api/genomics/samples", headers=them.headers,
                         json={"name": "s1"}).json()
    for method, path in (("GET", f"/fhir/Patient/{pid}"), ("DELETE", f"/fhir/Patient/{pid}"),
                         ("DELETE", f"/api/consents/{consent['id']}"),
                         ("DELETE", f"/api/grants/{grant['id']}"),
                         ("GET", f"/api/genomics/samples/{sample['id']}")):
        response = client.request(method, path, headers=me.headers)
        assert response.status_code in (403, 404), (method, path, response.status_code)
        assert '"resourceType":"Patient"' not in response.text.replace(" ", "")
