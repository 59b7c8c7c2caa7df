"""``_summary`` and ``_elements``: return part of each resource, marked as such.

Which elements are "in the summary" is the specification's ``isSummary`` flag; fhir.resources
carries it on each model field (``summary_element_property``), so the sets are read from the
R4B models once per type rather than kept by hand. A resource cut down this way carries the
``SUBSETTED`` tag so that no client mistakes it for the whole record and writes it back.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from careplane.records.validation import model_for

__all__ = ["SUBSETTED", "elements_of", "shape"]

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "subsetted"}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _fields(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary element names, mandatory element names) as JSON keys."""
    model = model_for(resource_type)
    if model is None:
        return frozenset(), frozenset()
    summary, required = set(), set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if extra.get("element_required") or info.is_required():
            required.add(key)
    return frozenset(summary), frozenset(required)


def elements_of(resource_type: str, mode: str) -> frozenset[str] | None:
    """The top-level keys kept for a ``_summary`` mode (None: keep everything)."""
    summary, required = _fields(resource_type)
    if mode == "true":
        return _ALWAYS | summary
    if mode == "text":
        return _ALWAYS | required | {"text"}
    return None


def _tagged(content: dict[str, Any]) -> dict[str, Any]:
    meta = dict(content.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    out = dict(content)
    out["meta"] = meta
    return out


def shape(content: dict[str, Any], summary: str | None, elements: tuple[str, ...]
          ) -> dict[str, Any]:
    """``content`` as ``_summary``/``_elements`` ask; the input is never modified."""
    rtype = content.get("resourceType", "")
    if summary == "data":
        return _tagged({k: v for k, v in content.items() if k != "text"})
    if summary in ("true", "text"):
        keep = elements_of(rtype, summary) or frozenset()
        return _tagged({k: v for k, v in content.items() if k in keep})
    if elements:
        wanted = set(elements) | _ALWAYS
        return _tagged({k: v for k, v in content.items()
                        if k in wanted or any(k.startswith(e) and k[len(e):][:1].isupper()
                                              for e in elements)})
    return content
