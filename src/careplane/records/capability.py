"""The CapabilityStatement at ``/fhir/metadata``, generated from what this server does.

Nothing here is a hand-kept list of parameters: each resource type's search parameters are
those of the spec that the indexer really indexes (plus ``_id`` and ``_lastUpdated``, served
from the resource row), with the modifiers the query parser accepts, so the statement cannot
claim a parameter that a search would then refuse.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from careplane._version import __version__
from careplane.records.indexer import composite_params, indexed_params
from careplane.records.search_params import MODIFIERS, three_part
from careplane.records.spec import resource_types, search_parameters, source

__all__ = ["INTERACTIONS", "capability_statement"]

INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance",
                "history-type", "create", "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")
_OPS = {"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    out = []
    spec = search_parameters(resource_type)
    for code in ("_id", "_lastUpdated"):
        p = spec[code]
        out.append({"name": code, "definition": p.url, "type": p.type})
    params = [p for p, _ in indexed_params(resource_type)] + \
        [p for p, _ in composite_params(resource_type)] + \
        [p for p in spec.values() if p.type == "composite" and three_part(p)]
    for param in params:
        entry: dict[str, Any] = {"name": param.code, "definition": param.url, "type": param.type}
        mods = sorted(MODIFIERS.get(param.type, ()))
        if mods:
            entry["documentation"] = "modifiers: " + ", ".join(f":{m}" for m in mods)
        out.append(entry)
    for code, doc in _WORD_SEARCH.items():
        if code in spec:
            out.append({"name": code, "definition": spec[code].url, "type": "string",
                        "documentation": doc})
    if resource_type == "Location":
        out.append({"name": "near", "definition": spec["near"].url, "type": "special",
                    "documentation": _NEAR_DOC})
    out.append(_FILTER)
    return out


_WORD_SEARCH = {
    "_text": "the words of the narrative (text.div); comma-separated values are OR'd",
    "_content": "the words of every string in the resource; comma-separated values are OR'd",
}
_NEAR_DOC = "latitude|longitude|distance|units (km, m, [mi_i], [nmi_i]; 5 km if no distance)"
_FILTER = {"name": "_filter", "type": "special",
           "definition": "http://hl7.org/fhir/SearchParameter/filter",
           "documentation": "the FHIR filter language on this type's parameters: eq ne co sw "
                            "ew gt lt ge le sa eb ap pr, and/or/not with parentheses; "
                            "po ss sb in ni re and [path] filters are refused"}
_SYSTEM_PARAMS = [
    {"name": "_type", "type": "special",
     "documentation": "the types to search (a comma list); the other parameters must be "
                      "parameters of each listed type"},
    {"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"},
    {"name": "_tag", "type": "token"}, {"name": "_security", "type": "token"},
    {"name": "_profile", "type": "uri"}, {"name": "_source", "type": "uri"},
    {"name": "_content", "type": "string", "documentation": _WORD_SEARCH["_content"]},
    _FILTER,
]


_AUDIT_EVENT_PARAMS = (("_id", "token"), ("date", "date"), ("patient", "reference"),
                       ("agent", "reference"), ("agent-name", "string"), ("altid", "token"),
                       ("action", "token"), ("outcome", "token"), ("entity", "reference"))


def _audit_event() -> dict[str, Any]:
    """AuditEvent is the audit trail, read-only (served by ``records.audit_events``)."""
    return {"type": "AuditEvent",
            "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "documentation": "the hash-chained audit trail, read-only, for administrators",
            "interaction": [{"code": c} for c in ("read", "vread", "search-type")],
            "versioning": "no-version", "readHistory": False, "updateCreate": False,
            "searchParam": [{"name": n, "type": t} for n, t in _AUDIT_EVENT_PARAMS]}


def _resource(resource_type: str) -> dict[str, Any]:
    if resource_type == "AuditEvent":
        return _audit_event()
    refs = sorted(f"{resource_type}:{p.code}" for p, _ in indexed_params(resource_type)
                  if p.type == "reference")
    revs = sorted(f"{t}:{p.code}" for t in resource_types() for p, _ in indexed_params(t)
                  if p.type == "reference" and resource_type in p.target)
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": c} for c in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "logical", "local"],
        "searchInclude": ["*", *refs],
        "searchRevInclude": revs,
        "searchParam": _search_params(resource_type),
        "operation": [{"name": "validate", "definition": _OPS["validate"]}],
    }
    if resource_type == "Patient":
        entry["operation"].append({"name": "everything", "definition": _OPS["everything"]})
    return entry


@cache
def _statement() -> dict[str, Any]:
    src = source()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "publisher": "careplane",
        "kind": "instance",
        "software": {"name": "careplane", "version": __version__},
        "implementation": {"description": "careplane FHIR R4 server"},
        "fhirVersion": src.fhir_version,
        "format": ["json", "application/fhir+json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {"cors": True, "description": "OAuth2 bearer tokens issued by "
                         "careplane (or its configured OIDC provider); every access is "
                         "decided by the organisation's policy and audited."},
            "resource": [_resource(t) for t in sorted(resource_types())
                         if t not in ("Parameters",)],
            "interaction": [{"code": c} for c in SYSTEM_INTERACTIONS],
            "searchParam": _SYSTEM_PARAMS,
        }],
    }


def capability_statement(base: str) -> dict[str, Any]:
    """The statement, with ``implementation.url`` set to this server's FHIR base."""
    stmt = dict(_statement())
    stmt["implementation"] = {**stmt["implementation"], "url": base}
    return stmt
