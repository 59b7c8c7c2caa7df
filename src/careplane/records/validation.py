"""Validation on write: a resource is checked against the FHIR models before it is stored.

The models are fhir.resources' R4B classes (the library ships no plain R4 package; R4B is R4
with a few resources revised). Validation runs on create, update and in bundles, never when
reading. Each refusal is an
OperationOutcome issue naming the offending element as a FHIRPath (``Patient.name[0].family``)
so a client can point at it.

R4 resource types that R4B dropped or rebuilt (EffectEvidenceSynthesis, the MedicinalProduct
family, SubstanceSpecification, Evidence, EvidenceVariable) have no model to check against:
they get the structural checks only (a JSON object, a known type, a valid id), and the indexer
still refuses values it cannot read, such as an impossible date.

Building the models is the costly part of a write (about half a millisecond per resource), so
each resource is first walked by a structure check compiled once per model class from the
models' own field descriptions: the element names, which repeat, which are complex (checked
recursively) or primitive (checked by the very pydantic type the model uses, cached by value),
which are required, and which choice elements exclude each other. It only ever says "valid";
on anything it is not sure of (an unknown or ``_name`` key, a null, a type it does not handle)
the resource goes through the full models, which decide and name the path. So the structure
check accepts nothing the models would refuse, and a refusal reads the same either way.

One gap of the library is bridged: the JSON form of FHIR lets any primitive carry its id and
extensions in a sibling ``_name`` object, but fhir.resources refuses ``_valueString`` and its
kind inside ``Extension``. Such a key is accepted when it holds what the rule allows (an
object, or for repeating elements an array of objects and nulls), and nothing else is waived.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError

from careplane.records.errors import FhirError, Issue
from careplane.records.spec import resource_types

__all__ = ["check_id", "load_models", "model_for", "validate_resource"]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_MAX_ISSUES = 20
# R4 types whose R4B model describes a different (rebuilt) resource.
_REBUILT_IN_R4B = frozenset({"Evidence", "EvidenceVariable"})


def check_id(value: Any, where: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise FhirError.of(400, "value", f"{value!r} is not a valid FHIR id "
                           "(1-64 letters, digits, '-' or '.')", expression=where)
    return value


@cache
def model_for(resource_type: str) -> type[BaseModel] | None:
    """The R4B model class of ``resource_type``, or None where R4B has none."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls: type[BaseModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None
    return cls


def load_models() -> None:
    """Build the structure check of every resource type now, with the models and the
    element types it reaches (otherwise each is imported and compiled by the first resource
    that needs it: about 2.5 s and 60 MB for all of R4's types)."""
    seen: set[type[BaseModel]] = set()
    todo = [m for m in map(model_for, sorted(resource_types())) if m is not None]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        shape = _shape(model)
        if shape is not None:
            todo.extend(e.model for e in shape.elements.values() if e.model is not None)


def _fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("__root__",):
            out += f".{part}"
    return out


def _primitive_extension(data: Any, err: Any) -> bool:
    """An ``extra_forbidden`` error on a well-formed ``_name`` primitive extension key."""
    loc = tuple(err.get("loc", ()))
    if err.get("type") != "extra_forbidden" or not loc or not isinstance(loc[-1], str) \
            or not loc[-1].startswith("_"):
        return False
    value = err.get("input")
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and all(v is None or isinstance(v, dict) for v in value)


def resource_type_of(data: Any, expected: str | None = None) -> str:
    """The body's resourceType, checked: a JSON object naming an R4 type (and the one expected)."""
    if not isinstance(data, dict):
        raise FhirError.of(400, "structure", "the body must be a JSON object holding one "
                           "FHIR resource")
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirError.of(400, "required", "the resource has no resourceType",
                           expression="resourceType")
    if rtype not in resource_types():
        raise FhirError.of(400, "not-supported", f"{rtype!r} is not an R4 resource type",
                           expression="resourceType")
    if expected is not None and rtype != expected:
        raise FhirError.of(400, "invalid", f"the body holds a {rtype} but the URL names a "
                           f"{expected}", expression="resourceType")
    return rtype


def validate_resource(data: Any, expected: str | None = None) -> str:
    """Check ``data`` as an R4 resource; returns its type or raises FhirError (400/422)."""
    rtype = resource_type_of(data, expected)
    if "id" in data:
        check_id(data["id"], f"{rtype}.id")
    model = model_for(rtype)
    if model is None or rtype in _REBUILT_IN_R4B:
        return rtype
    if _surely_valid(model, data):
        return rtype
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not _primitive_extension(data, e)]
        if not errors:
            return rtype
        issues = []
        for err in errors[:_MAX_ISSUES]:
            path = _fhirpath(rtype, tuple(err.get("loc", ())))
            message = str(err.get("msg", "invalid")).split("\n")[0].strip()
            issues.append(Issue("invalid" if err.get("type") != "missing" else "required",
                                f"{path}: {message}", expression=(path,)))
        raise FhirError(422, issues) from None
    except (ValueError, TypeError, AttributeError) as exc:  # a model's own check
        raise FhirError.of(422, "invalid", f"{rtype}: {exc}") from None
    return rtype


