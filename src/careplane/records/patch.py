"""The FHIR ``patch`` interaction: JSON Patch (RFC 6902) and FHIRPath Patch.

A patch is applied to a copy of the current version, and the result is validated and stored
exactly like an update, so a patch can never leave a resource that an update would refuse.
Patching ``id`` or ``resourceType`` is refused: a patch changes a resource, not which one.

FHIRPath Patch paths are evaluated here with the part of FHIRPath that locates elements
(names, ``[n]``, ``where(element='value')``, ``first()``), because a patch must know where a
value lives to change it, which a general FHIRPath engine does not tell. Whether an added
element repeats comes from the R4B models, so ``add`` of a first ``identifier`` makes a list.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from careplane.records.errors import FhirError

__all__ = ["apply_fhirpath_patch", "apply_json_patch"]

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


# -- FHIRPath Patch -------------------------------------------------------------------------

_PATH_SEGMENT = re.compile(
    r"""(?P<name>[A-Za-z][A-Za-z0-9]*)(?:\[(?P<index>\d+)\])?
      | where\((?P<field>[A-Za-z][A-Za-z0-9]*)\s*=\s*'(?P<literal>[^'\\]*)'\)
      | (?P<first>first\(\))
    """,
    re.VERBOSE,
)


@dataclass
class _Located:
    """A value found by a path, with where it lives: ``owner[name]`` or ``owner[name][index]``."""

    owner: dict[str, Any] | None
    name: str | None
    index: int | None
    value: Any


def _segments(path: str, index: int) -> list[re.Match[str]]:
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(path):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(path[start:i])
            start = i + 1
    parts.append(path[start:])
    out = []
    for part in parts[1:]:
        m = _PATH_SEGMENT.fullmatch(part.strip())
        if m is None:
            raise _fail(index, f"the path {path!r} uses {part!r}, which this server does not "
                        "evaluate in a patch (names, [n], where(x='y') and first() are)")
        out.append(m)
    return out


def _evaluate(doc: dict[str, Any], path: str, index: int) -> list[_Located]:
    """Where ``path`` (rooted at the resource type) points in ``doc``."""
    root = path.split(".", 1)[0].strip()
    if root != doc.get("resourceType"):
        raise _fail(index, f"the path {path!r} does not start at {doc.get('resourceType')}")
    nodes = [_Located(None, None, None, doc)]
    for m in _segments(path, index):
        if m.group("name"):
            name = m.group("name")
            found: list[_Located] = []
            for node in nodes:
                if not isinstance(node.value, dict) or name not in node.value:
                    continue
                child = node.value[name]
                if isinstance(child, list):
                    found += [_Located(node.value, name, i, v) for i, v in enumerate(child)]
                else:
                    found.append(_Located(node.value, name, None, child))
            nodes = found
            if m.group("index") is not None:
                n = int(m.group("index"))
                nodes = nodes[n:n + 1]
        elif m.group("first"):
            nodes = nodes[:1]
        else:
            field, literal = m.group("field"), m.group("literal")
            nodes = [n for n in nodes if isinstance(n.value, dict)
                     and n.value.get(field) == literal]
    return nodes


def _one(nodes: list[_Located], index: int, what: str) -> _Located:
    if len(nodes) != 1:
        raise _fail(index, f"the path must select exactly one {what}, it selects {len(nodes)}")
    return nodes[0]


def _part_value(part: dict[str, Any], index: int) -> Any:
    """The value of a Parameters part: its value[x], or an object built from its parts."""
    for key, value in part.items():
        if key.startswith("value") and key != "value":
            return copy.deepcopy(value)
    if isinstance(part.get("resource"), dict):
        return copy.deepcopy(part["resource"])
    if isinstance(part.get("part"), list):
        return {p.get("name"): _part_value(p, index) for p in part["part"]
                if isinstance(p, dict) and isinstance(p.get("name"), str)}
    raise _fail(index, "the value part has no value[x], resource or parts")


def _is_list(resource_type: str, owner_path: list[str], name: str) -> bool:
    """Whether element ``name`` below ``owner_path`` repeats, from the R4B models."""
    from careplane.records.validation import model_for

    model: Any = model_for(resource_type)
    for step in [*owner_path, name]:
        if model is None:
            return False
        field = model.model_fields.get(step) if hasattr(model, "model_fields") else None
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == step), None)
        if field is None:
            return False
        annotation = field.annotation
        is_list = "List" in str(annotation) or "list[" in str(annotation)
        if step == name:
            return is_list
        args = getattr(annotation, "__args__", ()) or ()
        inner = [a for a in args if hasattr(a, "model_fields")]
        for a in args:
            inner += [b for b in getattr(a, "__args__", ()) or () if hasattr(b, "model_fields")]
        model = inner[0] if inner else None
    return False


def _names_to(path: str) -> list[str]:
    return [p.split("[", 1)[0] for p in path.split(".")[1:]
            if not p.startswith(("where(", "first("))]


def apply_fhirpath_patch(resource: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """The resource after a FHIRPath Patch (a Parameters resource of ``operation``s).

    Supported: add, insert, delete, replace, move, on paths made of element names, ``[n]``,
    ``where(element='value')`` and ``first()``.
    """
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise FhirError.of(400, "structure", "a FHIRPath Patch is a Parameters resource")
    doc = copy.deepcopy(resource)
    rtype = str(doc.get("resourceType"))
    for i, op in enumerate(parameters.get("parameter") or []):
        if not isinstance(op, dict) or op.get("name") != "operation":
            raise _fail(i, "each parameter must be an 'operation'")
        parts = {p.get("name"): p for p in op.get("part") or [] if isinstance(p, dict)}
        kind = (parts.get("type") or {}).get("valueCode")
        path = (parts.get("path") or {}).get("valueString")
        if kind not in ("add", "insert", "delete", "replace", "move") or not path:
            raise _fail(i, "an operation needs a type (add, insert, delete, replace, move) "
                        "and a path")
        if kind == "delete":
            nodes = _evaluate(doc, path, i)
            if not nodes:
                continue
            node = _one(nodes, i, "element to delete")
            _detach(doc, node, i)
        elif kind == "replace":
            node = _one(_evaluate(doc, path, i), i, "element to replace")
            if node.owner is None or node.name is None:
                raise _fail(i, "cannot replace the whole resource")
            value = _part_value(parts.get("value") or {}, i)
            if node.index is None:
                node.owner[node.name] = value
            else:
                node.owner[node.name][node.index] = value
        elif kind == "add":
            name = (parts.get("name") or {}).get("valueString")
            if not name:
                raise _fail(i, "add needs a name")
            target = _one(_evaluate(doc, path, i), i, "element to add to")
            if not isinstance(target.value, dict):
                raise _fail(i, "add needs the path to select an element")
            value = _part_value(parts.get("value") or {}, i)
            if name in target.value:
                if not isinstance(target.value[name], list):
                    raise _fail(i, f"{name} is already present and does not repeat")
                target.value[name].append(value)
            elif _is_list(rtype, _names_to(path), name):
                target.value[name] = [value]
            else:
                target.value[name] = value
        else:
            items, owner, name = _collection(doc, path, i)
            if kind == "insert":
                at = (parts.get("index") or {}).get("valueInteger")
                if not isinstance(at, int) or not 0 <= at <= len(items):
                    raise _fail(i, "insert needs an index within the list")
                items.insert(at, _part_value(parts.get("value") or {}, i))
            else:
                src = (parts.get("source") or {}).get("valueInteger")
                dst = (parts.get("destination") or {}).get("valueInteger")
                if not isinstance(src, int) or not isinstance(dst, int) \
                        or not 0 <= src < len(items) or not 0 <= dst < len(items):
                    raise _fail(i, "move needs a source and destination within the list")
                items.insert(dst, items.pop(src))
            if items:
                owner[name] = items
    return doc


def _collection(doc: dict[str, Any], path: str, index: int
                ) -> tuple[list[Any], dict[str, Any], str]:
    """The list a path names (``Patient.identifier``), with its owner and key."""
    head, _, last = path.rpartition(".")
    if not head or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", last):
        raise _fail(index, "insert and move need a path ending in a repeating element")
    owner = _one(_evaluate(doc, head, index), index, "element holding the list").value
    if not isinstance(owner, dict):
        raise _fail(index, "insert and move need a path ending in a repeating element")
    items = owner.get(last, [])
    if not isinstance(items, list):
        raise _fail(index, f"{last} does not repeat")
    return items, owner, last


def _detach(doc: dict[str, Any], node: _Located, index: int) -> None:
    if node.owner is None or node.name is None:
        raise _fail(index, "cannot delete the whole resource")
    if node.name in ("id", "resourceType") and node.owner is doc:
        raise _fail(index, f"{node.name} cannot be deleted")
    if node.index is None:
        del node.owner[node.name]
        return
    items = node.owner[node.name]
    items.pop(node.index)
    if not items:
        del node.owner[node.name]
