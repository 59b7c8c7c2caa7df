import pytest

from careplane.records.errors import FhirError
from careplane.records.validation import model_for, validate_resource


def test_valid_resource_passes() -> None:
    assert validate_resource({"resourceType": "Patient", "birthDate": "2000-01-01"}) == "Patient"


@pytest.mark.parametrize(("body", "status", "expression"), [
    ([1, 2], 400, None),
    ({"name": "x"}, 400, "resourceType"),
    ({"resourceType": "Spaceship"}, 400, "resourceType"),
    ({"resourceType": "Patient", "birthDate": "2020-02-30"}, 422, "Patient.birthDate"),
    ({"resourceType": "Patient", "name": [{"family": 3}]}, 422, "Patient.name[0].family"),
    ({"resourceType": "Patient", "colour": "blue"}, 422, "Patient.colour"),
    ({"resourceType": "Patient", "id": "no spaces"}, 400, "Patient.id"),
])
def test_invalid_resources_name_the_path(body: object, status: int,
                                         expression: str | None) -> None:
    with pytest.raises(FhirError) as info:
        validate_resource(body)
    assert info.value.status == status
    if expression:
        assert expression in info.value.issues[0].expression


def test_expected_type_is_enforced() -> None:
    with pytest.raises(FhirError) as info:
        validate_resource({"resourceType": "Patient"}, "Observation")
    assert info.value.status == 400


def test_r4_types_missing_from_r4b_get_structural_checks_only() -> None:
    assert model_for("EffectEvidenceSynthesis") is None
    assert validate_resource({"resourceType": "EffectEvidenceSynthesis",
                              "status": "draft"}) == "EffectEvidenceSynthesis"
