from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from tests.records.conftest import Fhir, patient


def test_instance_type_and_system_history(fhir: Fhir) -> None:
    p = fhir.create(patient())
    pid = p["id"]
    fhir.put(f"Patient/{pid}", {**p, "gender": "female"})
    fhir.delete(f"Patient/{pid}")
    other = fhir.create(patient("Other"))
    obs = fhir.create({"resourceType": "Observation", "status": "final",
                       "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}})

    inst = fhir.search(f"Patient/{pid}/_history")
    assert inst["type"] == "history"
    entries = inst["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert "resource" not in entries[0]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert entries[2]["response"]["status"] == "201"

    typed = fhir.search("Patient/_history")
    assert len(typed["entry"]) == 4
    assert {e["fullUrl"].rsplit("/", 1)[1] for e in typed["entry"]} == {pid, other["id"]}
    system = fhir.search("_history")
    assert len(system["entry"]) == 5
    assert system["entry"][0]["resource"]["id"] == obs["id"]

    since = obs["meta"]["lastUpdated"]
    assert [e["resource"]["id"] for e in fhir.search("_history", {"_since": since})["entry"]] \
        == [obs["id"]]
    assert fhir.get("_history", params={"_since": "2021-02-30"}).status_code == 400
    assert fhir.get("Patient/nope/_history").status_code == 404


def test_history_pages_are_stable(fhir: Fhir) -> None:
    for i in range(5):
        fhir.create(patient(f"H{i}"))
    first = fhir.search("Patient/_history", {"_count": "2"})
    got = [e["resource"]["id"] for e in first["entry"]]
    fhir.create(patient("Late"))  # written after the first page: not part of this listing
    url = next(lk["url"] for lk in first["link"] if lk["relation"] == "next")
    while url:
        parts = urlsplit(url)
        page = fhir.search(parts.path.removeprefix("/fhir/"), parse_qsl(parts.query))
        got += [e["resource"]["id"] for e in page["entry"]]
        url = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
    assert len(got) == len(set(got)) == 5
