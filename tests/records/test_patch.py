import pytest

from careplane.records.errors import FhirError
from careplane.records.patch import apply_json_patch

DOC = {"resourceType": "Patient", "id": "p", "name": [{"given": ["A", "B"]}], "active": True}


def test_operations() -> None:
    out = apply_json_patch(DOC, [
        {"op": "add", "path": "/name/0/given/1", "value": "X"},
        {"op": "add", "path": "/name/0/given/-", "value": "Z"},
        {"op": "remove", "path": "/active"},
        {"op": "replace", "path": "/name/0/given/0", "value": "Q"},
        {"op": "copy", "from": "/name/0", "path": "/name/-"},
        {"op": "move", "from": "/name/1/given", "path": "/alias"},
        {"op": "test", "path": "/alias/0", "value": "Q"},
    ])
    assert out["name"][0]["given"] == ["Q", "X", "B", "Z"]
    assert out["alias"] == ["Q", "X", "B", "Z"] and "active" not in out
    assert DOC["name"][0]["given"] == ["A", "B"]  # the input is untouched


@pytest.mark.parametrize("ops", [
    {"op": "add"},
    [{"op": "jump", "path": "/a"}],
    [{"op": "replace", "path": "/id", "value": "other"}],
    [{"op": "remove", "path": "/nothing"}],
    [{"op": "test", "path": "/active", "value": False}],
    [{"op": "add", "path": "/name/9", "value": {}}],
    [{"op": "add", "path": "name", "value": 1}],
])
def test_refusals(ops: object) -> None:
    with pytest.raises(FhirError):
        apply_json_patch(DOC, ops)


def _op(kind: str, path: str, **parts: object) -> dict[str, object]:
    out: list[dict[str, object]] = [{"name": "type", "valueCode": kind},
                                    {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "value":
            out.append({"name": "value", **value})  # type: ignore[dict-item]
        elif isinstance(value, int):
            out.append({"name": name, "valueInteger": value})
        else:
            out.append({"name": name, "valueString": value})
    return {"name": "operation", "part": out}


def _params(*ops: dict[str, object]) -> dict[str, object]:
    return {"resourceType": "Parameters", "parameter": list(ops)}


PATIENT = {"resourceType": "Patient", "id": "p", "active": True,
           "name": [{"family": "Doe", "given": ["A"]}],
           "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]}


def test_fhirpath_patch_operations() -> None:
    from careplane.records.patch import apply_fhirpath_patch

    out = apply_fhirpath_patch(PATIENT, _params(
        _op("replace", "Patient.name[0].family", value={"valueString": "Smith"}),
        _op("add", "Patient", name="birthDate", value={"valueDate": "1990-01-01"}),
        _op("add", "Patient", name="identifier",
            value={"valueIdentifier": {"system": "urn:x", "value": "1"}}),
        _op("insert", "Patient.name[0].given", index=0, value={"valueString": "Z"}),
        _op("delete", "Patient.telecom.where(system='phone')"),
        _op("move", "Patient.name[0].given", source=1, destination=0),
        _op("delete", "Patient.deceasedBoolean"),  # nothing there: no error
        _op("add", "Patient", name="contact", value={"part": [
            {"name": "gender", "valueCode": "female"}]}),
    ))
    assert out["name"][0] == {"family": "Smith", "given": ["A", "Z"]}
    assert out["birthDate"] == "1990-01-01"
    assert out["identifier"] == [{"system": "urn:x", "value": "1"}]  # repeats: a list
    assert out["telecom"] == [{"system": "email", "value": "a@b"}]
    assert out["contact"] == [{"gender": "female"}]
    assert PATIENT["name"][0]["family"] == "Doe"


@pytest.mark.parametrize("ops", [
    _params(_op("replace", "Patient.telecom", value={"valueString": "x"})),  # two matches
    _params(_op("add", "Patient", name="active", value={"valueBoolean": False})),
    _params(_op("delete", "Patient.name.family.extension('x')")),
    _params(_op("frobnicate", "Patient.active")),
    _params(_op("insert", "Patient.name", index=5, value={"valueString": "x"})),
    _params(_op("replace", "Observation.status", value={"valueCode": "final"})),
    {"resourceType": "Bundle"},
])
def test_fhirpath_patch_refusals(ops: object) -> None:
    from careplane.records.patch import apply_fhirpath_patch

    with pytest.raises(FhirError):
        apply_fhirpath_patch(PATIENT, ops)
