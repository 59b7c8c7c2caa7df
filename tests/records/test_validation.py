import copy
import gzip
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from careplane.records.errors import FhirError
from careplane.records.validation import (
    _REBUILT_IN_R4B,
    _surely_valid,
    model_for,
    validate_resource,
)


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


# -- the compiled structure check never accepts what the models refuse -----------------------

_EXAMPLES = Path(__file__).parent / "data" / "r4_examples.ndjson.gz"
_ODD_VALUES: list[Any] = [None, "", " padded", "2021-02-30", "2021-13-01", "abc", 1, -1, 1.5,
                          True, [], {}, [None], ["a"], {"a": 1}, "urn:uuid:zz", 2**40, "1e5"]


def _examples() -> list[dict[str, Any]]:
    with gzip.open(_EXAMPLES) as f:
        found = [orjson.loads(line) for line in f]
    return [r for r in found if model_for(r["resourceType"]) is not None
            and r["resourceType"] not in _REBUILT_IN_R4B]


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def _mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The resource with one thing broken or changed somewhere: a key dropped, a value
    replaced by an odd one, a key added, or an element turned into a list (or back)."""
    out = copy.deepcopy(resource)
    target = rng.choice(list(_objects(out)))
    keys = [k for k in target if k != "resourceType"]
    move = rng.randrange(4)
    if move == 0 and keys:
        del target[rng.choice(keys)]
    elif move == 1 and keys:
        target[rng.choice(keys)] = copy.deepcopy(rng.choice(_ODD_VALUES))
    elif move == 2:
        key = rng.choice(["colour", "valueString", "valueInteger", "_value", "id", "url",
                          "extension", "system", "code", "value"])
        target[key] = copy.deepcopy(rng.choice([*_ODD_VALUES, "ok"]))
    elif keys:
        key = rng.choice(keys)
        value = target[key]
        target[key] = [value] if not isinstance(value, list) else (value[0] if value else value)
    return out


def test_structure_check_accepts_only_what_the_models_accept() -> None:
    examples = _examples()
    fast = [r for r in examples if _surely_valid(model_for(r["resourceType"]), r)]
    assert len(fast) > 0.9 * len(examples)  # the fast path is the common one
    rng = random.Random(20261206)
    accepted = 0
    for _ in range(1500):
        body = _mutate(rng.choice(examples), rng)
        model = model_for(body["resourceType"])
        assert model is not None
        if _surely_valid(model, body):
            accepted += 1
            model.model_validate(body)  # raises if the check let an invalid one through
    assert accepted > 100


@pytest.mark.parametrize("body", [
    {"resourceType": "Observation", "status": "final"},  # code is required
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
     "valueString": "a", "valueInteger": 1},  # two choices of value[x]
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
     "category": []},  # an empty array
    {"resourceType": "Patient", "name": [None]},
    {"resourceType": "Patient", "contained": [{"resourceType": "Patient", "gender": 1}]},
])
def test_structure_check_hands_doubtful_resources_to_the_models(body: dict[str, Any]) -> None:
    model = model_for(body["resourceType"])
    assert model is not None
    assert not _surely_valid(model, body)
