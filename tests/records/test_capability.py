from careplane.records.capability import capability_statement
from careplane.records.search_params import parse_search


def test_statement_lists_only_what_search_accepts() -> None:
    stmt = capability_statement("http://example.org/fhir")
    assert stmt["fhirVersion"] == "4.0.1"
    assert stmt["implementation"]["url"] == "http://example.org/fhir"
    rest = stmt["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert len(by_type) > 140
    patient = by_type["Patient"]
    names = {p["name"] for p in patient["searchParam"]}
    assert {"_id", "_lastUpdated", "name", "birthdate", "identifier", "general-practitioner"} \
        <= names
    assert {"read", "vread", "create", "update", "delete", "search-type"} <= \
        {i["code"] for i in patient["interaction"]}
    assert any(o["name"] == "everything" for o in patient["operation"])
    assert "Observation:subject" in by_type["Patient"]["searchRevInclude"]
    for rtype, res in by_type.items():
        for p in res["searchParam"]:
            req = parse_search(rtype, [(p["name"] + ":missing", "true")], strict=True)
            assert req.criteria, (rtype, p["name"])
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch",
                                                        "history-system"}
