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
