from datetime import UTC, datetime
from typing import Any

import pytest

from careplane.records.errors import FhirError
from careplane.records.indexer import index_resource, indexed_params, stored_under


def rows(resource: dict[str, Any], kind: str, param: str) -> list[dict[str, Any]]:
    return [r for r in index_resource(resource).rows.get(kind, []) if r["param"] == param]


PATIENT = {
    "resourceType": "Patient", "id": "p1",
    "name": [{"family": "Ødegård", "given": ["Zoë", "Ann"], "prefix": ["Dr"]}],
    "identifier": [{"system": "urn:mrn", "value": "123", "type": {"text": "MRN"}}],
    "telecom": [{"system": "email", "value": "z@example.org"}],
    "birthDate": "1980-05",
    "gender": "female",
    "active": True,
    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
    "generalPractitioner": [{"reference": "Practitioner/d1"}],
    "meta": {"tag": [{"system": "urn:tags", "code": "vip"}]},
}


def test_human_names_index_every_part_folded_and_exact() -> None:
    values = {(r["value"], r["exact"]) for r in rows(PATIENT, "string", "name")}
    assert {("odegard", "Ødegård"), ("zoe", "Zoë"), ("ann", "Ann"), ("dr", "Dr")} <= values
    assert {r["value"] for r in rows(PATIENT, "string", "family")} == {"odegard"}


def test_tokens_carry_system_code_and_text() -> None:
    ident = rows(PATIENT, "token", "identifier")
    assert ident == [{"resource_type": "Patient", "param": "identifier", "system": "urn:mrn",
                      "code": "123", "text": "mrn"}]
    assert [r["code"] for r in rows(PATIENT, "token", "email")] == ["z@example.org"]
    assert [r["code"] for r in rows(PATIENT, "token", "active")] == ["true"]
    assert [(r["system"], r["code"]) for r in rows(PATIENT, "token", "_tag")] == \
        [("urn:tags", "vip")]


def test_a_concept_text_gets_a_row_of_its_own_only_when_no_display_says_it() -> None:
    def code_rows(concept: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
        obs = {"resourceType": "Observation", "status": "final", "code": concept}
        return [(r["system"], r["code"], r["text"]) for r in rows(obs, "token", "code")]

    loinc = {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
    assert code_rows({"coding": [loinc], "text": "heart RATE"}) == \
        [("http://loinc.org", "8867-4", "heart rate")]
    assert code_rows({"coding": [loinc], "text": "Pulse"}) == \
        [("http://loinc.org", "8867-4", "heart rate"), (None, None, "pulse")]
    assert code_rows({"text": "Pulse"}) == [(None, None, "pulse")]


def test_dates_become_ranges() -> None:
    (birth,) = rows(PATIENT, "date", "birthdate")
    assert birth["low"] == datetime(1980, 5, 1, tzinfo=UTC)
    assert birth["high"] == datetime(1980, 6, 1, tzinfo=UTC)
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "period": {"start": "2024-01-01T10:00:00Z"}}
    (period,) = rows(encounter, "date", "date")
    assert period["low"] == datetime(2024, 1, 1, 10, tzinfo=UTC)
    assert period["high"].year == 9999  # open-ended


def test_references_and_compartments() -> None:
    indexed = index_resource(PATIENT)
    refs = [(r["target_type"], r["target_id"]) for r in indexed.rows["reference"]
            if r["param"] == "general-practitioner"]
    assert refs == [("Practitioner", "d1")]
    assert indexed.patient_id == "p1"
    assert ("Practitioner", "d1") in indexed.compartments
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p9"},
           "performer": [{"reference": "Patient/p8"}]}
    indexed = index_resource(obs)
    assert indexed.patient_id == "p9"
    assert {t for c, t in indexed.compartments if c == "Patient"} == {"p8", "p9"}


