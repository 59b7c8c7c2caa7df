"""Search across types (GET /fhir?_type=...), ValueSet membership (:in, :not-in), _total."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from careplane.records.search import run_search
from careplane.records.search_params import parse_search
from tests.records.conftest import Fhir, observation, patient

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == "match"]


@pytest.fixture
def chart(fhir: Fhir) -> dict[str, str]:
    ids = {}
    ids["pat"] = fhir.create(patient("Across", "Types", meta={
        "tag": [{"system": "urn:t", "code": "vip"}],
        "profile": ["http://example.org/StructureDefinition/my-patient"]}))["id"]
    subject = f"Patient/{ids['pat']}"
    ids["hr"] = fhir.create(observation(subject, code="8867-4", meta={
        "tag": [{"system": "urn:t", "code": "vip"}]}))["id"]
    ids["bp"] = fhir.create(observation(subject, code="8480-6", value=120, unit="mm[Hg]"))["id"]
    ids["glu"] = fhir.create(observation(subject, code="2339-0", value=5, unit="mmol/L"))["id"]
    ids["dm"] = fhir.create({"resourceType": "Condition", "subject": {"reference": subject},
                             "code": {"coding": [{"system": SNOMED, "code": "44054006"}]},
                             "meta": {"security": [{"system": "urn:s", "code": "R"}]}})["id"]
    return ids


def test_system_search_across_types(fhir: Fhir, other_org: Fhir,
                                    chart: dict[str, str]) -> None:
    c = chart
    both = fhir.search("", {"_type": "Patient,Condition", "_count": "50"})
    assert set(_ids(both)) == {c["pat"], c["dm"]}
    assert both["total"] == 2
    assert set(_ids(fhir.search("", {"_tag": "urn:t|vip"}))) == {c["pat"], c["hr"]}
    assert _ids(fhir.search("", {"_tag": "urn:t|vip", "_type": "Observation"})) == [c["hr"]]
    assert _ids(fhir.search("", {"_security": "R"})) == [c["dm"]]
    assert _ids(fhir.search("", {"_profile": "http://example.org/StructureDefinition/"
                                              "my-patient"})) == [c["pat"]]
    assert set(_ids(fhir.search("", {"_id": f"{c['hr']},{c['dm']}"}))) == {c["hr"], c["dm"]}
    assert len(_ids(fhir.search("", {"_lastUpdated": "gt2000-01-01", "_count": "50"}))) == 5
    assert _ids(fhir.search("", {"_lastUpdated": "lt2000-01-01"})) == []
    # a parameter every listed type has (patient, code) works across them
    found = fhir.search("", {"_type": "Observation,Condition",
                             "code": f"{SNOMED}|44054006,{LOINC}|2339-0"})
    assert set(_ids(found)) == {c["dm"], c["glu"]}
    # _sort by _lastUpdated, paging with stable links, and _include of the subject
    page = fhir.search("", {"_type": "Observation", "_sort": "-_lastUpdated", "_count": "2",
                            "_include": "Observation:subject"})
    assert _ids(page) == [c["glu"], c["bp"]]
    assert [e["resource"]["id"] for e in page["entry"]
            if e["search"]["mode"] == "include"] == [c["pat"]]
    nxt = next(lk["url"] for lk in page["link"] if lk["relation"] == "next")
    assert urlsplit(nxt).path == "/fhir"
    assert _ids(fhir.search("", parse_qsl(urlsplit(nxt).query))) == [c["hr"]]
    # another organisation sees none of it
    assert _ids(other_org.search("", {"_lastUpdated": "gt2000-01-01"})) == []
    assert other_org.search("", {"_type": "Patient,Observation"})["total"] == 0
    # refusals: a type that does not exist, a parameter not every type has, sort by value
    for params, code in (({"_type": "Nope"}, 400), ({"family": "x"}, 400),
                         ({"_type": "Patient,Observation", "code": "x"}, 400),
                         ({"_type": "Patient,Observation", "_sort": "birthdate"}, 400)):
        r = fhir.get("", params=params, headers={"Prefer": "handling=strict"})
        assert r.status_code == code, (params, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    lenient = fhir.search("", {"_type": "Patient,Observation", "code": "x"})
    assert lenient["entry"][-1]["resource"]["resourceType"] == "OperationOutcome"
    assert len(_ids(lenient)) == 4
    r = fhir.client.post("/fhir/_search", content="_type=Condition",
                         headers={**fhir.headers,
                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and _ids(r.json()) == [c["dm"]]


def _value_set(fhir: Fhir, url: str, **body: Any) -> str:
    return str(fhir.create({"resourceType": "ValueSet", "url": url, "status": "active",
                            **body})["id"])


def test_token_in_and_not_in_a_stored_value_set(fhir: Fhir, other_org: Fhir,
                                                chart: dict[str, str]) -> None:
    c = chart
    vitals = _value_set(fhir, "http://example.org/vs/vitals", compose={"include": [
        {"system": LOINC, "concept": [{"code": "8867-4"}, {"code": "8480-6"}]}]})
    _value_set(fhir, "http://example.org/vs/all-loinc-but-glucose", compose={
        "include": [{"system": LOINC}],
        "exclude": [{"system": LOINC, "concept": [{"code": "2339-0"}]}]})
    _value_set(fhir, "http://example.org/vs/expanded", expansion={
        "timestamp": "2024-01-01T00:00:00Z",
        "contains": [{"system": LOINC, "code": "2339-0",
                      "contains": [{"system": SNOMED, "code": "44054006"}]}]})
    _value_set(fhir, "http://example.org/vs/imports", compose={"include": [
        {"valueSet": ["http://example.org/vs/expanded"]}]})
    ids = fhir.ids
    assert set(ids("Observation", {"code:in": "http://example.org/vs/vitals"})) \
        == {c["hr"], c["bp"]}
    assert set(ids("Observation", {"code:in": f"ValueSet/{vitals}"})) == {c["hr"], c["bp"]}
    assert set(ids("Observation", {"code:in": "http://example.org/vs/all-loinc-but-glucose"})) \
        == {c["hr"], c["bp"]}
    assert ids("Observation", {"code:not-in": "http://example.org/vs/vitals"}) == [c["glu"]]
    assert ids("Observation", {"code:in": "http://example.org/vs/expanded"}) == [c["glu"]]
    assert ids("Condition", {"code:in": "http://example.org/vs/imports"}) == [c["dm"]]
    # OR of two value sets, and :in inside a chain
    assert set(ids("Observation", {"code:in": "http://example.org/vs/vitals,"
                                              "http://example.org/vs/expanded"})) \
        == {c["hr"], c["bp"], c["glu"]}
    assert ids("Patient", {"_has:Condition:subject:code:in":
                           "http://example.org/vs/expanded"}) == [c["pat"]]
    # an unknown ValueSet, or one of another organisation, is a 400 naming it
    for who in (fhir, other_org):
        r = who.get("Observation", params={"code:in": "http://example.org/vs/nope"})
        assert r.status_code == 400 and "vs/nope" in r.text
    r = other_org.get("Observation", params={"code:in": "http://example.org/vs/vitals"})
    assert r.status_code == 400
    _value_set(fhir, "http://example.org/vs/filtered", compose={"include": [
        {"system": LOINC, "filter": [{"property": "parent", "op": "is-a", "value": "x"}]}]})
    r = fhir.get("Observation", params={"code:in": "http://example.org/vs/filtered"})
    assert r.status_code == 400 and "filter" in r.text


def test_total_modes(fhir: Fhir, chart: dict[str, str], client: Any, accounts: Any,
                     db_url: str) -> None:
    assert fhir.search("Observation", {"_total": "accurate"})["total"] == 3
    assert "total" not in fhir.search("Observation", {"_total": "none"})
    from tests.records.test_search import counting

    with counting(db_url, fhir.client) as seen:
        estimate = fhir.search("Observation", {"_total": "estimate"})["total"]
    searched = [s for s in seen if "fhir_resource" in s]
    if db_url.startswith("sqlite"):
        assert estimate == 3  # no planner estimate there: counted
        assert any("count(" in s for s in searched)
    else:
        assert isinstance(estimate, int) and estimate >= 1  # the planner's row estimate
        assert any(s.startswith("EXPLAIN") for s in searched)
        assert not any("count(" in s for s in searched)  # no rows were counted
    with counting(db_url, fhir.client) as seen:
        assert "total" not in fhir.search("Observation", {"_total": "none"})
    assert not any("count(" in s for s in seen if "fhir_resource" in s)
    with client.app.state.platform.session() as session:
        principal = _principal(session, accounts)
        req = parse_search("Observation", [("_total", "none")])
        assert run_search(session, principal, req).total is None


def _principal(session: Any, accounts: Any) -> Any:
    from careplane.security import Principal, Role

    org = accounts.org("org-a")
    return Principal("u-total", "total", org, frozenset({Role.clinician}), "t")


def test_a_search_past_the_time_limit_is_cancelled_with_an_outcome(
        fhir: Fhir, chart: dict[str, str], client: Any, db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("statement_timeout is PostgreSQL's; SQLite runs in-process")
    import time

    from sqlalchemy import and_, text

    from careplane.records import search
    from careplane.records.config import FhirConfig

    client.app.state.fhir_config = FhirConfig(search_timeout_ms=200)
    plain = search.criterion_clause

    def slow(*args: Any, **kwargs: Any) -> Any:  # a criterion that takes five seconds
        return and_(plain(*args, **kwargs), text("(SELECT true FROM pg_sleep(5))"))

    monkeypatch.setattr(search, "criterion_clause", slow)
    engine = client.app.state.platform.db.engine
    for path, params in (("Observation", {"code": "8867-4"}),
                         ("", {"_type": "Observation", "code": "8867-4"})):
        started = time.monotonic()
        r = fhir.get(path, params=params)
        assert time.monotonic() - started < 3
        assert r.status_code == 503, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "too-costly" and "time limit" in issue["diagnostics"]
        assert engine.pool.checkedout() == 0
    monkeypatch.setattr(search, "criterion_clause", plain)
    # the limit was the search transaction's own: the pooled connection is back to normal
    assert fhir.ids("Observation", {"code": "8867-4"}) == [chart["hr"]]
    with engine.connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() != "200ms"


def test_a_patient_searching_across_types_sees_only_their_compartment(
        fhir: Fhir, chart: dict[str, str], client: Any, accounts: Any, db: Any) -> None:
    from tests.records.conftest import patient_client

    other = fhir.create(patient("Else", "Eve"))["id"]
    their_obs = fhir.create(observation(f"Patient/{other}"))["id"]
    me = patient_client(client, accounts, db, "pat", chart["pat"])
    c = chart
    mine = {c["pat"], c["hr"], c["bp"], c["glu"], c["dm"]}
    assert set(_ids(me.search("", {"_count": "100"}))) == mine
    assert set(_ids(me.search("", {"_type": "Patient,Observation", "_count": "100"}))) \
        == mine - {c["dm"]}
    seen = set(_ids(me.search("", {"_id": f"{other},{their_obs},{c['hr']}"})))
    assert seen == {c["hr"]}


def test_list_finds_the_resources_a_list_names(fhir: Fhir, other_org: Fhir,
                                               chart: dict[str, str]) -> None:
    other = fhir.create(patient("Not", "Listed"))["id"]
    listed = fhir.create({"resourceType": "List", "status": "current", "mode": "working",
                          "entry": [{"item": {"reference": f"Patient/{chart['pat']}"}},
                                    {"item": {"reference": f"Observation/{chart['hr']}"}},
                                    {"item": {"reference": f"Observation/{chart['bp']}"}}]})
    lid = listed["id"]
    assert _ids(fhir.search("Patient", {"_list": lid})) == [chart["pat"]]
    assert sorted(_ids(fhir.search("Observation", {"_list": lid}))) == \
        sorted([chart["hr"], chart["bp"]])
    # AND'd with other criteria, OR'd across lists
    assert _ids(fhir.search("Observation", {"_list": lid, "code": "8867-4"})) == [chart["hr"]]
    assert _ids(fhir.search("Patient", {"_list": f"nolist,{lid}"})) == [chart["pat"]]
    assert _ids(fhir.search("Patient", {"_list": "nolist"})) == []
    assert other not in _ids(fhir.search("Patient", {"_list": lid}))
    # across types
    both = _ids(fhir.search("", {"_type": "Patient,Observation", "_list": lid}))
    assert sorted(both) == sorted([chart["pat"], chart["hr"], chart["bp"]])
    # another organisation's List is not theirs to use, nor are the resources it names
    theirs = other_org.create({"resourceType": "List", "status": "current", "mode": "working",
                               "entry": [{"item": {"reference": f"Patient/{other}"}}]})["id"]
    assert _ids(fhir.search("Patient", {"_list": theirs})) == []
    assert _ids(other_org.search("Patient", {"_list": lid})) == []
    # functional lists ($current-problems...) are not kept: a clear 400
    r = fhir.get("Condition", params={"_list": "$current-problems"})
    assert r.status_code == 400 and "_list" in r.text


FINDINGS = "http://example.org/cs/findings"


def _findings(fhir: Fhir, **extra: Any) -> str:
    """A small is-a hierarchy: disorder > metabolic > diabetes > type-2, and cardiac under
    disorder by a ``parent`` property rather than by nesting."""
    return str(fhir.create({
        "resourceType": "CodeSystem", "url": FINDINGS, "status": "active",
        "content": "complete", **extra,
        "concept": [
            {"code": "disorder", "concept": [
                {"code": "metabolic", "concept": [
                    {"code": "diabetes", "concept": [{"code": "type-2"}]}]}]},
            {"code": "cardiac", "property": [{"code": "parent", "valueCode": "disorder"}]}]})
        ["id"])


def _coded(fhir: Fhir, subject: str, system: str, code: str) -> str:
    return str(fhir.create({"resourceType": "Condition", "subject": {"reference": subject},
                            "code": {"coding": [{"system": system, "code": code}]}})["id"])


def test_token_below_and_above_follow_a_stored_code_system(fhir: Fhir, other_org: Fhir,
                                                            chart: dict[str, str]) -> None:
    _findings(fhir)
    subject = f"Patient/{chart['pat']}"
    t2, dm, heart = (_coded(fhir, subject, FINDINGS, c) for c in ("type-2", "diabetes",
                                                                  "cardiac"))
    _coded(fhir, subject, "http://example.org/cs/other", "diabetes")  # same code, other system
    ids = fhir.ids
    assert set(ids("Condition", {"code:below": f"{FINDINGS}|diabetes"})) == {t2, dm}
    assert set(ids("Condition", {"code:below": f"{FINDINGS}|disorder"})) == {t2, dm, heart}
    assert set(ids("Condition", {"code:above": f"{FINDINGS}|type-2"})) == {t2, dm}
    assert ids("Condition", {"code:above": f"{FINDINGS}|cardiac"}) == [heart]
    assert ids("Condition", {"code:below": f"{FINDINGS}|type-2"}) == [t2]
    # OR'd values, and inside a reverse chain
    assert set(ids("Condition", {"code:below": f"{FINDINGS}|type-2,{FINDINGS}|cardiac"})) \
        == {t2, heart}
    assert ids("Patient", {"_has:Condition:subject:code:below": f"{FINDINGS}|metabolic"}) \
        == [chart["pat"]]
    # a code without its system, an unknown code system, one of another organisation
    for who, value, needle in ((fhir, "diabetes", "system|code"),
                               (fhir, "http://example.org/cs/nope|x", "cs/nope"),
                               (other_org, f"{FINDINGS}|diabetes", "cs/findings")):
        r = who.get("Condition", params={"code:below": value})
        assert r.status_code == 400 and needle in r.text, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_code_system_that_is_not_is_a_is_not_subsumed(fhir: Fhir) -> None:
    _findings(fhir, hierarchyMeaning="part-of")
    r = fhir.get("Condition", params={"code:below": f"{FINDINGS}|diabetes"})
    assert r.status_code == 400 and "part-of" in r.text


def test_value_set_filters_on_the_concept_hierarchy(fhir: Fhir,
                                                    chart: dict[str, str]) -> None:
    _findings(fhir)
    subject = f"Patient/{chart['pat']}"
    t2, dm, heart = (_coded(fhir, subject, FINDINGS, c) for c in ("type-2", "diabetes",
                                                                  "cardiac"))

    def value_set(name: str, *filters: dict[str, str]) -> str:
        url = f"http://example.org/vs/{name}"
        _value_set(fhir, url, compose={"include": [{"system": FINDINGS,
                                                    "filter": list(filters)}]})
        return url

    def concept(op: str, value: str) -> dict[str, str]:
        return {"property": "concept", "op": op, "value": value}

    ids = fhir.ids
    assert set(ids("Condition", {"code:in": value_set("dm", concept("is-a", "diabetes"))})) \
        == {t2, dm}
    assert ids("Condition", {"code:in": value_set("below-dm",
                                                  concept("descendent-of", "diabetes"))}) \
        == [t2]
    assert set(ids("Condition", {"code:in": value_set("not-metabolic",
                                                      concept("is-not-a", "metabolic"))})) \
        == {heart}
    assert set(ids("Condition", {"code:in": value_set("up", concept("generalizes",
                                                                    "type-2"))})) == {t2, dm}
    # filters of one include all hold; :not-in takes the same expansion
    both = value_set("both", concept("is-a", "disorder"), concept("in", "cardiac,type-2"))
    assert set(ids("Condition", {"code:in": both})) == {t2, heart}
    assert set(ids("Condition", {"code:not-in": both, "subject": subject})) \
        == {dm, chart["dm"]}  # the chart's SNOMED-coded condition is not in it either
    # concept not-in: the code system's codes less those listed
    assert set(ids("Condition", {"code:in": value_set("not-listed", concept(
        "not-in", "disorder,metabolic,cardiac,type-2"))})) == {dm}
    # an operation careplane does not answer is refused by name
    for name, bad in (("regex", {"property": "concept", "op": "regex", "value": "d.*"}),
                      ("is-a-status", {"property": "STATUS", "op": "is-a", "value": "x"})):
        r = fhir.get("Condition", params={"code:in": value_set(name, bad)})
        assert r.status_code == 400 and bad["op"] in r.text, r.text
        assert r.json()["resourceType"] == "OperationOutcome"


def test_value_set_filters_on_concept_properties(fhir: Fhir, chart: dict[str, str]) -> None:
    """=, in, not-in and exists on the properties a stored CodeSystem gives its concepts,
    whatever its hierarchy means."""
    fhir.create({
        "resourceType": "CodeSystem", "url": FINDINGS, "status": "active",
        "content": "complete", "hierarchyMeaning": "grouped-by",
        "property": [{"code": "STATUS", "type": "code"}, {"code": "chronic", "type": "boolean"},
                     {"code": "kind", "type": "Coding"}],
        "concept": [
            {"code": "diabetes", "property": [
                {"code": "STATUS", "valueCode": "active"},
                {"code": "chronic", "valueBoolean": True},
                {"code": "kind", "valueCoding": {"system": "urn:k", "code": "endocrine"}}],
             "concept": [{"code": "type-2", "property": [
                 {"code": "STATUS", "valueCode": "active"},
                 {"code": "chronic", "valueBoolean": True}]}]},
            {"code": "flu", "property": [{"code": "STATUS", "valueCode": "retired"},
                                         {"code": "chronic", "valueBoolean": False}]},
            {"code": "cardiac"}]})
    subject = f"Patient/{chart['pat']}"
    dm, t2, flu, heart = (_coded(fhir, subject, FINDINGS, c)
                          for c in ("diabetes", "type-2", "flu", "cardiac"))

    made: list[str] = []

    def matching(*filters: tuple[str, str, str]) -> set[str]:
        made.append(url := f"http://example.org/vs/by-property-{len(made)}")
        _value_set(fhir, url, compose={"include": [{"system": FINDINGS, "filter": [
            {"property": p, "op": op, "value": v} for p, op, v in filters]}]})
        return set(fhir.ids("Condition", {"code:in": url}))

    assert matching(("STATUS", "=", "active")) == {dm, t2}
    assert matching(("STATUS", "in", "retired,draft")) == {flu}
    assert matching(("STATUS", "not-in", "retired")) == {dm, t2, heart}
    assert matching(("STATUS", "exists", "false")) == {heart}
    assert matching(("chronic", "=", "true"), ("kind", "exists", "false")) == {t2}
    assert matching(("kind", "=", "endocrine")) == {dm}
    # the hierarchy is grouped-by: a property filter is answered, subsumption is not
    r = fhir.get("Condition", params={"code:below": f"{FINDINGS}|diabetes"})
    assert r.status_code == 400 and "grouped-by" in r.text