# -- the compiled structure check -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Element:
    """How one JSON key of a model is checked."""

    repeats: bool
    primitive: TypeAdapter[Any] | None  # a primitive's pydantic type
    model: type[BaseModel] | None       # a complex type's model
    any_resource: bool = False          # a Resource: the model comes from its resourceType


@dataclass(frozen=True, slots=True)
class _Shape:
    resource_type: str | None  # set on resources, whose JSON names their type
    elements: dict[str, _Element]
    required: tuple[str, ...]
    choices: tuple[tuple[tuple[str, ...], bool], ...]  # (JSON keys, one required)


_PRIMITIVE_OK: dict[tuple[int, type, Any], bool] = {}
_PRIMITIVE_CACHE_MAX = 200_000


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(repeats, item annotation) of a field annotation: Optional and List taken off."""
    repeats = False
    while True:
        origin = get_origin(annotation)
        if origin is Union or (origin is not None and type(annotation).__name__ == "UnionType"):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return repeats, None
            annotation = args[0]
        elif origin is list:
            if repeats:
                return repeats, None
            repeats = True
            annotation = get_args(annotation)[0]
        else:
            return repeats, annotation


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


@cache
def _shape(model: type[BaseModel]) -> _Shape | None:
    """The compiled check of ``model``, or None where its fields are not all understood."""
    elements: dict[str, _Element] = {}
    by_name: dict[str, str] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        by_name[name] = key
        if name.endswith("__ext") or key == "fhir_comments":
            continue  # ``_name`` keys and comments go to the models
        repeats, item = _unwrap(info.annotation)
        if item is None:
            return None
        klass = getattr(item, "get_model_klass", None)
        if klass is not None:
            sub = klass()
            resource_base = sub.__name__ in ("Resource", "DomainResource")
            elements[key] = _Element(repeats, None, None if resource_base else sub,
                                     any_resource=resource_base)
        else:
            try:
                elements[key] = _Element(repeats, _adapter(item), None)
            except (TypeError, ValueError, PydanticUserError):
                return None
    rtype = getattr(model, "__resource_type__", None)
    is_resource = getattr(model, "has_resource_base", None)
    fhir_model: Any = model  # the FHIR models' own lists (methods that ignore self)
    try:
        required = tuple(by_name[n] for n, _ in fhir_model.get_required_fields(None))
        choices = tuple(
            (tuple(by_name[f] for f in fields), _one_required(model, fields[0]))
            for fields in fhir_model.get_one_of_many_fields(None).values())
    except (AttributeError, KeyError, TypeError):
        return None
    required += tuple(by_name[n] for n, info in model.model_fields.items()
                      if info.is_required() and by_name[n] not in required)
    return _Shape(rtype if is_resource is not None and is_resource() else None, elements,
                  required, choices)


def _one_required(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("one_of_many_required") is True


def _surely_valid(model: type[BaseModel], data: Any) -> bool:
    """True only where the models would accept ``data`` (False: let them decide)."""
    if not isinstance(data, dict):
        return False
    shape = _shape(model)
    if shape is None:
        return False
    elements = shape.elements
    for key, value in data.items():
        if value is None:
            return False
        element = elements.get(key)
        if element is None:
            if key == "resourceType" and shape.resource_type is not None \
                    and value == shape.resource_type:
                continue
            return False
        if element.repeats:
            if not isinstance(value, list) or not value:
                return False
            for item in value:
                if item is None or not _item_valid(element, item):
                    return False
        elif isinstance(value, list) or not _item_valid(element, value):
            return False
    for key in shape.required:
        if key not in data:
            return False
    for keys, needed in shape.choices:
        present = sum(1 for k in keys if k in data)
        if present > 1 or (needed and present == 0):
            return False
    return True


def _item_valid(element: _Element, value: Any) -> bool:
    if element.primitive is not None:
        if isinstance(value, (dict, list)):
            return False
        key = (id(element.primitive), type(value), value)
        known = _PRIMITIVE_OK.get(key)
        if known is None:
            try:
                element.primitive.validate_python(value)
                known = True
            except (ValidationError, ValueError, TypeError, AttributeError):
                known = False
            if len(_PRIMITIVE_OK) >= _PRIMITIVE_CACHE_MAX:
                _PRIMITIVE_OK.clear()
            _PRIMITIVE_OK[key] = known
        return known
    if element.any_resource:
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str) \
                or value["resourceType"] in _REBUILT_IN_R4B:
            return False
        sub = model_for(value["resourceType"])
        return sub is not None and _surely_valid(sub, value)
    assert element.model is not None
    return isinstance(value, dict) and _surely_valid(element.model, value)
