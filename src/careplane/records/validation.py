"""Validation on write: a resource is checked against the FHIR models before it is stored.

The models are fhir.resources' R4B classes (the library ships no plain R4 package; R4B is R4
with a few resources revised). Validation costs about twenty times a ``json.loads``, so it
runs on create, update and in bundles, never when reading. Each refusal is an
OperationOutcome issue naming the offending element as a FHIRPath (``Patient.name[0].family``)
so a client can point at it.

R4 resource types that R4B dropped or rebuilt (EffectEvidenceSynthesis, the MedicinalProduct
family, SubstanceSpecification, Evidence, EvidenceVariable) have no model to check against:
they get the structural checks only (a JSON object, a known type, a valid id), and the indexer
still refuses values it cannot read, such as an impossible date.

One gap of the library is bridged: the JSON form of FHIR lets any primitive carry its id and
extensions in a sibling ``_name`` object, but fhir.resources refuses ``_valueString`` and its
kind inside ``Extension``. Such a key is accepted when it holds what the rule allows (an
object, or for repeating elements an array of objects and nulls), and nothing else is waived.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from careplane.records.errors import FhirError, Issue
from careplane.records.spec import resource_types

__all__ = ["check_id", "model_for", "validate_resource"]

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
    except (ValueError, TypeError) as exc:  # a model's own check that is not pydantic's
        raise FhirError.of(422, "invalid", f"{rtype}: {exc}") from None
    return rtype
