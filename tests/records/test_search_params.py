import pytest

from careplane.records.errors import FhirError
from careplane.records.search_params import (
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    TokenValue,
    parse_number,
    parse_search,
    split_values,
)


def test_commas_split_values_unless_escaped() -> None:
    assert split_values(r"a,b\,c,d") == ["a", "b,c", "d"]


def test_values_are_parsed_by_type() -> None:
    req = parse_search("Observation", [
        ("code", "http://loinc.org|8867-4,|x,y,urn:s|"),
        ("date", "ge2024-01"),
        ("value-quantity", "lt5.4|http://unitsofmeasure.org|mmol/L"),
        ("subject", "Patient/1"),
        ("subject:Patient", "2"),
    ])
    code, date, qty, subject, typed = req.criteria
    assert code.values == (TokenValue("http://loinc.org", "8867-4"), TokenValue("", "x"),
                           TokenValue(None, "y"), TokenValue("urn:s", None))
    assert isinstance(date.values[0], DateValue) and date.values[0].prefix == "ge"
    q = qty.values[0]
    assert isinstance(q, QuantityValue) and q.number.prefix == "lt" and q.code == "mmol/L"
    assert subject.values == (ReferenceValue("Patient", "1", None),)
    assert typed.values == (ReferenceValue("Patient", "2", None),)


def test_escapes_survive_until_each_value_is_split() -> None:
    (crit,) = parse_search("Patient", [("identifier", r"urn:a\|b|x\,y\$z,plain")]).criteria
    assert crit.values == (TokenValue("urn:a|b", "x,y$z"), TokenValue(None, "plain"))
    (name,) = parse_search("Patient", [("name", r"a\\b")]).criteria
    assert name.values == ("a\\b",)


def test_number_precision_sets_the_equality_range() -> None:
    assert parse_number("n", "100") == NumberValue("eq", 100.0, 99.5, 100.5)
    hundred = parse_number("n", "100.00")
    assert (hundred.low, hundred.high) == pytest.approx((99.995, 100.005))
    assert parse_number("n", "gt1e2").prefix == "gt"


def test_chains_reverse_chains_and_controls() -> None:
    req = parse_search("Observation", [
        ("subject:Patient.name", "peter"), ("_count", "5000"), ("_sort", "-date,_id"),
        ("_include", "Observation:subject:Patient"), ("_revinclude:iterate", "Provenance:target"),
        ("_total", "none"), ("_summary", "count")])
    (chain,) = req.criteria
    assert [t for t, _ in chain.chains] == ["Patient"]
    assert req.count == 1000 and [k.name for k in req.sort] == ["date", "_id"]
    assert req.sort[0].descending
    assert req.includes[0].target == "Patient" and req.includes[1].iterate
    has = parse_search("Patient", [("_has:Observation:patient:code", "1234")]).criteria[0]
    assert has.has == ("Observation", "patient")


@pytest.mark.parametrize("pairs", [
    [("birthdate", "soon")], [("_count", "many")], [("_summary", "most")],
    [("gender:missing", "maybe")], [("_include", "Observation")], [("family", "")],
    [("name.family", "x")],
])
def test_meaningless_values_are_400_even_when_lenient(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(FhirError) as info:
        parse_search("Patient", pairs)
    assert info.value.status == 400


def test_unsupported_things_are_dropped_with_a_warning_or_refused() -> None:
    pairs = [("shoe-size", "9"), ("birthdate:exact", "2000")]
    lenient = parse_search("Location", [("_query", "nearby")])
    assert lenient.criteria == [] and lenient.warnings
    lenient = parse_search("Patient", pairs[:2])
    assert lenient.criteria == [] and len(lenient.warnings) == 2
    assert lenient.used == []
    with pytest.raises(FhirError):
        parse_search("Patient", pairs[:1], strict=True)


@pytest.mark.parametrize(("query", "typed"), [
    ([("name", "smi")], True),
    ([("gender", "female"), ("birthdate", "lt1945")], True),
    ([("_id", "x"), ("name", "smi")], True),
    ([("subject:Patient.name", "mar")], True),
    ([("_id", "x")], False),
    ([("_lastUpdated", "gt2020")], False),
    ([("name:missing", "true")], False),
    ([("gender:not", "male")], False),
    ([("_has:Condition:patient:code", "1")], False),
    ([("_content", "fever")], False),
    ([("_filter", "name eq smi")], False),
])
def test_which_criteria_hold_a_row_to_its_type(query: list[tuple[str, str]],
                                              typed: bool) -> None:
    from careplane.records.search_sql import typed_by

    rtype = "Observation" if query[0][0].startswith("subject") else "Patient"
    assert typed_by(parse_search(rtype, query).criteria) is typed
