"""The FHIR interactions on single resources, through the HTTP API, on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from careplane.platform.db import Database
from careplane.platform.events import EventRecord
from careplane.records.models import INDEX_TABLES, resource, resource_version
from tests.records.conftest import Fhir, observation, patient


def counts(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        return (s.scalar(select(func.count()).select_from(resource)) or 0,
                s.scalar(select(func.count()).select_from(resource_version)) or 0,
                sum(s.scalar(select(func.count()).select_from(t)) or 0
                    for t in INDEX_TABLES.values()))


def test_create_read_update_vread_delete(fhir: Fhir, db: Database) -> None:
    r = fhir.post("Patient", patient())
    assert r.status_code == 201
    created = r.json()
    pid = created["id"]
    assert created["meta"]["versionId"] == "1"
    assert r.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["content-type"].startswith("application/fhir+json")

    read = fhir.get(f"Patient/{pid}")
    assert read.status_code == 200 and read.json() == created
    assert fhir.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304

    changed = {**created, "gender": "male"}
    r = fhir.put(f"Patient/{pid}", changed)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert fhir.get(f"Patient/{pid}/_history/1").json()["meta"]["versionId"] == "1"
    assert fhir.get(f"Patient/{pid}/_history/2").json()["gender"] == "male"
    assert fhir.get(f"Patient/{pid}/_history/9").status_code == 404

    r = fhir.delete(f"Patient/{pid}")
    assert r.status_code == 204 and r.headers["etag"] == 'W/"3"'
    gone = fhir.get(f"Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"
    assert fhir.get(f"Patient/{pid}/_history/2").status_code == 200  # history is kept
    assert fhir.delete(f"Patient/{pid}").status_code == 204  # idempotent
    assert fhir.get("Patient/never-was").status_code == 404
    with db.session() as s:
        topics = s.scalars(select(EventRecord.topic)).all()
        payloads = s.scalars(select(EventRecord.payload)).all()
    assert topics.count("records.Patient.changed") == 3
    assert [p["action"] for p in payloads if p.get("id") == pid] == \
        ["created", "updated", "deleted"]


def test_update_creates_with_the_clients_id_and_if_match_guards(fhir: Fhir) -> None:
    r = fhir.put("Patient/mrn-42", patient(id="mrn-42"))
    assert r.status_code == 201 and r.json()["id"] == "mrn-42"
    body = r.json()
    stale = fhir.put("Patient/mrn-42", body, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["code"] == "conflict"
    ok = fhir.put("Patient/mrn-42", body, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "2"
    assert fhir.put("Patient/other-id", body).status_code == 400  # id mismatch
    assert fhir.put("Patient/new-one", patient(id="new-one"),
                    headers={"If-Match": 'W/"1"'}).status_code == 412
    assert fhir.delete("Patient/mrn-42", headers={"If-Match": 'W/"1"'}).status_code == 412
    minimal = fhir.put("Patient/mrn-42", body, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 200 and minimal.content == b""


def test_conditional_create_update_and_delete(fhir: Fhir) -> None:
    ident = {"system": "urn:mrn", "value": "A1"}
    first = fhir.post("Patient", patient(identifier=[ident]),
                      headers={"If-None-Exist": "identifier=urn:mrn|A1"})
    assert first.status_code == 201
    again = fhir.post("Patient", patient(identifier=[ident]),
                      headers={"If-None-Exist": "identifier=urn:mrn|A1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    bad = fhir.post("Patient", patient(), headers={"If-None-Exist": "shoe-size=9"})
    assert bad.status_code == 400  # unknown parameters never match "everything"

    upd = fhir.put("Patient?identifier=urn:mrn|A1", patient(identifier=[ident], gender="other"))
    assert upd.status_code == 200 and upd.json()["id"] == first.json()["id"]
    new = fhir.put("Patient?identifier=urn:mrn|B2",
                   patient(identifier=[{"system": "urn:mrn", "value": "B2"}]))
    assert new.status_code == 201
    fhir.create(patient(identifier=[ident]))
    assert fhir.post("Patient", patient(), headers={
        "If-None-Exist": "identifier=urn:mrn|A1"}).status_code == 412
    assert fhir.delete("Patient?identifier=urn:mrn|A1").status_code == 412
    assert fhir.delete("Patient?identifier=urn:mrn|B2").status_code == 204
    assert fhir.get(f"Patient/{new.json()['id']}").status_code == 410


def test_patch_applies_json_patch_and_validates_the_result(fhir: Fhir) -> None:
    pid = fhir.create(patient())["id"]
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Windsor"},
           {"op": "add", "path": "/active", "value": True}]
    r = fhir.request("PATCH", f"Patient/{pid}", content=__import__("json").dumps(ops),
                     headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["name"][0]["family"] == "Windsor" and r.json()["active"] is True
    assert r.json()["meta"]["versionId"] == "2"
    bad = fhir.request("PATCH", f"Patient/{pid}",
                       content='[{"op": "add", "path": "/birthDate", "value": "1990-02-31"}]',
                       headers={"Content-Type": "application/json-patch+json"})
    assert bad.status_code == 422
    assert fhir.get(f"Patient/{pid}").json()["meta"]["versionId"] == "2"
    fhirpath = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Patient.name[0].family"},
        {"name": "value", "valueString": "Mountbatten"}]}]}
    r = fhir.request("PATCH", f"Patient/{pid}", json=fhirpath,
                     headers={"If-Match": 'W/"2"'})
    assert r.status_code == 200, r.text
    assert r.json()["name"][0]["family"] == "Mountbatten"
    assert fhir.request("PATCH", f"Patient/{pid}", content=b"<x/>",
                        headers={"Content-Type": "text/plain"}).status_code == 415


def test_bad_input_is_refused_with_an_outcome_and_writes_nothing(fhir: Fhir,
                                                                 db: Database) -> None:
    before = counts(db)
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "Patient", b"{not json", 400),
        ("POST", "Patient", b"", 400),
        ("POST", "Spaceship", patient(), 404),
        ("POST", "Patient", {"resourceType": "Spaceship"}, 400),
        ("POST", "Patient", observation("Patient/x"), 400),
        ("POST", "Patient", patient(birthDate="2021-02-30"), 422),
        ("POST", "Observation", observation("Patient/x", when="2021-13-01"), 422),
        ("POST", "Patient", {"resourceType": "Patient", "name": "Peter"}, 422),
        ("PUT", "Patient/x y", patient(), 400),
    ]
    for method, path, body, status in cases:
        if isinstance(body, bytes):
            r = fhir.request(method, path, content=body,
                             headers={"Content-Type": "application/fhir+json"})
        else:
            r = fhir.request(method, path, json=body)
        assert r.status_code == status, (path, body, r.text)
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome", outcome
        assert outcome["issue"][0]["diagnostics"]
    r = fhir.post("Patient", patient(birthDate="2021-02-30"))
    assert r.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert counts(db) == before


def test_protocol_errors_are_outcomes(fhir: Fhir, client: Any) -> None:
    unauth = client.get("/fhir/Patient")
    assert unauth.status_code == 401 and unauth.json()["issue"][0]["code"] == "login"
    xml = fhir.get("Patient", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
    assert fhir.get("Patient", params={"_format": "xml"}).status_code == 406
    form = fhir.request("POST", "Patient", content=b"<Patient/>",
                        headers={"Content-Type": "application/fhir+xml"})
    assert form.status_code == 415
    unknown = fhir.get("Spaceship/1")
    assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
    nowhere = fhir.get("Patient/1/2/3/4")
    assert nowhere.status_code == 404 and nowhere.json()["resourceType"] == "OperationOutcome"
    metadata = client.get("/fhir/metadata")  # public
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"


def test_validate_operation(fhir: Fhir) -> None:
    ok = fhir.post("Patient/$validate", patient())
    assert ok.status_code == 200 and ok.json()["issue"][0]["severity"] == "information"
    bad = fhir.post("Patient/$validate", patient(birthDate="1990-02-31"))
    assert bad.status_code == 200 and bad.json()["issue"][0]["severity"] == "error"
    assert fhir.ids("Patient") == []
