"""The FHIR R4 search definitions extracted from the spec, as the server will read them.

These read the committed data file only (no network, no npm): they pin down what the search
code can count on, so a careless re-extraction or a format change fails here first.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from careplane.records import spec
from careplane.records.spec.expressions import expression_for_type, root_name, split_union

REPO = Path(__file__).resolve().parents[2]


def _data() -> dict[str, Any]:
    raw = resources.files("careplane.records.spec").joinpath("search_parameters.json")
    return json.loads(raw.read_bytes())


# --- the data file ----------------------------------------------------------------------


def test_data_file_names_its_source_package() -> None:
    assert spec.source() == spec.SpecSource("hl7.fhir.r4.examples", "4.0.1", "4.0.1")


def test_every_published_search_parameter_is_extracted() -> None:
    records = _data()["search_parameters"]
    assert len(records) >= 1390  # 1,400 SearchParameter resources in the package
    core = [r for r in records if r.get("origin", "core") == "core"]
    assert len(core) >= 1370  # 1,375 in the spec's own search-parameters bundle
    assert len({r["id"] for r in records}) == len(records)


def test_data_file_keeps_no_prose() -> None:
    keys = {k for r in _data()["search_parameters"] for k in r}
    assert keys <= {
        "id", "url", "code", "type", "base", "expression", "expressions", "xpath_usage",
        "target", "comparator", "modifier", "chain", "multiple_or", "multiple_and",
        "component", "origin",
    }


def test_resource_types_are_the_concrete_r4_types() -> None:
    types = spec.resource_types()
    assert isinstance(types, frozenset)
    assert len(types) == 146
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= types
    assert not types & {"Resource", "DomainResource"}


# --- parameters per resource type -------------------------------------------------------


def test_patient_parameters_have_the_spec_types() -> None:
    params = spec.search_parameters("Patient")
    assert params["name"].type == "string"
    assert params["birthdate"].type == "date"
    assert params["identifier"].type == "token"
    assert params["gender"].type == "token"
    assert params["birthdate"].expression == "Patient.birthDate"
    assert "eq" in params["birthdate"].comparators
    assert params["phonetic"].xpath_usage == "phonetic"


def test_observation_parameters() -> None:
    params = spec.search_parameters("Observation")
    assert params["code"].type == "token"
    assert params["code"].expression == "Observation.code"
    vq = params["value-quantity"]
    assert vq.type == "quantity"
    assert vq.expression == "(Observation.value as Quantity) | (Observation.value as SampledData)"
    assert {"gt", "le", "ap"} <= set(vq.comparators)
    subject = params["subject"]
    assert subject.type == "reference"
    assert {"Patient", "Group", "Device", "Location"} == set(subject.target)
    patient = params["patient"]
    assert patient.type == "reference"
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.url == "http://hl7.org/fhir/SearchParameter/clinical-patient"
    assert params["date"].type == "date"
    assert params["date"].expression == "Observation.effective"


def test_a_union_of_other_parameters_names_them_as_its_parts() -> None:
    params = spec.search_parameters("Observation")
    assert params["combo-code"].parts == ("code", "component-code")
    assert params["combo-value-quantity"].parts == ("component-value-quantity",
                                                    "value-quantity")
    assert params["combo-code-value-quantity"].parts == ("code-value-quantity",
                                                         "component-code-value-quantity")
    assert params["code"].parts == params["component-code"].parts == ()
    # a union that is not exactly other parameters' keeps rows of its own
    assert spec.search_parameters("Patient")["name"].parts == ()
    unions = {(t, c) for t in spec.resource_types()
              for c, p in spec.search_parameters(t).items() if p.parts and not p.parts_target}
    assert {c for _, c in unions} == {"combo-code", "combo-code-value-concept",
                                      "combo-code-value-quantity", "combo-data-absent-reason",
                                      "combo-value-concept", "combo-value-quantity"}
    assert {t for t, _ in unions} == {"Observation"}


def test_a_parameter_of_references_to_one_type_names_the_parameters_it_narrows() -> None:
    obs = spec.search_parameters("Observation")
    assert (obs["patient"].parts, obs["patient"].parts_target) == (("subject",), "Patient")
    assert (obs["subject"].parts, obs["subject"].parts_target) == ((), None)
    # every member narrowed to the same type, over two other parameters
    audit = spec.search_parameters("AuditEvent")["patient"]
    assert (audit.parts, audit.parts_target) == (("agent", "entity"), "Patient")
    encounter = spec.search_parameters("Encounter")["practitioner"]
    assert (encounter.parts, encounter.parts_target) == (("participant",), "Practitioner")
    # a plain element of its own (AllergyIntolerance.patient) is not narrowed
    assert spec.search_parameters("AllergyIntolerance")["patient"].parts == ()
    narrowed = {(t, c) for t in spec.resource_types()
                for c, p in spec.search_parameters(t).items() if p.parts_target}
    assert len(narrowed) == 48
    assert {c for _, c in narrowed} == {"patient", "practitioner", "location", "relatedperson"}


def test_composite_components_are_resolved() -> None:
    cvq = spec.search_parameters("Observation")["code-value-quantity"]
    assert cvq.type == "composite"
    assert cvq.expression == "Observation"
    assert cvq.multiple_or is False
    assert [(c.code, c.type, c.expression) for c in cvq.components] == [
        ("code", "token", "code"),
        ("value-quantity", "quantity", "value.as(Quantity)"),
    ]
    assert cvq.components[0].definition == "http://hl7.org/fhir/SearchParameter/clinical-code"
    composites = [
        p for t in spec.resource_types() for p in spec.search_parameters(t).values()
        if p.type == "composite"
    ]
    assert composites
    assert all(len(p.components) >= 2 for p in composites)


def test_any_reference_target_is_every_type_but_parameters() -> None:
    target = set(spec.search_parameters("Provenance")["target"].target)
    assert target == spec.resource_types() - {"Parameters"}


@pytest.mark.parametrize("rtype", sorted(spec.resource_types()))
def test_resource_level_parameters_apply_to_every_type(rtype: str) -> None:
    params = spec.search_parameters(rtype)
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"):
        assert params[code].resource_type == rtype
        assert params[code].base == ("Resource",)
    assert params["_id"].expression == "Resource.id"
    # _text is defined on DomainResource: Bundle, Binary and Parameters have no narrative.
    assert ("_text" in params) == (rtype not in {"Bundle", "Binary", "Parameters"})


def test_resource_gives_the_parameters_for_a_search_across_types() -> None:
    assert set(spec.search_parameters("Resource")) == {
        "_content", "_id", "_lastUpdated", "_profile", "_query", "_security", "_source", "_tag"
    }


def test_unknown_resource_type_is_an_error() -> None:
    with pytest.raises(KeyError):
        spec.search_parameters("Patients")
    with pytest.raises(KeyError):
        spec.reference_paths("patient")


def test_example_search_parameters_are_never_served() -> None:
    # The package's example SearchParameter redefines Condition.subject with target Organization.
    subject = spec.search_parameters("Condition", include_supplementary=True)["subject"]
    assert subject.origin == "core"
    assert "Patient" in subject.target
    assert "part-agree" not in spec.search_parameters("Patient", include_supplementary=True)


def test_supplementary_parameters_only_on_request() -> None:
    assert "mothersMaidenName" not in spec.search_parameters("Patient")
    extra = spec.search_parameters("Patient", include_supplementary=True)
    assert extra["mothersMaidenName"].origin == "supplementary"
    assert extra["name"].origin == "core"


def test_answers_are_immutable_and_copies() -> None:
    params = spec.search_parameters("Patient")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params["name"].code = "nom"  # type: ignore[misc]
    params.clear()
    assert "name" in spec.search_parameters("Patient")
    assert spec.search_parameters("Patient")["name"] is spec.search_parameters("Patient")["name"]


# --- compartments -----------------------------------------------------------------------


def test_patient_compartment_for_observation() -> None:
    assert {"subject", "performer"} <= set(spec.compartment_params("Patient", "Observation"))
    assert spec.compartment_params("Patient", "Patient") == ["link"]
    assert spec.compartment_params("Patient", "Practitioner") == []
    assert spec.compartment_params("Encounter", "Observation") == ["encounter"]


def test_all_five_compartments_are_present() -> None:
    assert set(_data()["compartments"]) == spec.COMPARTMENTS
    for name in spec.COMPARTMENTS:
        assert any(spec.compartment_params(name, t) for t in spec.resource_types())
    with pytest.raises(KeyError):
        spec.compartment_params("Organization", "Patient")


def test_compartment_params_are_search_parameters_of_that_type() -> None:
    for name in spec.COMPARTMENTS:
        for rtype in spec.resource_types():
            params = spec.search_parameters(rtype)
            for code in spec.compartment_params(name, rtype):
                assert code == "{def}" or params[code].type == "reference", (name, rtype, code)


# --- the per-type split of shared expressions -------------------------------------------


def test_clinical_code_split_per_type() -> None:
    assert spec.search_parameters("Observation")["code"].expression == "Observation.code"
    assert spec.search_parameters("AllergyIntolerance")["code"].expression == (
        "AllergyIntolerance.code | AllergyIntolerance.reaction.substance"
    )
    assert spec.search_parameters("DeviceRequest")["code"].expression == (
        "(DeviceRequest.code as CodeableConcept)"
    )
    shared = spec.search_parameters("Observation")["code"].spec_expression
    assert shared is not None and "Condition.code" in shared


def test_no_split_expression_reaches_into_another_type() -> None:
    types = spec.resource_types()
    checked = 0
    for rtype in types:
        for param in spec.search_parameters(rtype, include_supplementary=True).values():
            if param.expression is None:
                continue
            for member in split_union(param.expression):
                root = root_name(member)
                assert root in {rtype, "Resource", "DomainResource"} or root not in types, (
                    rtype, param.code, member
                )
                checked += 1
    assert checked > 2500


def test_only_known_parameters_lack_an_expression() -> None:
    missing = {
        (t, p.code) for t in ("Patient", "Bundle") for p in spec.search_parameters(t).values()
        if p.expression is None
    }
    assert missing == {
        ("Patient", "_content"), ("Patient", "_query"), ("Patient", "_text"),
        ("Bundle", "_content"), ("Bundle", "_query"),
    }


def test_split_union_only_on_top_level_bars() -> None:
    assert split_union("A.b | (C.d as E) | F.g.where(h = 'x|y') | I.j.where(k | l)") == [
        "A.b", "(C.d as E)", "F.g.where(h = 'x|y')", "I.j.where(k | l)"
    ]
    assert split_union("Patient.name") == ["Patient.name"]
    assert split_union(r"A.where(b = 'it\'s | x') | C") == [r"A.where(b = 'it\'s | x')", "C"]
    for bad in ("A.where(b", "A)", "A | ", "'open"):
        with pytest.raises(ValueError):
            split_union(bad)


def test_expression_for_type() -> None:
    types = {"Observation", "Condition", "Resource"}
    shared = "Observation.code | (Condition.code as CodeableConcept) | Resource.id | name"
    assert expression_for_type(shared, "Observation", types) == (
        "Observation.code | Resource.id | name"
    )
    assert expression_for_type("Condition.code", "Observation", types) is None
    assert root_name("((Observation.value as Quantity))") == "Observation"
    assert root_name("%resource.id") is None


# --- reference paths --------------------------------------------------------------------


def test_reference_paths_from_structure_definitions() -> None:
    obs = spec.reference_paths("Observation")
    assert set(obs["subject"]) == {"Patient", "Group", "Device", "Location"}
    assert "Resource" in obs["focus"]
    med = spec.reference_paths("MedicationRequest")
    assert med["medicationReference"] == ("Medication",)
    assert med["dispenseRequest.performer"] == ("Organization",)
    assert spec.reference_paths("Binary")["securityContext"] == ("Resource",)


# --- the extraction script, on a tiny package made here ---------------------------------


def _tool() -> ModuleType:
    path = REPO / "tools" / "fhir_extract.py"
    mod_spec = importlib.util.spec_from_file_location("fhir_extract_under_test", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    mod_spec.loader.exec_module(module)
    return module


def _sd(name: str, abstract: bool, base: str | None, elements: list[dict[str, Any]]) -> dict:
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition", "url": f"http://hl7.org/fhir/StructureDefinition/"
        f"{name}", "type": name, "kind": "resource", "abstract": abstract,
        "snapshot": {"element": [{"path": name}, *elements]},
    }
    if base:
        sd["baseDefinition"] = f"http://hl7.org/fhir/StructureDefinition/{base}"
        sd["derivation"] = "specialization"
    return sd


def _sp(pid: str, code: str, type_: str, base: list[str], expression: str,
        **extra: Any) -> dict[str, Any]:
    return {"resourceType": "SearchParameter", "id": pid, "description": "prose",
            "url": f"http://hl7.org/fhir/SearchParameter/{pid}", "code": code, "type": type_,
            "base": base, "expression": expression, "xpathUsage": "normal", **extra}


def test_extraction_script_on_a_miniature_package(tmp_path: Path) -> None:
    tool = _tool()
    pkg = tmp_path / "package"
    pkg.mkdir()
    params = [
        _sp("Resource-id", "_id", "token", ["Resource"], "Resource.id"),
        _sp("shared-code", "code", "token", ["Alpha", "Beta"],
            "Alpha.code | (Beta.code as CodeableConcept) | Beta.other.where(x | y)"),
        _sp("Alpha-beta", "beta", "reference", ["Alpha"], "Alpha.beta", target=["Beta"]),
        _sp("Alpha-any", "any", "reference", ["Alpha"], "Alpha.any", target=["Alpha", "Beta"]),
        _sp("Alpha-pair", "pair", "composite", ["Alpha"], "Alpha", multipleOr=False,
            component=[{"definition": "http://hl7.org/fhir/SearchParameter/shared-code",
                        "expression": "code"},
                       {"definition": "http://hl7.org/fhir/SearchParameter/Alpha-beta",
                        "expression": "beta"}]),
        _sp("example", "_id", "token", ["Resource"], "id"),
    ]
    files = {f"SearchParameter-{p['id']}.json": p for p in params}
    files["package.json"] = {"name": "hl7.fhir.r4.examples", "version": "4.0.1",
                             "fhirVersions": ["4.0.1"]}
    files["Bundle-searchParams.json"] = {
        "resourceType": "Bundle", "entry": [{"resource": p} for p in params[:-1]]}
    files["Bundle-types.json"] = {"resourceType": "Bundle", "entry": [{"resource": {
        "resourceType": "StructureDefinition", "type": "CodeableConcept"}}]}
    files["Bundle-resources.json"] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in [
        _sd("Resource", True, None, []),
        _sd("DomainResource", True, "Resource", []),
        _sd("Alpha", False, "DomainResource", [
            {"path": "Alpha.beta", "type": [{"code": "Reference", "targetProfile": [
                "http://hl7.org/fhir/StructureDefinition/Beta"]}]},
            {"path": "Alpha.thing[x]", "type": [{"code": "string"}, {"code": "Reference"}]},
        ]),
        _sd("Beta", False, "Resource", []),
        {"resourceType": "CompartmentDefinition", "code": "Beta", "resource": [
            {"code": "Alpha", "param": ["beta"]}, {"code": "Beta", "param": ["{def}"]}]},
    ]]}
    for name, content in files.items():
        (pkg / name).write_text(json.dumps(content))

    data, notes = tool.extract_spec(tool.Package(tmp_path))
    assert data["source"]["package"] == "hl7.fhir.r4.examples"
    assert data["resource_types"] == {"Alpha": "DomainResource", "Beta": "Resource"}
    by_id = {r["id"]: r for r in data["search_parameters"]}
    assert by_id["shared-code"]["expressions"] == {
        "Alpha": "Alpha.code", "Beta": "(Beta.code as CodeableConcept) | Beta.other.where(x | y)"
    }
    assert "expressions" not in by_id["Alpha-beta"]
    assert by_id["Alpha-any"]["target"] == "*"
    assert by_id["example"]["origin"] == "example"
    assert [c["code"] for c in by_id["Alpha-pair"]["component"]] == ["code", "beta"]
    assert data["compartments"] == {"Beta": {"Alpha": ["beta"], "Beta": ["{def}"]}}
    assert data["reference_paths"]["Alpha"] == {"beta": ["Beta"], "thingReference": ["Resource"]}
    assert any("not rooted at a resource type" in n for n in notes)
    # The written form is plain JSON that reads back to the same content, without prose.
    text = tool.dump_spec(data)
    assert json.loads(text) == data
    assert "prose" not in text
