"""The audit trail as FHIR R4 AuditEvent resources (for ``/fhir/AuditEvent`` read and search).

A pure mapping from :class:`~careplane.security.audit.AuditRecord`: the records domain serves
it (the trail itself stays in ``audit_record``, chained; AuditEvents are views, never stored).
Codes come from the standard value sets: the audit-event type ``rest``, the RESTful
interaction as subtype, the CRUDE action, outcome ``0`` (success) / ``4`` (refused) / ``8``
(failed), HL7 v3 PurposeOfUse as the purpose, and a break-the-glass access carries the v3
ActReason ``BTG`` on its agent.
"""

from __future__ import annotations

from typing import Any

from careplane.security.audit import AuditRecord

__all__ = ["to_audit_event"]

_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
         "display": "RESTful Operation"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_SUBTYPE = {"read": "read", "search": "search-type", "create": "create", "update": "update",
            "delete": "delete", "export": "operation", "execute": "operation"}
_ACTION = {"read": "R", "search": "E", "create": "C", "update": "U", "delete": "D",
           "export": "E", "execute": "E"}
_OUTCOME = {"success": "0", "denied": "4", "failure": "8"}
_PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"


def _what(kind: str, target_id: str | None) -> dict[str, Any]:
    domain, _, type_ = kind.partition(":")
    if domain == "records" and target_id and type_ and type_[0].isupper():
        return {"reference": f"{type_}/{target_id}"}
    return {"identifier": {"system": f"urn:careplane:{domain}:{type_ or 'object'}",
                           "value": target_id or "*"}, "display": kind}


def to_audit_event(row: AuditRecord) -> dict[str, Any]:
    """One audit record as an R4 AuditEvent (JSON-ready)."""
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": "urn:careplane:user", "value": row.actor_name or "-"},
                "display": row.actor_name or "anonymous"},
        "requestor": True}
    if row.org_id:
        agent["type"] = {"text": "organisation member"}
        agent["altId"] = row.actor_id
    purposes = []
    if row.purpose:
        purposes.append({"coding": [{"system": _PURPOSE, "code": row.purpose}]})
    if row.break_glass:
        purposes.append({"coding": [{"system": _PURPOSE, "code": "BTG",
                                     "display": "break the glass"}]})
    if purposes:
        agent["purposeOfUse"] = purposes
    detail = row.detail if isinstance(row.detail, dict) else {}
    if detail.get("client_id"):
        agent["policy"] = [f"urn:careplane:oauth-client:{detail['client_id']}"]
    entities: list[dict[str, Any]] = [{"what": _what(row.target_kind, row.target_id),
                                       "description": row.target_kind}]
    if row.patient_id and not (row.target_kind == "records:Patient"
                               and row.target_id == row.patient_id):
        entities.append({"what": {"reference": f"Patient/{row.patient_id}"},
                         "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row.id),
        "meta": {"tag": [{"system": "urn:careplane:audit-chain", "code": row.hash}]},
        "type": _TYPE,
        "subtype": [{"system": _INTERACTION, "code": _SUBTYPE.get(row.action, "operation")}],
        "action": _ACTION.get(row.action, "E"),
        "recorded": row.at.isoformat(),
        "outcome": _OUTCOME.get(row.outcome, "8"),
        "agent": [agent],
        "source": {"site": row.source or "careplane",
                   "observer": {"display": "careplane"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": entities,
    }
    if row.reason:
        event["outcomeDesc"] = row.reason
    if row.purpose:
        event["purposeOfEvent"] = [{"coding": [{"system": _PURPOSE, "code": row.purpose}]}]
    return event