def test_quantities_are_normalised_when_ucum() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
           "valueQuantity": {"value": 100, "system": "http://unitsofmeasure.org",
                             "code": "mg/dL", "unit": "mg/dL"}}
    (q,) = rows(obs, "quantity", "value-quantity")
    assert (q["low"], q["code"]) == (100, "mg/dL")
    assert q["canonical_code"] == "g.m-3" and q["canonical_low"] == pytest.approx(1000)


def test_ranges_and_numbers() -> None:
    risk = {"resourceType": "RiskAssessment", "status": "final",
            "subject": {"reference": "Patient/p"},
            "prediction": [{"probabilityDecimal": 0.2}, {"probabilityRange": {
                "low": {"value": 0.1}, "high": {"value": 0.3}}}]}
    got = sorted((r["low"], r["high"]) for r in rows(risk, "number", "probability"))
    assert got == [(0.1, 0.3), (0.2, 0.2)]


def test_impossible_date_in_an_unmodelled_type_is_refused_with_its_path() -> None:
    # R4B has no model for EffectEvidenceSynthesis, so the indexer is the last line.
    bad = {"resourceType": "EffectEvidenceSynthesis", "status": "draft", "date": "2020-02-30"}
    with pytest.raises(FhirError) as info:
        index_resource(bad)
    assert info.value.status == 422
    assert info.value.issues[0].expression == ("EffectEvidenceSynthesis.date",)


def test_free_text_in_a_date_choice_is_skipped() -> None:
    imm = {"resourceType": "Immunization", "status": "completed",
           "vaccineCode": {"text": "flu"}, "patient": {"reference": "Patient/p"},
           "occurrenceString": "last spring"}
    assert rows(imm, "date", "date") == []


def test_every_spec_parameter_compiles() -> None:
    from careplane.records.spec import resource_types

    total = sum(len(indexed_params(t)) for t in resource_types())
    assert total > 2000


def test_a_union_parameter_keeps_no_rows_of_its_own() -> None:
    blood_pressure = {
        "resourceType": "Observation", "id": "bp", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 150, "system": "http://unitsofmeasure.org",
                                         "code": "mm[Hg]"}}]}
    found = index_resource(blood_pressure).rows
    assert {r["param"] for kind in found.values() for r in kind} >= {
        "code", "component-code", "component-value-quantity", "component-code-value-quantity"}
    assert not any(r["param"].startswith("combo-") for kind in found.values() for r in kind)
    assert stored_under("Observation", "combo-code") == (("code", "component-code"), None)
    assert stored_under("Observation", "code") == (("code",), None)
    assert stored_under("Observation", "code:of-type") == (("code:of-type",), None)


def test_a_parameter_narrowed_to_one_target_type_keeps_only_its_identifier_rows() -> None:
    encounter = {
        "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1",
                    "identifier": {"system": "urn:mrn", "value": "123"}},
        "participant": [{"individual": {"reference": "Practitioner/d1"}},
                        {"individual": {"reference": "RelatedPerson/r1"}}]}
    indexed = index_resource(encounter)
    refs = {(r["param"], r["target_type"], r["target_id"]) for r in indexed.rows["reference"]}
    assert refs == {("subject", "Patient", "p1"), ("participant", "Practitioner", "d1"),
                    ("participant", "RelatedPerson", "r1")}
    idents = {(r["param"], r["code"]) for r in indexed.rows["token"]
              if r["param"].endswith(":identifier")}
    assert idents == {("subject:identifier", "123"), ("patient:identifier", "123")}
    # compartments still come from the narrowed parameters' values, through their parts'
    assert indexed.patient_id == "p1"
    assert {("Patient", "p1"), ("Practitioner", "d1"), ("RelatedPerson", "r1")} \
        <= set(indexed.compartments)
    assert stored_under("Encounter", "patient") == (("subject",), "Patient")
    assert stored_under("Encounter", "practitioner") == (("participant",), "Practitioner")
