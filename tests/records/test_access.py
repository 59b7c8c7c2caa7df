"""Tenancy: an organisation's records are invisible to every other organisation, on every path."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import select

from careplane.platform.db import Database
from careplane.security.audit import AuditRecord, flush_all
from tests.records.conftest import Fhir, observation, patient


def _all_ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e
            and e["resource"]["resourceType"] != "OperationOutcome"}


def test_other_organisations_see_nothing(fhir: Fhir, other_org: Fhir) -> None:
    mine = fhir.create(patient("Secret", "Sam"))
    pid = mine["id"]
    obs = fhir.create(observation(f"Patient/{pid}"))
    theirs = other_org.create(patient("Secret", "Other"))
    their_obs = other_org.create(observation(f"Patient/{pid}"))  # points at my patient
    hidden = {pid, obs["id"]}

    # direct access is refused by the policy (and audited)
    for r in (other_org.get(f"Patient/{pid}"), other_org.get(f"Patient/{pid}/_history/1"),
              other_org.get(f"Patient/{pid}/_history"),
              other_org.put(f"Patient/{pid}", {**mine, "gender": "male"}),
              other_org.delete(f"Patient/{pid}"),
              other_org.get(f"Patient/{pid}/$everything")):
        assert r.status_code == 403, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"

    searches = [
        ("Patient", {"family": "secret"}),
        ("Patient", {"_id": pid}),
        ("Observation", {"subject": f"Patient/{pid}", "_include": "Observation:subject"}),
        ("Observation", {"_include": "Observation:subject"}),
        ("Patient", {"_revinclude": "Observation:subject"}),
        ("Observation", {"subject.name": "sam"}),
        ("Patient", {"_has:Observation:subject:code": "8867-4"}),
        (f"Patient/{pid}/Observation", {}),
        ("Patient/_history", {}),
        ("Observation/_history", {}),
        ("_history", {}),
    ]
    for path, params in searches:
        seen = _all_ids(other_org.search(path, params))
        assert not seen & hidden, (path, params, seen)
    assert _all_ids(other_org.search("Patient", {"family": "secret"})) == {theirs["id"]}
    # their observation refers to my patient, yet including it must not reveal it
    inc = other_org.search("Observation", {"_id": their_obs["id"],
                                           "_include": "Observation:subject"})
    assert _all_ids(inc) == {their_obs["id"]}
    assert other_org.search("Patient", {"_summary": "count"})["total"] == 1

    # paging links carry no authority: following mine as the other org finds nothing of mine
    for i in range(3):
        fhir.create(patient("Secret", f"More{i}"))
    page = fhir.search("Patient", {"family": "secret", "_count": "1"})
    nxt = next(lk["url"] for lk in page["link"] if lk["relation"] == "next")
    parts = urlsplit(nxt)
    followed = other_org.search("Patient", parse_qsl(parts.query))
    assert not _all_ids(followed) & hidden

    # a conditional create in another org does not match my resource
    ident = {"system": "urn:mrn", "value": "S1"}
    fhir.create(patient("Cond", identifier=[ident]))
    r = other_org.post("Patient", patient("Cond", identifier=[ident]),
                       headers={"If-None-Exist": "identifier=urn:mrn|S1"})
    assert r.status_code == 201
    # nor can a transaction in another org refer to my patient conditionally
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"},
         "resource": observation("Patient?family=secret&given=sam")}]}
    assert other_org.post("", tx).status_code == 412
    # nor change my records inside a transaction: refused, nothing written
    for method, body in (("PUT", {**mine, "gender": "male"}), ("DELETE", None)):
        entry: dict[str, Any] = {"request": {"method": method, "url": f"Patient/{pid}"}}
        if body:
            entry["resource"] = body
        r = other_org.post("", {"resourceType": "Bundle", "type": "transaction",
                                "entry": [entry]})
        assert r.status_code == 403, r.text
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_every_interaction_is_authorised_with_the_patient(fhir: Fhir, db: Database) -> None:
    pid = fhir.create(patient())["id"]
    oid = fhir.create(observation(f"Patient/{pid}"))["id"]
    fhir.get(f"Observation/{oid}")
    fhir.search(f"Patient/{pid}/Observation")
    flush_all()  # reads are recorded moments after their commit
    with db.session() as s:
        rows = s.execute(select(AuditRecord.action, AuditRecord.target_kind,
                                AuditRecord.target_id, AuditRecord.patient_id)
                         .order_by(AuditRecord.id)).all()
    assert ("create", "records:Patient", pid, pid) in rows
    assert ("create", "records:Observation", oid, pid) in rows
    assert ("read", "records:Observation", oid, pid) in rows
    assert ("search", "records:Observation", None, pid) in rows


def test_roles_without_records_rights_are_refused(client: Any, accounts: Any) -> None:
    from careplane.security import Role
    from tests.records.conftest import Fhir as Client

    researcher = Client(client, accounts.make("res", Role.researcher).headers)
    r = researcher.post("Patient", patient())
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert researcher.get("Patient").status_code == 403


def test_a_patient_sees_only_their_own_record(fhir: Fhir, client: Any, accounts: Any,
                                              db: Database) -> None:
    from tests.records.conftest import patient_client

    mine = fhir.create(patient("Self", "Sally"))["id"]
    other = fhir.create(patient("Else", "Eve"))["id"]
    my_obs = fhir.create(observation(f"Patient/{mine}"))["id"]
    their_obs = fhir.create(observation(f"Patient/{other}"))["id"]
    sally = patient_client(client, accounts, db, "sally", mine)
    assert sally.get(f"Patient/{mine}").status_code == 200
    assert sally.get(f"Observation/{my_obs}").status_code == 200
    assert sally.get(f"Observation/{their_obs}").status_code == 403
    assert sally.get(f"Patient/{other}").status_code == 403
    # searches are held to her own compartment, whatever she asks for
    assert sally.ids("Observation") == [my_obs]
    assert sally.ids("Observation", {"subject": f"Patient/{other}"}) == []
    assert sally.ids("Patient") == [mine]
    assert sally.post("Observation", observation(f"Patient/{mine}")).status_code == 403
    assert sally.get("Practitioner").status_code == 403
