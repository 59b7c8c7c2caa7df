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
from careplane.records.search_params import MODIFIERS
from careplane.records.spec import resource_types, search_parameters, source

__all__ = ["INTERACTIONS", "capability_statement"]

INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance",
                "history-type", "create", "search-type")
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system")
_OPS = {"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}


def _search_params(resource_type: str) -> list[dict[str, Any]]:
    out = []
    spec = search_parameters(resource_type)
    for code in ("_id", "_lastUpdated"):
        p = spec[code]
        out.append({"name": code, "definition": p.url, "type": p.type})
    params = [p for p, _ in indexed_params(resource_type)] + \
        [p for p, _ in composite_params(resource_type)]
    for param in params:
        entry: dict[str, Any] = {"name": param.code, "definition": param.url, "type": param.type}
        mods = sorted(MODIFIERS.get(param.type, ()))
        if mods:
            entry["documentation"] = "modifiers: " + ", ".join(f":{m}" for m in mods)
        out.append(entry)
    return out


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
            "searchParam": [{"name": "_lastUpdated", "type": "date"}],
        }],
    }


def capability_statement(base: str) -> dict[str, Any]:
    """The statement, with ``implementation.url`` set to this server's FHIR base."""
    stmt = dict(_statement())
    stmt["implementation"] = {**stmt["implementation"], "url": base}
    return stmt
