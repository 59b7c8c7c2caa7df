"""A patient's consent deny narrows the caller's own organisation's searches, on every path."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from careplane.platform.db import Database, utcnow
from careplane.records import search
from careplane.security import Role
from careplane.security.consent import Provision, record_consent
from tests.records.conftest import Fhir, ann_and_bob, found_ids, observation, patient


@pytest.fixture
def world(fhir: Fhir, client: Any, accounts: Any) -> dict[str, Any]:
    """org-a holds Ann and Bob; the nurse (``fhir``) and a colleague both work there."""
    nurse = accounts.make("nurse-b", Role.clinician, org="org-a")
    w: dict[str, Any] = {"a": accounts.org("org-a"), "nurse": nurse,
                         "as_nurse": Fhir(client, nurse.headers), "colleague": fhir}
    w.update(ann_and_bob(fhir, "Consent"))
    return w


def _deny(db: Database, w: dict[str, Any], patient_id: str, **provision: Any) -> None:
    with db.session() as session:
        record_consent(session, org_id=w["a"], patient_id=patient_id,
                       provision=Provision("deny", **provision))


def _everything_of(f: Fhir, pid: str) -> set[str]:
    return found_ids(f.search(f"Patient/{pid}/$everything"))


def test_a_deny_naming_the_caller_hides_the_patient_on_every_search_path(
        db: Database, client: Any, world: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    bob_all = {w["bob"], w["bob_obs"]}
    assert bob_all <= found_ids(nurse.search("Observation", {"_include": "Observation:subject"}))
    _deny(db, w, w["bob"], actor_user_ids=[w["nurse"].user_id])

    # the read was already refused; now every search leaves Bob out
    assert nurse.get(f"Patient/{w['bob']}").status_code == 403
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"]}
    assert found_ids(nurse.search("Observation")) == {w["ann_obs"], w["ann_psy"]}
    assert nurse.search("Observation", {"_summary": "count"})["total"] == 2
    assert nurse.search("Patient", {"_total": "accurate"})["total"] == 1
    inc = nurse.search("Observation", {"_include": "Observation:subject"})
    assert not found_ids(inc) & bob_all
    rev = nurse.search("Patient", {"_revinclude": "Observation:subject"})
    assert found_ids(rev) == {w["ann"], w["ann_obs"], w["ann_psy"]}
    # Bob's Observation, reached by id, by chain or by _has, stays out too
    assert found_ids(nurse.search("Observation", {"_id": w["bob_obs"]})) == set()
    for row_cost in (search.CHAIN_WALK_ROW_COST, 0.0):  # found from the targets, walked
        monkeypatch.setattr(search, "CHAIN_WALK_ROW_COST", row_cost)
        assert found_ids(nurse.search("Observation", {"subject.name": "bob"})) == set()
        assert found_ids(nurse.search("Observation", {"subject.name": "consent"})) \
            == {w["ann_obs"], w["ann_psy"]}
    assert found_ids(nurse.search("Patient", {"_has:Observation:subject:code": "8867-4"})) \
        == {w["ann"]}
    # system searches, with and without _type
    assert found_ids(nurse.search("", {"_type": "Patient,Observation"})) \
        == {w["ann"], w["ann_obs"], w["ann_psy"]}
    assert not found_ids(nurse.search("", {"_id": f"{w['bob']},{w['bob_obs']}"})) & bob_all
    # paging links keep leaving him out
    page = nurse.search("Observation", {"_count": "1"})
    seen = found_ids(page)
    while nxt := next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None):
        page = nurse.search("Observation", parse_qsl(urlsplit(nxt).query))
        seen |= found_ids(page)
    assert seen == {w["ann_obs"], w["ann_psy"]}
    # history of a type and of the system
    assert not found_ids(nurse.search("Observation/_history")) & bob_all
    assert not found_ids(nurse.search("_history")) & bob_all
    assert w["ann_obs"] in found_ids(nurse.search("_history"))
    # his compartment and $everything are refused outright
    assert nurse.get(f"Patient/{w['bob']}/Observation").status_code == 403
    assert nurse.get(f"Patient/{w['bob']}/$everything").status_code == 403
    # even stating an emergency opens single reads only, never a search or $everything
    urgent = {"X-Break-Glass-Reason": "collapsed in the waiting room"}
    assert nurse.get(f"Patient/{w['bob']}", headers=urgent).status_code == 200
    assert found_ids(nurse.search("Patient", {"family": "consent"}, headers=urgent)) == {w["ann"]}
    assert nurse.get(f"Patient/{w['bob']}/$everything", headers=urgent).status_code == 403
    # a batch's search leaves him out as well
    batch = nurse.post("", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation?_count=50"}}]})
    assert batch.status_code == 200, batch.text
    assert found_ids(batch.json()["entry"][0]["resource"]) == {w["ann_obs"], w["ann_psy"]}
    # the web patient list
    listing = client.get("/patients", headers=w["nurse"].headers)
    assert listing.status_code == 200
    assert "Ann" in listing.text and "Bob" not in listing.text

    # a colleague the deny does not name still finds him everywhere
    colleague: Fhir = w["colleague"]
    assert found_ids(colleague.search("Patient", {"family": "consent"})) == {w["ann"], w["bob"]}
    assert w["bob_obs"] in found_ids(colleague.search("Observation"))
    assert bob_all <= _everything_of(colleague, w["bob"])
    assert "Bob" in client.get("/patients", headers=colleague.headers).text


def test_a_deny_by_organisation_or_role_hides_and_one_for_others_does_not(
        db: Database, accounts: Any, world: dict[str, Any]) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    other = accounts.org("org-b")
    _deny(db, w, w["bob"], actor_org_ids=[other])          # another organisation only
    _deny(db, w, w["ann"], actor_roles=["researcher"])     # another role only
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"], w["bob"]}
    assert w["bob_obs"] in found_ids(nurse.search("Observation"))
    _deny(db, w, w["bob"], actor_org_ids=[w["a"]])         # the caller's own organisation
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"]}
    assert found_ids(w["colleague"].search("Patient", {"family": "consent"})) == {w["ann"]}


def test_an_expired_or_future_deny_hides_nothing(db: Database, world: dict[str, Any]) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    now = utcnow()
    _deny(db, w, w["bob"], actor_user_ids=[w["nurse"].user_id],
          start=now - timedelta(days=30), end=now - timedelta(days=1))
    _deny(db, w, w["ann"], actor_user_ids=[w["nurse"].user_id],
          start=now + timedelta(days=1))
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"], w["bob"]}
    assert {w["bob_obs"], w["ann_obs"]} <= found_ids(nurse.search("Observation"))
    assert w["bob_obs"] in _everything_of(nurse, w["bob"])


def test_a_deny_of_a_purpose_the_caller_does_not_serve_hides_nothing(
        db: Database, world: dict[str, Any]) -> None:
    w = world
    _deny(db, w, w["bob"], purposes=["HRESCH"])
    assert w["bob"] in found_ids(w["as_nurse"].search("Patient", {"family": "consent"}))
    _deny(db, w, w["bob"], purposes=["TREAT"])             # a clinician's purpose
    assert w["bob"] not in found_ids(w["as_nurse"].search("Patient", {"family": "consent"}))


def test_a_label_deny_hides_only_the_labelled_resources(
        db: Database, world: dict[str, Any]) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    with db.session() as session:
        record_consent(session, org_id=w["a"], patient_id=w["ann"],
                       provision=Provision("permit", exceptions=[
                           Provision("deny", actor_user_ids=[w["nurse"].user_id],
                                     data_classes=["label:PSY"])]))
    assert found_ids(nurse.search("Observation")) == {w["ann_obs"], w["bob_obs"]}
    assert nurse.search("Observation", {"_summary": "count"})["total"] == 2
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"], w["bob"]}
    rev = nurse.search("Patient", {"_id": w["ann"], "_revinclude": "Observation:subject"})
    assert found_ids(rev) == {w["ann"], w["ann_obs"]}
    assert found_ids(nurse.search(f"Patient/{w['ann']}/Observation")) == {w["ann_obs"]}
    assert _everything_of(nurse, w["ann"]) == {w["ann"], w["ann_obs"]}
    assert w["ann_psy"] not in found_ids(nurse.search("Observation/_history"))
    # the colleague it does not name still sees the labelled result
    assert w["ann_psy"] in found_ids(w["colleague"].search("Observation"))
    assert w["ann_psy"] in _everything_of(w["colleague"], w["ann"])


def test_a_type_deny_hides_that_type_only(db: Database, world: dict[str, Any]) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    _deny(db, w, w["bob"], actor_user_ids=[w["nurse"].user_id],
          data_classes=["records:Observation"])
    assert found_ids(nurse.search("Observation")) == {w["ann_obs"], w["ann_psy"]}
    assert w["bob"] in found_ids(nurse.search("Patient", {"family": "consent"}))
    assert found_ids(nurse.search("", {"_type": "Patient,Observation", "_id": ",".join(
        (w["bob"], w["bob_obs"]))})) == {w["bob"]}
    assert _everything_of(nurse, w["bob"]) == {w["bob"]}


def test_a_fhir_consent_deny_hides_the_patient_from_the_next_search(
        world: dict[str, Any]) -> None:
    w = world
    nurse: Fhir = w["as_nurse"]
    consent = {"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system":
                                     "http://terminology.hl7.org/CodeSystem/consentscope",
                                     "code": "patient-privacy"}]},
               "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
               "patient": {"reference": f"Patient/{w['bob']}"},
               "provision": {"type": "deny", "actor": [{
                   "role": {"coding": [{"system":
                                        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "PRCP"}]},
                   "reference": {"identifier": {"system": "urn:careplane:user",
                                                "value": "nurse-b"}}}]}}
    w["colleague"].create(consent)
    assert found_ids(nurse.search("Patient", {"family": "consent"})) == {w["ann"]}
    assert w["bob"] in found_ids(w["colleague"].search("Patient", {"family": "consent"}))


def test_statements_per_search_stay_fixed_with_consents(
        fhir: Fhir, db: Database, db_url: str, world: dict[str, Any]) -> None:
    from tests.records.test_search import counting

    w = world
    nurse: Fhir = w["as_nurse"]
    params = {"_include": "Observation:subject", "_count": "100"}

    def statements() -> int:
        with counting(db_url, nurse.client) as seen:
            nurse.search("Observation", params)
        return len([s for s in seen if any(t in s for t in ("fhir_", "consent_provision"))])

    _deny(db, w, w["bob"], actor_user_ids=[w["nurse"].user_id])
    few = statements()
    for i in range(5):
        extra = fhir.create(patient("Consent", f"Extra{i}"))["id"]
        _deny(db, w, extra, actor_user_ids=[w["nurse"].user_id])
        fhir.create(observation(f"Patient/{extra}", value=i))
    assert statements() == few
