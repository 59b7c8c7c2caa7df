from careplane.records.extract import compile_expression, reference_type

OBS = {
    "resourceType": "Observation",
    "subject": {"reference": "Patient/p1"},
    "performer": [{"reference": "Practitioner/d1"}, {"reference": "Patient/p1"}],
    "valueQuantity": {"value": 5.4, "code": "mmol/L"},
    "effectivePeriod": {"start": "2024-01-01"},
    "component": [{"valueCodeableConcept": {"text": "x"}}, {"valueQuantity": {"value": 1}}],
}


def test_plain_paths_expand_choice_elements_with_their_types() -> None:
    nodes = compile_expression("Observation.effective", "Observation")(OBS)
    assert [(n.type, n.value) for n in nodes] == [("Period", {"start": "2024-01-01"})]


def test_as_restricts_a_choice() -> None:
    quantity = compile_expression("(Observation.value as Quantity)", "Observation")(OBS)
    assert [n.type for n in quantity] == ["Quantity"]
    concept = compile_expression("(Observation.value as CodeableConcept)", "Observation")(OBS)
    assert concept == []
    parts = compile_expression("(Observation.component.value as Quantity)", "Observation")(OBS)
    assert [n.value for n in parts] == [{"value": 1}]


def test_where_resolve_is_reads_the_reference_type() -> None:
    extract = compile_expression("Observation.performer.where(resolve() is Patient)",
                                 "Observation")
    assert [n.value["reference"] for n in extract(OBS)] == ["Patient/p1"]
    assert reference_type({"reference": "http://x/fhir/Patient/1/_history/2"}) == "Patient"


def test_where_field_equals_filters() -> None:
    patient = {"resourceType": "Patient",
               "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]}
    extract = compile_expression("Patient.telecom.where(system='email')", "Patient")
    nodes = extract(patient)
    assert [(n.type, n.value["value"]) for n in nodes] == [("ContactPoint", "a@b")]


def test_backbone_and_inherited_elements() -> None:
    patient = {"resourceType": "Patient", "id": "x", "meta": {"tag": [{"code": "t"}]},
               "contact": [{"name": {"family": "Doe"}}]}
    assert [n.type for n in compile_expression("Patient.contact.name", "Patient")(patient)] \
        == ["HumanName"]
    tags = compile_expression("Resource.meta.tag", "Patient")(patient)
    assert [(n.type, n.value) for n in tags] == [("Coding", {"code": "t"})]


def test_unsupported_expressions_fall_back_to_fhirpath() -> None:
    extract = compile_expression("Patient.deceased.exists() and Patient.deceased != false",
                                 "Patient")
    assert [n.value for n in extract({"resourceType": "Patient", "deceasedBoolean": True})] \
        == [True]
    assert [n.value for n in extract({"resourceType": "Patient"})] == [False]


def test_first_item_index() -> None:
    bundle = {"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Composition", "id": "c1"}},
        {"resource": {"resourceType": "Patient", "id": "p"}}]}
    nodes = compile_expression("Bundle.entry[0].resource", "Bundle")(bundle)
    assert [n.value["id"] for n in nodes] == ["c1"]


def test_relative_member_paths_are_rooted_at_the_resource() -> None:
    plan = {"resourceType": "InsurancePlan", "name": "Gold", "alias": ["G"]}
    nodes = compile_expression("name | alias", "InsurancePlan")(plan)
    assert sorted(n.value for n in nodes) == ["G", "Gold"]
