"""JSON Patch (RFC 6902) for the FHIR ``patch`` interaction.

A patch is applied to a copy of the current version, and the result is validated and stored
exactly like an update, so a patch can never leave a resource that an update would refuse.
Patching ``id`` or ``resourceType`` is refused: a patch changes a resource, not which one.
"""

from __future__ import annotations

import copy
from typing import Any

from careplane.records.errors import FhirError

__all__ = ["apply_json_patch"]

_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def _fail(index: int, message: str) -> FhirError:
    return FhirError.of(422, "processing", f"patch operation {index}: {message}")


def _pointer(index: int, text: Any) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise _fail(index, f"{text!r} is not a JSON pointer")
    if text == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/")]


def _parent(doc: Any, parts: list[str], index: int) -> Any:
    node = doc
    for part in parts[:-1]:
        node = _child(node, part, index)
    return node


def _child(node: Any, part: str, index: int) -> Any:
    if isinstance(node, dict):
        if part not in node:
            raise _fail(index, f"no member {part!r}")
        return node[part]
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise _fail(index, f"no array item {part!r}")
        return node[int(part)]
    raise _fail(index, f"cannot descend into {part!r}")


def _get(doc: Any, parts: list[str], index: int) -> Any:
    node = doc
    for part in parts:
        node = _child(node, part, index)
    return node


def _remove(doc: Any, parts: list[str], index: int) -> Any:
    if not parts:
        raise _fail(index, "cannot remove the whole resource")
    parent = _parent(doc, parts, index)
    key = parts[-1]
    if isinstance(parent, dict):
        if key not in parent:
            raise _fail(index, f"no member {key!r} to remove")
        return parent.pop(key)
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent.pop(int(key))
    raise _fail(index, f"nothing at {key!r} to remove")


def _add(doc: Any, parts: list[str], value: Any, index: int, *, replace: bool) -> None:
    if not parts:
        raise _fail(index, "cannot replace the whole resource")
    parent = _parent(doc, parts, index)
    key = parts[-1]
    if isinstance(parent, dict):
        if replace and key not in parent:
            raise _fail(index, f"no member {key!r} to replace")
        parent[key] = value
    elif isinstance(parent, list):
        if key == "-" and not replace:
            parent.append(value)
        elif key.isdigit() and int(key) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(key)] = value
            else:
                parent.insert(int(key), value)
        else:
            raise _fail(index, f"array index {key!r} is out of range")
    else:
        raise _fail(index, f"cannot add into {key!r}")


def apply_json_patch(resource: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The patched copy of ``resource``; 422 if any operation cannot apply (or a test fails)."""
    if not isinstance(patch, list):
        raise FhirError.of(400, "structure", "a JSON Patch document is an array of operations")
    doc = copy.deepcopy(resource)
    for i, op in enumerate(patch):
        if not isinstance(op, dict) or op.get("op") not in _OPS:
            raise _fail(i, f"op must be one of {', '.join(sorted(_OPS))}")
        parts = _pointer(i, op.get("path"))
        if parts[:1] in (["id"], ["resourceType"]):
            raise _fail(i, f"{parts[0]} cannot be patched")
        kind = op["op"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _fail(i, f"{kind} needs a value")
        if kind == "add":
            _add(doc, parts, copy.deepcopy(op["value"]), i, replace=False)
        elif kind == "replace":
            _add(doc, parts, copy.deepcopy(op["value"]), i, replace=True)
        elif kind == "remove":
            _remove(doc, parts, i)
        elif kind == "test":
            if _get(doc, parts, i) != op["value"]:
                raise _fail(i, f"test failed at {op.get('path')}")
        else:
            source = _pointer(i, op.get("from"))
            value = _get(doc, source, i)
            if kind == "move":
                if parts[:len(source)] == source and len(parts) > len(source):
                    raise _fail(i, "cannot move a value into itself")
                _remove(doc, source, i)
            _add(doc, parts, copy.deepcopy(value), i, replace=False)
    return doc
