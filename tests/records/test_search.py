"""Search through the HTTP API: every parameter type, modifiers, prefixes, results control."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import event

from careplane.platform.db import Database
from tests.records.conftest import Fhir, observation, patient


@pytest.fixture
def people(fhir: Fhir) -> dict[str, str]:
    """A small population: names, identifiers, birth dates, observations."""
    ids = {}
    ids["peter"] = fhir.create(patient("Chalmers", "Peter", birthDate="1974-12-25",
                                       gender="male", active=True,
                                       identifier=[{"system": "urn:mrn", "value": "1001"}],
                                       telecom=[{"system": "email", "value": "p@x.org"}]))["id"]
    ids["zoe"] = fhir.create(patient("Ødegård", "Zoë", birthDate="1990-06-01", gender="female",
                                     identifier=[{"system": "urn:mrn", "value": "1002"},
                                                 {"value": "NOSYS"}]))["id"]
    ids["ann"] = fhir.create(patient("Chalmers-Smith", "Ann", birthDate="2001",
                                     gender="female", active=False))["id"]
    ids["nobody"] = fhir.create({"resourceType": "Patient"})["id"]
    p, z = f"Patient/{ids['peter']}", f"Patient/{ids['zoe']}"
    ids["hr1"] = fhir.create(observation(p, value=72, when="2024-03-01T10:00:00Z"))["id"]
    ids["hr2"] = fhir.create(observation(p, value=95, when="2024-03-02T10:00:00Z"))["id"]
    ids["glu"] = fhir.create(observation(z, code="2339-0", value=100, unit="mg/dL",
                                         when="2024-01-15"))["id"]
    ids["txt"] = fhir.create({"resourceType": "Observation", "status": "preliminary",
                              "code": {"text": "Free text finding",
                                       "coding": [{"system": "urn:local", "code": "X",
                                                   "display": "Odd Finding"}]},
                              "subject": {"reference": z}})["id"]
    return ids


def test_string_and_token_searches(fhir: Fhir, people: dict[str, str]) -> None:
    ids = fhir.ids
    peter, zoe, ann = people["peter"], people["zoe"], people["ann"]
    assert set(ids("Patient", {"family": "chalmers"})) == {peter, ann}  # prefix, folded
    assert ids("Patient", {"family": "odega"}) == [zoe]  # accents folded
    assert ids("Patient", {"family:exact": "Chalmers"}) == [peter]
    assert ids("Patient", {"family:exact": "chalmers"}) == []
    assert ids("Patient", {"family:contains": "smit"}) == [ann]
    assert ids("Patient", {"name": "zoe"}) == [zoe]
    assert ids("Patient", {"family:missing": "true"}) == [people["nobody"]]
    assert ids("Patient", {"identifier": "urn:mrn|1002"}) == [zoe]
    assert ids("Patient", {"identifier": "1001"}) == [peter]
    assert ids("Patient", {"identifier": "|NOSYS"}) == [zoe]
    assert ids("Patient", {"identifier": "|1001"}) == []
    assert set(ids("Patient", {"identifier": "urn:mrn|"})) == {peter, zoe}
    assert set(ids("Patient", {"gender:not": "male"})) == {zoe, ann, people["nobody"]}
    assert ids("Patient", {"active": "true"}) == [peter]
    assert ids("Patient", {"email": "p@x.org"}) == [peter]
    assert ids("Observation", {"code:text": "free"}) == [people["txt"]]
    assert ids("Observation", {"code:text": "odd"}) == [people["txt"]]
    # OR within a parameter, AND across repeats
    assert set(ids("Patient", {"gender": "male,female"})) == {peter, zoe, ann}
    assert ids("Patient", [("family", "chalmers"), ("gender", "female")]) == [ann]
    assert ids("Patient", [("_id", f"{peter},{zoe}"), ("gender", "female")]) == [zoe]


def test_search_by_post(fhir: Fhir, people: dict[str, str]) -> None:
    r = fhir.client.post("/fhir/Patient/_search", content="family=chalmers&gender=female",
                         headers={**fhir.headers,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [people["ann"]]
    bad = fhir.client.post("/fhir/Patient/_search", content="{}",
                           headers={**fhir.headers, "Content-Type": "application/json"})
    assert bad.status_code == 415


def test_date_prefixes(fhir: Fhir, people: dict[str, str]) -> None:
    ids = fhir.ids
    peter, zoe, ann = people["peter"], people["zoe"], people["ann"]
    assert ids("Patient", {"birthdate": "1974-12-25"}) == [peter]
    assert ids("Patient", {"birthdate": "1974"}) == [peter]
    assert ids("Patient", {"birthdate": "eq1974-12"}) == [peter]
    assert set(ids("Patient", {"birthdate": "gt1980"})) == {zoe, ann}
    assert ids("Patient", {"birthdate": "lt1980"}) == [peter]
    assert set(ids("Patient", {"birthdate": "ge1990-06-01"})) == {zoe, ann}
    assert set(ids("Patient", {"birthdate": "le1990-06-01"})) == {peter, zoe}
    assert ids("Patient", {"birthdate": "sa2000-12-31"}) == [ann]
    assert ids("Patient", {"birthdate": "eb1975"}) == [peter]
    assert set(ids("Patient", {"birthdate": "ne1974-12-25"})) == {zoe, ann}
    assert ids("Patient", {"birthdate": "ap1974-12-20"}) == [peter]
    # a day-precision value is not "equal" to a narrower search range
    assert ids("Patient", {"birthdate": "2001-05-05"}) == []
    assert ids("Patient", [("birthdate", "ge1974"), ("birthdate", "lt1991")]) == [peter, zoe]
    assert set(ids("Observation", {"date": "2024-03"})) == {people["hr1"], people["hr2"]}
    assert ids("Observation", {"date": "gt2024-03-01T12:00:00Z"}) == [people["hr2"]]
    bad = fhir.get("Patient", params={"birthdate": "2021-02-30"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_quantities_numbers_and_units(fhir: Fhir, people: dict[str, str]) -> None:
    ids = fhir.ids
    hr1, hr2, glu = people["hr1"], people["hr2"], people["glu"]
    assert ids("Observation", {"value-quantity": "72"}) == [hr1]
    assert ids("Observation", {"value-quantity": "gt80"}) == [glu, hr2] or \
        set(ids("Observation", {"value-quantity": "gt80"})) == {glu, hr2}
    assert ids("Observation", {"value-quantity": "72|http://unitsofmeasure.org|/min"}) == [hr1]
    # 100 mg/dL is 1 g/L: found through the canonical UCUM form
    assert ids("Observation", {"value-quantity": "1|http://unitsofmeasure.org|g/L"}) == [glu]
    assert ids("Observation", {"value-quantity": "1000|http://unitsofmeasure.org|mg/L"}) \
        == [glu]
    assert ids("Observation", {"value-quantity": "100||mg/dL"}) == [glu]
    assert ids("Observation", {"value-quantity": "ap70"}) == [hr1]
    assert ids("Observation", {"value-quantity": "le72"}) == [hr1]
    bad = fhir.get("Observation", params={"value-quantity": "lots"})
    assert bad.status_code == 400


def test_of_type_and_identifier_modifiers(fhir: Fhir) -> None:
    mr = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
    pid = fhir.create(patient("Typed", identifier=[{"type": mr, "system": "urn:mrn",
                                                    "value": "77"}]))["id"]
    fhir.create(patient("Untyped", identifier=[{"system": "urn:mrn", "value": "77"}]))
    assert fhir.ids("Patient", {"identifier:of-type":
                                "http://terminology.hl7.org/CodeSystem/v2-0203|MR|77"}) == [pid]
    assert fhir.ids("Patient", {"identifier:of-type":
                                "http://terminology.hl7.org/CodeSystem/v2-0203|DL|77"}) == []
    assert fhir.get("Patient", params={"identifier:of-type": "MR|77"}).status_code == 400
    oid = fhir.create({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                       "subject": {"identifier": {"system": "urn:mrn", "value": "77"}}})["id"]
    assert fhir.ids("Observation", {"subject:identifier": "urn:mrn|77"}) == [oid]
    assert fhir.ids("Observation", {"subject:identifier": "urn:mrn|78"}) == []


def test_composite_parameters(fhir: Fhir, people: dict[str, str]) -> None:
    ids = fhir.ids
    assert ids("Observation", {"code-value-quantity": "http://loinc.org|8867-4$gt80"}) == \
        [people["hr2"]]
    assert ids("Observation", {"code-value-quantity": "8867-4$72"}) == [people["hr1"]]
    # the same value under another code does not match: both parts on one row
    assert ids("Observation", {"code-value-quantity": "2339-0$72"}) == []
    assert ids("Observation", {"code-value-quantity":
                               "2339-0$1|http://unitsofmeasure.org|g/L"}) == [people["glu"]]
    bp = fhir.create({"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                      "subject": {"reference": f"Patient/{people['peter']}"},
                      "component": [
                          {"code": {"coding": [{"system": "http://loinc.org",
                                                "code": "8480-6"}]},
                           "valueQuantity": {"value": 150, "unit": "mm[Hg]"}},
                          {"code": {"coding": [{"system": "http://loinc.org",
                                                "code": "8462-4"}]},
                           "valueQuantity": {"value": 95, "unit": "mm[Hg]"}}]})["id"]
    assert ids("Observation", {"component-code-value-quantity": "8480-6$gt140"}) == [bp]
    assert ids("Observation", {"component-code-value-quantity": "8462-4$gt140"}) == []
    assert ids("Observation", {"combo-code-value-quantity": "8462-4$95"}) == [bp]
    # the combo- parameters are searched on the rows of the parameters they unite
    assert ids("Observation", {"combo-code-value-quantity": "8867-4$72"}) == [people["hr1"]]
    assert ids("Observation", {"combo-code": "8480-6"}) == [bp]
    assert set(ids("Observation", {"combo-code": "85354-9,8867-4"})) == \
        {bp, people["hr1"], people["hr2"]}
    assert ids("Observation", {"combo-value-quantity": "150"}) == [bp]
    assert ids("Observation", {"combo-value-quantity": "72"}) == [people["hr1"]]
    assert ids("Observation", {"combo-code:missing": "true"}) == []
    assert bp not in ids("Observation", {"combo-code:not": "8462-4"})
    assert people["hr1"] in ids("Observation", {"combo-code:not": "8462-4"})
    assert ids("Observation", {"combo-value-quantity:missing": "true"}) == [people["txt"]]
    assert ids("Observation", {"combo-value-quantity": "ge72", "_sort": "-combo-value-quantity"}
               ) == [bp, people["glu"], people["hr2"], people["hr1"]]
    assert fhir.get("Observation", params={"code-value-quantity": "8867-4"}).status_code == 400
    assert fhir.get("Observation", params={"_sort": "code-value-quantity"}).status_code == 400


def test_absolute_and_canonical_references_are_found_by_url(fhir: Fhir,
                                                            people: dict[str, str]) -> None:
    elsewhere = "http://other.example.org/fhir/Patient/9"
    remote = fhir.create({"resourceType": "Observation", "status": "final",
                          "code": {"text": "x"}, "subject": {"reference": elsewhere}})["id"]
    form = "http://example.org/Questionnaire/phq-9"
    answers = fhir.create({"resourceType": "QuestionnaireResponse", "status": "completed",
                           "questionnaire": form})["id"]
    assert fhir.ids("Observation", {"subject": elsewhere}) == [remote]
    assert fhir.ids("Observation", {"subject": elsewhere + "0"}) == []
    assert fhir.ids("QuestionnaireResponse", {"questionnaire": form}) == [answers]
    assert fhir.ids("QuestionnaireResponse", {"questionnaire": form + "-a"}) == []
    # a relative reference is still found by its target, not by a url
    assert set(fhir.ids("Observation", {"subject": f"Patient/{people['peter']}"})) == \
        {people["hr1"], people["hr2"]}


def test_references_chains_and_reverse_chains(fhir: Fhir, people: dict[str, str]) -> None:
    ids = fhir.ids
    peter, zoe = people["peter"], people["zoe"]
    hr = {people["hr1"], people["hr2"]}
    assert set(ids("Observation", {"subject": f"Patient/{peter}"})) == hr
    assert set(ids("Observation", {"subject": peter})) == hr
    assert set(ids("Observation", {"subject:Patient": peter})) == hr
    assert set(ids("Observation", {"patient": peter})) == hr
    assert set(ids("Observation", {"subject:missing": "false", "code": "8867-4"})) == hr
    assert set(ids("Observation", {"subject.name": "peter"})) == hr
    assert set(ids("Observation", {"subject:Patient.birthdate": "lt1980"})) == hr
    assert set(ids("Observation", {"patient.identifier": "urn:mrn|1002"})) == \
        {people["glu"], people["txt"]}
    assert ids("Patient", {"_has:Observation:patient:code": "2339-0"}) == [zoe]
    assert set(ids("Patient", {"_has:Observation:subject:status": "final"})) == {peter, zoe}
    base = fhir.client.base_url
    absolute = f"{base}/fhir/Patient/{peter}"
    assert set(ids("Observation", {"subject": absolute})) == hr


def test_a_narrowed_parameter_finds_only_its_parts_references_to_its_type(
        fhir: Fhir, people: dict[str, str]) -> None:
    """``patient`` is ``subject.where(resolve() is Patient)``: searched on the subject rows,
    it must still leave out an Observation about a Group, in every path that reads it."""
    ids = fhir.ids
    peter = people["peter"]
    group = fhir.create({"resourceType": "Group", "type": "person", "actual": True})["id"]
    about_group = fhir.create(observation(f"Group/{group}", value=80))["id"]
    hr = {people["hr1"], people["hr2"]}
    every = {people["hr1"], people["hr2"], people["glu"], people["txt"]}
    assert ids("Observation", {"subject": group}) == [about_group]
    assert ids("Observation", {"patient": group}) == []
    assert set(ids("Observation", {"patient": peter})) == hr
    assert ids("Observation", {"patient:missing": "true"}) == [about_group]
    assert set(ids("Observation", {"patient:missing": "false"})) == every
    assert set(ids("Observation", {"patient:not": f"Patient/{people['zoe']}"})) \
        >= hr | {about_group}
    assert set(ids("Observation", {"patient.gender": "male"})) == hr
    assert ids("Group", {"_has:Observation:patient:code": "8867-4"}) == []
    assert ids("Group", {"_has:Observation:subject:code": "8867-4"}) == [group]
    included = fhir.search("Observation", {"_id": about_group, "_include": "Observation:patient"})
    assert [e["resource"]["id"] for e in included["entry"]] == [about_group]
    rev = fhir.search("Group", {"_id": group, "_revinclude": "Observation:patient"})
    assert [e["resource"]["id"] for e in rev["entry"]] == [group]
    rev = fhir.search("Patient", {"_id": peter, "_revinclude": "Observation:patient"})
    assert {e["resource"]["id"] for e in rev["entry"]} == {peter} | hr
    ordered = ids("Observation", {"code": "8867-4", "_sort": "patient"})
    assert set(ordered[:2]) == hr and ordered[2:] == [about_group]  # no patient: last
    # its :identifier rows are its own
    fhir.create({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                 "subject": {"reference": f"Group/{group}",
                             "identifier": {"system": "urn:grp", "value": "g1"}}})
    assert ids("Observation", {"patient:identifier": "urn:grp|g1"}) == []
    assert len(ids("Observation", {"subject:identifier": "urn:grp|g1"})) == 1


def _pages(fhir: Fhir, rtype: str, params: Any) -> list[str]:
    """The ids of every page of a search, following its next links."""
    bundle = fhir.search(rtype, params)
    seen = [e["resource"]["id"] for e in bundle.get("entry", [])]
    while (url := _next(bundle)) is not None:
        bundle = _follow(fhir, url)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
    return seen


def test_chains_walked_in_key_order_match_those_found_from_their_targets(
        fhir: Fhir, db_url: str, people: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.records import search

    peter = f"Patient/{people['peter']}"
    more = [fhir.create(observation(peter, value=60 + i))["id"] for i in range(5)]
    gone = fhir.create(observation(peter, value=1))["id"]
    assert fhir.delete(f"Observation/{gone}").status_code in (200, 204)
    hr = [people["hr1"], people["hr2"], *more]
    queries: list[tuple[dict[str, str], list[str]]] = [
        ({"subject:Patient.name": "peter", "_count": "2"}, hr),
        ({"subject.name": "chalmers", "_count": "3"}, hr),
        ({"patient.identifier": "urn:mrn|1002"}, [people["glu"], people["txt"]]),
        ({"subject:Patient.birthdate": "lt1980", "value-quantity": "gt70"},
         [people["hr1"], people["hr2"]]),
        ({"subject:Patient.name": "nobody-by-that-name"}, []),
    ]

    def run() -> list[Any]:
        out: list[Any] = []
        for params, expected in queries:
            found = _pages(fhir, "Observation", params)
            assert sorted(found) == sorted(expected), params
            first = fhir.search("Observation", params)
            accurate = fhir.search("Observation", {**params, "_total": "accurate"})
            none = fhir.search("Observation", {**params, "_count": "0"})
            assert accurate["total"] == none["total"] == len(expected), params
            out.append((found, first.get("total"), [lk["url"] for lk in first["link"]]))
        return out

    # rows that cost a trillion times a match: every chain is found from its targets
    monkeypatch.setattr(search, "CHAIN_WALK_ROW_COST", 10.0**12)
    with counting(db_url, fhir.client) as found_statements:
        from_targets = run()
    # rows that cost nothing: every chain that points anywhere is walked
    monkeypatch.setattr(search, "CHAIN_WALK_ROW_COST", 0.0)
    with counting(db_url, fhir.client) as walked_statements:
        walked = run()
    assert walked == from_targets  # same matches, pages, totals and links
    assert not any("EXISTS" in s for s in found_statements if "fhir_idx_reference" in s)
    assert any("EXISTS" in s for s in walked_statements if "fhir_idx_reference" in s)
    # the decision costs one statement per chain, whichever way it goes (the audit records
    # are written in batches, so only the search's own statements are compared)
    assert len([s for s in walked_statements if "fhir_" in s]) == \
        len([s for s in found_statements if "fhir_" in s])


def _page_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if "page_keys" in s]


def test_searches_that_walk_their_type_find_what_the_value_indexes_find(
        fhir: Fhir, db_url: str, people: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.records import search

    born = [fhir.create(patient("Walker", f"W{i}", birthDate=f"195{i}-05-01",
                                gender="female" if i % 2 else "male"))["id"]
            for i in range(7)]
    assert fhir.delete(f"Patient/{born[3]}").status_code in (200, 204)
    diabetes = {"resourceType": "Condition", "subject": {"reference": f"Patient/{born[1]}"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}
    fhir.create(diabetes)
    fhir.create({**diabetes, "subject": {"reference": f"Patient/{born[5]}"}})
    fhir.create({**diabetes, "subject": {"reference": f"Patient/{born[5]}"}})
    queries: list[tuple[str, list[tuple[str, str]], set[str]]] = [
        ("Patient", [("family", "walker"), ("_count", "2")], {*born} - {born[3]}),
        ("Patient", [("birthdate", "ge1952"), ("birthdate", "lt1956"), ("gender", "female"),
                     ("_count", "1")], {born[5]}),
        ("Patient", [("_has:Condition:patient:code", "44054006"), ("_count", "1")],
         {born[1], born[5]}),
        ("Patient", [("identifier", "urn:mrn|"), ("_count", "1")],
         {people["peter"], people["zoe"]}),
        ("Observation", [("code", "http://loinc.org|8867-4"), ("value-quantity", "gt80")],
         {people["hr2"]}),
        ("Patient", [("family", "nobody-by-that-name")], set()),
    ]

    def run() -> tuple[list[Any], list[bool]]:
        out: list[Any] = []
        walked: list[bool] = []
        for rtype, params, expected in queries:
            found = _pages(fhir, rtype, params)
            assert set(found) == expected and len(found) == len(expected), params
            with counting(db_url, fhir.client) as seen:
                first = fhir.search(rtype, params)
            page, = _page_statements(seen)
            walked.append("EXISTS" in page)
            accurate = fhir.search(rtype, [*params, ("_total", "accurate")])
            assert accurate["total"] == len(expected), params
            out.append((found, first.get("total"), [lk["url"] for lk in first["link"]]))
        return out, walked

    # reading a row in key order costs a trillion times a match: nothing walks
    monkeypatch.setattr(search, "WALK_ROW_COST", 10.0**12)
    from_indexes, walks = run()
    assert not any(walks)
    # reading a row costs nothing: every search walks
    monkeypatch.setattr(search, "WALK_ROW_COST", 0.0)
    walked, walks = run()
    assert all(walks)
    assert walked == from_indexes  # same matches, pages, totals and links


def test_a_search_walks_only_where_its_matches_are_many_among_its_type(
        fhir: Fhir, db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL the decision is asked of the data: criteria met by many Patients walk
    them; two met apart by many but together by few, or one met by few, do not."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no row estimate: its searches never walk by decision")
    from careplane.records import search

    for i in range(48):
        dense = i < 36
        fhir.create(patient("Dense" if dense else "Sparse", f"D{i}",
                            gender="female" if (i % 2 if dense else i < 39) else "male",
                            birthDate="1940-01-01" if dense else "1990-01-01"))
    with db.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE fhir_resource")
    # a first page of one reads seven rows, so that 48 Patients are a large population:
    # the walk pays where at least ten of them match
    monkeypatch.setattr(search, "COUNT_BOUND", 6)

    def walks(params: list[tuple[str, str]]) -> bool:
        with counting(db_url, fhir.client) as seen:
            bundle = fhir.search("Patient", [*params, ("_count", "1")])
        assert bundle.get("entry"), params
        page, = _page_statements(seen)
        return "EXISTS" in page

    assert walks([("family", "dense")])
    assert walks([("family", "dense"), ("birthdate", "lt1950")])
    # 21 women and 12 Sparses, but 3 women named Sparse
    assert not walks([("gender", "female"), ("family", "sparse")])
    assert not walks([("given", "D40")])


def test_results_control(fhir: Fhir, people: dict[str, str]) -> None:
    count = fhir.search("Patient", {"_summary": "count"})
    assert count["total"] == 4 and "entry" not in count
    none = fhir.search("Patient", {"_total": "none"})
    assert "total" not in none
    names = fhir.search("Patient", {"_sort": "-birthdate", "birthdate:missing": "false"})
    assert [e["resource"]["id"] for e in names["entry"]] == \
        [people["ann"], people["zoe"], people["peter"]]
    by_family = fhir.ids("Patient", {"_sort": "family,_id", "family:missing": "false"})
    assert by_family == [people["peter"], people["ann"], people["zoe"]]
    summary = fhir.search("Patient", {"_id": people["peter"], "_summary": "true"})
    res = summary["entry"][0]["resource"]
    assert "telecom" in res and "identifier" in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    elements = fhir.search("Patient", {"_id": people["peter"], "_elements": "gender"})
    assert set(elements["entry"][0]["resource"]) == {"resourceType", "id", "meta", "gender"}
    text = fhir.search("Observation", {"_id": people["hr1"], "_summary": "text"})
    assert set(text["entry"][0]["resource"]) <= {"resourceType", "id", "meta", "text",
                                                 "status", "code"}


def test_total_without_total_is_counted_up_to_a_bound(fhir: Fhir, people: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from careplane.records import search

    monkeypatch.setattr(search, "COUNT_BOUND", 2)
    # four Patients, more than the bound: no total unless asked, exact when asked
    assert "total" not in fhir.search("Patient", {"_count": "1"})
    assert fhir.search("Patient", {"_count": "1", "_total": "accurate"})["total"] == 4
    assert fhir.search("Patient", {"_summary": "count"})["total"] == 4
    assert "total" not in fhir.search("Patient", {"_count": "0"})
    # within the bound: counted
    assert fhir.search("Patient", {"gender": "female", "_count": "1"})["total"] == 2
    assert fhir.search("Patient", {"gender": "female", "_count": "0"})["total"] == 2
    # a last page shows the total itself, however many there are, sorted pages included
    assert fhir.search("Patient", {"_count": "10"})["total"] == 4
    first = fhir.search("Patient", {"_count": "3", "_sort": "_id"})
    assert "total" not in first
    last = _follow(fhir, _next(first) or "")
    assert last["total"] == 4 and len(last["entry"]) == 1
    # a later keyset page that is not the last one has no total; the last one counts them
    second = _follow(fhir, _next(fhir.search("Patient", {"_count": "1"})) or "")
    assert "total" not in second


def test_include_and_revinclude(fhir: Fhir, people: dict[str, str]) -> None:
    bundle = fhir.search("Observation", {"code": "8867-4", "_include": "Observation:subject"})
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes.count(("Observation", "match")) == 2
    assert modes.count(("Patient", "include")) == 1  # deduplicated
    assert bundle["total"] == 2
    rev = fhir.search("Patient", {"_id": people["zoe"], "_revinclude": "Observation:subject"})
    assert {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include"} == \
        {people["glu"], people["txt"]}
    # :iterate follows includes of includes: Observation -> Patient -> Observation
    it = fhir.search("Observation", {"_id": people["hr1"], "_include": "Observation:subject",
                                     "_revinclude:iterate": "Observation:subject"})
    included = {e["resource"]["id"] for e in it["entry"] if e["search"]["mode"] == "include"}
    assert included == {people["peter"], people["hr2"]}
    wild = fhir.search("Observation", {"_id": people["hr1"], "_include": "Observation:*"})
    assert people["peter"] in {e["resource"]["id"] for e in wild["entry"]}


def test_compartment_search(fhir: Fhir, people: dict[str, str]) -> None:
    zoe = people["zoe"]
    assert set(fhir.ids(f"Patient/{zoe}/Observation")) == {people["glu"], people["txt"]}
    assert fhir.ids(f"Patient/{zoe}/Observation", {"code": "2339-0"}) == [people["glu"]]
    assert fhir.ids(f"Patient/{zoe}/Patient") == [zoe]
    assert fhir.get(f"Patient/{zoe}/Organization").status_code == 400


def test_unknown_parameters_lenient_or_strict(fhir: Fhir, people: dict[str, str]) -> None:
    lenient = fhir.search("Patient", {"shoe-size": "9", "family": "chalmers"})
    assert {e["resource"]["id"] for e in lenient["entry"]
            if e["search"]["mode"] == "match"} == {people["peter"], people["ann"]}
    (outcome,) = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome["resource"]["issue"][0]["diagnostics"]
    assert "shoe-size" not in lenient["link"][0]["url"]
    strict = fhir.get("Patient", params={"shoe-size": "9"},
                      headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "shoe-size" in strict.text
    modifier = fhir.get("Patient", params={"birthdate:exact": "2000"},
                        headers={"Prefer": "handling=strict"})
    assert modifier.status_code == 400


def _next(bundle: dict[str, Any]) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)


def _follow(fhir: Fhir, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return fhir.search(parts.path.removeprefix("/fhir/"), parse_qsl(parts.query))


def test_paging_is_stable_under_writes(fhir: Fhir) -> None:
    made = [fhir.create(patient("Page", f"P{i}"))["id"] for i in range(7)]
    first = fhir.search("Patient", {"family": "page", "_count": "3"})
    assert first["total"] == 7 and len(first["entry"]) == 3
    seen = [e["resource"]["id"] for e in first["entry"]]
    fhir.delete(f"Patient/{seen[0]}")          # a deletion before the cursor
    fhir.create(patient("Page", "Late"))       # a new resource after it
    url = _next(first)
    while url:
        page = _follow(fhir, url)
        seen += [e["resource"]["id"] for e in page["entry"]]
        url = _next(page)
    assert seen[:7] == made and len(seen) == 8  # nothing skipped, nothing repeated
    sorted_page = fhir.search("Patient", {"family": "page", "_sort": "given", "_count": "2"})
    second = _follow(fhir, _next(sorted_page) or "")
    assert [lk["relation"] for lk in second["link"]].count("previous") == 1
    bad = fhir.get("Patient", params={"_cursor": "%%%"})
    assert bad.status_code == 400


@contextmanager
def counting(db_url: str, client: Any) -> Iterator[list[str]]:
    engine = client.app.state.platform.db.engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The event hub polls on its own thread; BEGIN is transaction control, not a query.
        if "event_outbox" not in statement and not statement.lstrip().startswith("BEGIN"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_queries_per_search_do_not_grow_with_results(fhir: Fhir, db: Database,
                                                     db_url: str) -> None:
    pid = fhir.create(patient("Many", "Results"))["id"]
    params = {"subject": f"Patient/{pid}", "_include": "Observation:subject",
              "_revinclude": "Provenance:target"}

    def statements_for(n: int, count: int) -> tuple[int, int]:
        for i in range(n):
            fhir.create(observation(f"Patient/{pid}", value=i))
        with counting(db_url, fhir.client) as seen:
            bundle = fhir.search("Observation", {**params, "_count": str(count)})
        assert bundle["total"] >= n
        return len(seen), len([s for s in seen if "fhir_" in s])

    few_all, few = statements_for(2, 100)
    many_all, many = statements_for(25, 100)
    # the search itself: the page with its total, one per _include/_revinclude, whatever it
    # finds, and on PostgreSQL two that decide whether to walk the Observations in key order
    walk_decision = 2 if db.engine.dialect.name == "postgresql" else 0
    assert few == many == 3 + walk_decision
    # a page that does not hold them all: the same statement counts them (up to a bound)
    paged_all, paged = statements_for(0, 10)
    assert paged == 3 + walk_decision
    # with authentication and the audit record around it
    assert max(few_all, many_all, paged_all) <= 12 + walk_decision, \
        (few_all, many_all, paged_all)
