"""Search across organisations: what a grant or a patient's consent opens, and no more."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select

from careplane.platform.db import Database
from careplane.records import search
from careplane.security import Role
from careplane.security.actions import Action
from careplane.security.audit import AuditRecord, flush_all
from careplane.security.consent import Provision, record_consent
from careplane.security.grants import create_grant, revoke_grant
from tests.records.conftest import Fhir, ann_and_bob, found_ids, observation, patient


@pytest.fixture
def world(fhir: Fhir, other_org: Fhir, accounts: Any) -> dict[str, Any]:
    """org-a holds two patients; org-b (the stranger) holds one of its own."""
    w: dict[str, Any] = {"a": accounts.org("org-a"), "b": accounts.org("org-b")}
    w.update(ann_and_bob(fhir, "Shared"))
    w["org_a_practitioner"] = fhir.create({"resourceType": "Practitioner",
                                           "name": [{"family": "Shared"}]})["id"]
    w["cara"] = other_org.create(patient("Shared", "Cara"))["id"]
    w["cara_obs"] = other_org.create(observation(f"Patient/{w['cara']}"))["id"]
    return w


def _grant(db: Database, w: dict[str, Any], patient_id: str | None,
           actions: tuple[Action, ...] = (Action.read, Action.search)) -> str:
    with db.session() as session:
        return create_grant(session, grantor_org_id=w["a"], grantee_org_id=w["b"],
                            kinds=["records:*"], actions=list(actions),
                            patient_id=patient_id).id


def test_a_grant_for_one_patient_opens_that_patients_records_on_every_search_path(
        fhir: Fhir, other_org: Fhir, db: Database, world: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    before = found_ids(other_org.search("Observation", {"_count": "100"}))
    assert before == {w["cara_obs"]}
    # a grant without the search action opens reads, not searches
    read_only = _grant(db, w, w["ann"], (Action.read,))
    assert found_ids(other_org.search("Observation")) == {w["cara_obs"]}
    with db.session() as session:
        revoke_grant(session, read_only, grantor_org_id=w["a"])

    _grant(db, w, w["ann"])
    ann_all = {w["ann_obs"], w["ann_psy"]}
    assert found_ids(other_org.search("Observation")) == ann_all | {w["cara_obs"]}
    assert found_ids(other_org.search("Patient", {"family": "shared"})) == {w["ann"], w["cara"]}
    assert other_org.search("Patient", {"_summary": "count"})["total"] == 2
    # includes, chains, _has and compartments reach the granted patient only
    inc = other_org.search("Observation", {"_include": "Observation:subject"})
    assert found_ids(inc) == ann_all | {w["cara_obs"], w["ann"], w["cara"]}
    rev = other_org.search("Patient", {"_revinclude": "Observation:subject"})
    assert found_ids(rev) == ann_all | {w["cara_obs"], w["ann"], w["cara"]}
    for row_cost in (search.CHAIN_WALK_ROW_COST, 0.0):  # found from the targets, walked
        monkeypatch.setattr(search, "CHAIN_WALK_ROW_COST", row_cost)
        assert found_ids(other_org.search("Observation", {"subject.name": "bob"})) == set()
        assert found_ids(other_org.search("Observation", {"subject.name": "ann"})) == ann_all
    assert found_ids(other_org.search("Patient", {"_has:Observation:subject:code": "8867-4"})) \
        == {w["ann"], w["cara"]}
    assert found_ids(other_org.search(f"Patient/{w['ann']}/Observation")) == ann_all
    assert found_ids(other_org.search(f"Patient/{w['bob']}/Observation")) == set()
    # nothing else of org-a: not the other patient, not its practitioners
    for path in ("Practitioner", f"Observation?_id={w['bob_obs']}"):
        assert not found_ids(other_org.search(path)) & {w["org_a_practitioner"], w["bob_obs"]}
    # paging links are re-checked, and keep reaching the same records
    page = other_org.search("Observation", {"_count": "1"})
    seen = found_ids(page)
    while nxt := next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None):
        page = other_org.search("Observation", parse_qsl(urlsplit(nxt).query))
        seen |= found_ids(page)
    assert seen == ann_all | {w["cara_obs"]}
    # a search inside a batch bundle reaches the same records
    batch = other_org.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation?_count=50"}}]})
    assert batch.status_code == 200, batch.text
    assert found_ids(batch.json()["entry"][0]["resource"]) == ann_all | {w["cara_obs"]}
    # the other direction stays closed: org-a sees nothing of org-b
    assert found_ids(fhir.search("Patient", {"family": "shared"})) == {w["ann"], w["bob"]}
    assert w["cara_obs"] not in found_ids(fhir.search("Observation", {"_count": "100"}))
    # a conditional write never matches another organisation's record
    r = other_org.post("Patient", patient("Shared", "Ann"),
                       headers={"If-None-Exist": f"_id={w['ann']}"})
    assert r.status_code == 201 and r.json()["id"] != w["ann"]
    # the search's audit record says what it reached, and through which grant
    flush_all()  # reads are recorded moments after their commit
    with db.session() as session:
        reached = [r.detail["reach"] for r in session.scalars(
            select(AuditRecord).where(AuditRecord.action == "search")) if "reach" in r.detail]
        assert reached and all(r.org_id == w["b"] for r in session.scalars(
            select(AuditRecord).where(AuditRecord.action == "search"))
            if "reach" in r.detail)
        assert any(w["ann"] in item and "grant" in item for item in reached[-1])


def test_a_consent_deny_beats_the_grant(other_org: Fhir, db: Database,
                                        world: dict[str, Any]) -> None:
    w = world
    _grant(db, w, None)  # the whole organisation
    everything = found_ids(other_org.search("Observation"))
    assert everything == {w["ann_obs"], w["ann_psy"], w["bob_obs"], w["cara_obs"]}
    assert w["org_a_practitioner"] in found_ids(other_org.search("Practitioner"))
    with db.session() as session:
        record_consent(session, org_id=w["a"], patient_id=w["bob"],
                       provision=Provision("deny", actor_org_ids=[w["b"]]))
        record_consent(session, org_id=w["a"], patient_id=w["ann"],
                       provision=Provision("permit", exceptions=[
                           Provision("deny", data_classes=["label:PSY"])]))
    assert found_ids(other_org.search("Observation")) == {w["ann_obs"], w["cara_obs"]}
    assert found_ids(other_org.search("Patient", {"family": "shared"})) == {w["ann"], w["cara"]}
    assert other_org.search("Observation", {"_summary": "count"})["total"] == 2
    # stating an emergency (break-the-glass) does not widen a search past the consent
    urgent = other_org.search("Observation", headers={
        "X-Break-Glass-Reason": "cardiac arrest, need the history"})
    assert found_ids(urgent) == {w["ann_obs"], w["cara_obs"]}
    # a refused record stays out of includes too
    inc = other_org.search("Observation", {"_id": w["ann_obs"],
                                           "_revinclude": "Observation:subject",
                                           "_include": "Observation:subject"})
    assert w["bob"] not in found_ids(inc) and w["ann_psy"] not in found_ids(inc)


def test_a_permit_consent_naming_the_caller_opens_that_patient(
        other_org: Fhir, client: Any, accounts: Any, db: Database,
        world: dict[str, Any]) -> None:
    w = world
    with db.session() as session:
        record_consent(session, org_id=w["a"], patient_id=w["bob"],
                       provision=Provision("permit", actor_org_ids=[w["b"]]))
        # "I agree to share" without naming anyone opens nothing
        record_consent(session, org_id=w["a"], patient_id=w["ann"],
                       provision=Provision("permit"))
    assert found_ids(other_org.search("Observation")) == {w["bob_obs"], w["cara_obs"]}
    # a third organisation is not named, and sees nothing
    third = Fhir(client, accounts.make("outsider", Role.clinician, org="org-c").headers)
    assert found_ids(third.search("Observation")) == set()


def test_queries_per_reaching_search_do_not_grow_with_results(
        fhir: Fhir, other_org: Fhir, db: Database, db_url: str,
        world: dict[str, Any]) -> None:
    from tests.records.test_search import counting

    w = world
    _grant(db, w, w["ann"])
    with db.session() as session:
        record_consent(session, org_id=w["a"], patient_id=w["ann"],
                       provision=Provision("permit", exceptions=[
                           Provision("deny", data_classes=["label:PSY"])]))
    params = {"_include": "Observation:subject", "_count": "100"}

    def statements() -> int:
        # the search's own: its grants and consents, then the page and the include (the
        # page holds every match, so it gives the total)
        with counting(db_url, other_org.client) as seen:
            other_org.search("Observation", params)
        return len([s for s in seen if any(t in s for t in (
            "fhir_", "auth_grant", "consent_provision"))])

    few = statements()
    for i in range(20):
        fhir.create(observation(f"Patient/{w['ann']}", value=i))
    assert len(found_ids(other_org.search("Observation", params))) > 20
    assert statements() == few == 5
