from __future__ import annotations

from tests.records.conftest import Fhir, observation, patient


def test_everything_returns_the_compartment_and_what_it_refers_to(fhir: Fhir) -> None:
    org = fhir.create({"resourceType": "Organization", "name": "Ward 3"})
    doc = fhir.create({"resourceType": "Practitioner", "name": [{"family": "Ruiz"}]})
    p = fhir.create(patient(managingOrganization={"reference": f"Organization/{org['id']}"}))
    pid = p["id"]
    other = fhir.create(patient("Unrelated"))
    o1 = fhir.create(observation(f"Patient/{pid}",
                                 performer=[{"reference": f"Practitioner/{doc['id']}"}]))
    cond = fhir.create({"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                        "code": {"text": "asthma"}})
    fhir.create(observation(f"Patient/{other['id']}"))
    bundle = fhir.search(f"Patient/{pid}/$everything")
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert ids[0] == pid
    assert {o1["id"], cond["id"], doc["id"]} <= set(ids)
    assert other["id"] not in ids
    only = fhir.search(f"Patient/{pid}/$everything", {"_type": "Condition"})
    assert [e["resource"]["id"] for e in only["entry"]] == [cond["id"]]
    paged = fhir.search(f"Patient/{pid}/$everything", {"_count": "1"})
    assert any(lk["relation"] == "next" for lk in paged["link"])
    assert fhir.get("Patient/nobody/$everything").status_code == 404
    assert fhir.get(f"Patient/{pid}/$everything", params={"_type": "Nope"}).status_code == 400
