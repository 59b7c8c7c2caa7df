"""``/fhir/AuditEvent``: the audit trail read and searched as FHIR, never written through it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplane.security import Role
from careplane.security.audit import flush_all
from tests.conftest import Accounts
from tests.records.conftest import Fhir, patient


@pytest.fixture
def admin(client: TestClient, accounts: Accounts) -> Fhir:
    return Fhir(client, accounts.make("ada", Role.admin, org="org-a").headers)


@pytest.fixture
def trail(fhir: Fhir, other_org: Fhir) -> dict[str, str]:
    """A few accesses: the nurse creates and reads two patients, another organisation one."""
    first = fhir.create(patient("Audit", "One"))["id"]
    second = fhir.create(patient("Audit", "Two"))["id"]
    assert fhir.get(f"Patient/{first}").status_code == 200
    assert fhir.get(f"Patient/{first}").status_code == 200
    assert fhir.get(f"Patient/{second}").status_code == 200
    foreign = other_org.create(patient("Elsewhere"))["id"]
    flush_all()
    return {"first": first, "second": second, "foreign": foreign}


def _events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


def _patients(event: dict[str, Any]) -> set[str]:
    return {e["what"].get("reference") for e in event["entity"]}


def test_search_by_patient_agent_and_date(admin: Fhir, trail: dict[str, str]) -> None:
    first = trail["first"]
    events = _events(admin.search("AuditEvent", {"patient": f"Patient/{first}"}))
    assert [e["action"] for e in events] == ["R", "R", "C"]  # newest first
    assert all(f"Patient/{first}" in _patients(e) for e in events)
    assert all(e["resourceType"] == "AuditEvent" and e["outcome"] == "0" for e in events)
    same = _events(admin.search(f"Patient/{first}/AuditEvent"))
    assert [e["id"] for e in same] == [e["id"] for e in events]

    by_nurse = _events(admin.search("AuditEvent", {"agent": "nurse", "action": "C"}))
    assert len(by_nurse) == 2
    assert {e["agent"][0]["who"]["display"] for e in by_nurse} == {"nurse"}
    assert _events(admin.search("AuditEvent", {"agent": "stranger"})) == []  # other org

    today = datetime.now(UTC).date()
    todays = _events(admin.search("AuditEvent", {"date": today.isoformat(),
                                                 "patient": first}))
    assert len(todays) == 3
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert _events(admin.search("AuditEvent", {"date": f"ge{tomorrow}"})) == []
    ranged = admin.search("AuditEvent", [("date", f"gt{today.year - 1}"),
                                         ("date", f"lt{tomorrow}"), ("patient", first)])
    assert len(_events(ranged)) == 3
    assert _events(admin.search("AuditEvent", {"outcome": "4"})) == []


def test_count_pages_through_the_trail(admin: Fhir, trail: dict[str, str]) -> None:
    seen: list[str] = []
    bundle = admin.search("AuditEvent", {"_count": "2", "agent": "nurse", "_total": "accurate"})
    total = bundle["total"]
    assert total >= 5
    pages = 0
    while True:
        pages += 1
        page = _events(bundle)
        assert len(page) <= 2
        seen += [e["id"] for e in page]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        assert "_count=2" in links["next"]
        bundle = admin.search(links["next"].split("/fhir/", 1)[1])
    assert len(seen) == len(set(seen)) == total and pages == -(-total // 2)
    assert seen == sorted(seen, key=int, reverse=True)
    oldest_first = _events(admin.search("AuditEvent", {"agent": "nurse", "_sort": "date",
                                                       "_count": "500"}))
    assert [e["id"] for e in oldest_first] == sorted(seen, key=int)


def test_read_and_vread(admin: Fhir, trail: dict[str, str]) -> None:
    event = _events(admin.search("AuditEvent", {"patient": trail["first"], "_count": "1"}))[0]
    read = admin.get(f"AuditEvent/{event['id']}")
    assert read.status_code == 200 and read.headers["etag"] == 'W/"1"'
    body = read.json()
    assert body["id"] == event["id"] and body["meta"]["versionId"] == "1"
    assert admin.get(f"AuditEvent/{event['id']}/_history/1").json()["id"] == event["id"]
    assert admin.get(f"AuditEvent/{event['id']}/_history/2").status_code == 404
    missing = admin.get("AuditEvent/999999999")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert admin.get("AuditEvent/not-a-number").status_code == 404
    assert admin.get("AuditEvent/\u00b2").status_code == 404
    assert _events(admin.search("AuditEvent", {"_id": "\u00b2,x"})) == []


def test_other_organisations_events_stay_hidden(admin: Fhir, client: TestClient,
                                                accounts: Accounts,
                                                trail: dict[str, str]) -> None:
    flush_all()
    other_admin = Fhir(client, accounts.make("otto", Role.admin, org="org-b").headers)
    theirs = _events(other_admin.search("AuditEvent", {"patient": trail["foreign"]}))
    assert theirs and all(e["agent"][0]["who"]["display"] == "stranger" for e in theirs)
    assert _events(other_admin.search("AuditEvent", {"patient": trail["first"]})) == []
    assert _events(admin.search("AuditEvent", {"patient": trail["foreign"]})) == []
    assert other_admin.get(f"AuditEvent/{theirs[0]['id']}").status_code == 200
    assert admin.get(f"AuditEvent/{theirs[0]['id']}").status_code == 404


def test_only_administrators_see_it(fhir: Fhir, client: TestClient, accounts: Accounts,
                                    trail: dict[str, str]) -> None:
    refused = fhir.get("AuditEvent")
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert fhir.get("AuditEvent/1").status_code == 403
    pat = Fhir(client, accounts.make("pat", Role.patient, org="org-a").headers)
    assert pat.get("AuditEvent").status_code == 403
    assert client.get("/fhir/AuditEvent").status_code == 401


def test_writes_are_refused(admin: Fhir, trail: dict[str, str]) -> None:
    event = _events(admin.search("AuditEvent", {"_count": "1"}))[0]
    forged = {**event, "outcome": "0", "id": event["id"]}
    new = {key: value for key, value in event.items() if key not in ("id", "meta")}
    for response in (admin.post("AuditEvent", new),
                     admin.put(f"AuditEvent/{event['id']}", forged),
                     admin.delete(f"AuditEvent/{event['id']}"),
                     admin.request("PATCH", f"AuditEvent/{event['id']}", json=[],
                                   headers={"Content-Type": "application/json-patch+json"}),
                     admin.delete("AuditEvent", params={"patient": trail["first"]}),
                     admin.get("AuditEvent/_history")):
        assert response.status_code == 405, response.text
        body = response.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["code"] == "not-supported"
        assert response.headers["allow"] == "GET"
    assert admin.get(f"AuditEvent/{event['id']}").json()["outcome"] == event["outcome"]


@pytest.mark.parametrize("query,problem", [
    ({"date": "yesterday"}, "not a FHIR date"),
    ({"date": "ge2024-13-01"}, "date="),
    ({"_count": "0"}, "_count"),
    ({"_count": "100000"}, "_count"),
    ({"action": "X"}, "action"),
    ({"outcome": "1"}, "outcome"),
    ({"entity": "nothing"}, "entity"),
    ({"site": "x"}, "cannot be searched by 'site'"),
    ({"_sort": "outcome"}, "sort by date"),
    ({"_cursor": "abc"}, "_cursor"),
    ({"_cursor": "\u00b2"}, "_cursor"),
    ({"_count": "\u00b2"}, "_count"),
    ({"date": "9999-12"}, "date="),
    ({"date": "9999-12-31"}, "date="),
    ({"date": "\u0662\u0660\u0662\u0664"}, "not a FHIR date"),
])
def test_bad_searches_are_400(admin: Fhir, query: dict[str, str], problem: str) -> None:
    response = admin.get("AuditEvent", params=query)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert problem in body["issue"][0]["diagnostics"]


def test_reading_the_trail_is_itself_audited(admin: Fhir, trail: dict[str, str]) -> None:
    admin.search("AuditEvent", {"patient": trail["first"]})
    flush_all()
    own = _events(admin.search("AuditEvent", {"agent": "ada"}))
    assert own and own[-1]["entity"][0]["what"]["identifier"]["system"] == \
        "urn:careplane:audit:record"
