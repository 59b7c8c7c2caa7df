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
    samples = {"_text": "pain", "_content": "pain", "near": "59.9|10.7|5|km",
               "_filter": "_id eq x"}
    for rtype, res in by_type.items():
        for p in res["searchParam"]:
            name = p["name"]
            pairs = [(name, samples[name])] if name in samples else [(name + ":missing",
                                                                       "true")]
            req = parse_search(rtype, pairs, strict=True)
            assert req.criteria, (rtype, name)
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch",
                                                        "history-system", "search-system"}
    system = {p["name"] for p in rest["searchParam"]}
    assert {"_type", "_id", "_lastUpdated", "_tag", "_security", "_profile", "_content",
            "_filter"} <= system
    from careplane.records.search_params import parse_system_search

    for p in rest["searchParam"]:
        value = {"_type": "Patient", "_content": "x", "_filter": "_id eq x"}.get(
            p["name"], "x" if p["type"] != "date" else "2024")
        parse_system_search([(p["name"], value)], strict=True)
    observation = {p["name"] for p in by_type["Observation"]["searchParam"]}
    assert {"_text", "_content", "_filter", "_tag", "_security", "_profile"} <= observation
    assert "near" in {p["name"] for p in by_type["Location"]["searchParam"]}
    assert "chromosome-variant-coordinate" in {
        p["name"] for p in by_type["MolecularSequence"]["searchParam"]}
    token_docs = [p["documentation"] for p in by_type["Observation"]["searchParam"]
                  if p["name"] == "code"]
    assert ":in" in token_docs[0] and ":not-in" in token_docs[0]
