"""Audit records as FHIR R4 AuditEvents: valid resources with the standard codes."""

from __future__ import annotations

from dataclasses import replace

from fhir.resources.R4B.auditevent import AuditEvent

from careplane.platform.db import Database
from careplane.security import Principal, Role
from careplane.security.audit import Outcome, record
from careplane.security.audit_fhir import to_audit_event
from careplane.security.policy import Decision, Target


def test_audit_records_map_to_valid_audit_events(db: Database) -> None:
    nurse = Principal("u1", "nurse", "org1", frozenset({Role.clinician}), "t1")
    urgent = replace(nurse, break_glass_reason="collapsed in the waiting room")
    with db.session() as session:
        read = record(session, nurse, "read", Target("records:Observation", "org1", "o1", "p1"),
                      decision=Decision(True, "same organisation", purpose="TREAT"),
                      source="fhir")
        refused = record(session, nurse, "search", Target("imaging:study", "org2"),
                         outcome=Outcome.denied, decision=Decision(False, "another org"))
        glass = record(session, urgent, "read", Target("records:Patient", "org1", "p1", "p1"),
                       decision=Decision(True, "break-the-glass", break_glass=True,
                                         purpose="ETREAT"),
                       detail={"client_id": "app-1"})
        events = [to_audit_event(r) for r in (read, refused, glass)]
    for event in events:
        AuditEvent.model_validate(event)  # raises if it is not a valid R4 AuditEvent
    first, second, third = events
    assert first["action"] == "R" and first["outcome"] == "0"
    assert first["subtype"][0]["code"] == "read"
    assert first["entity"][0]["what"] == {"reference": "Observation/o1"}
    assert first["entity"][1]["what"] == {"reference": "Patient/p1"}
    assert first["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert second["outcome"] == "4" and second["action"] == "E"
    assert second["entity"][0]["what"]["identifier"]["system"] == "urn:careplane:imaging:study"
    codes = {c["coding"][0]["code"] for c in third["agent"][0]["purposeOfUse"]}
    assert codes == {"ETREAT", "BTG"}
    assert len(third["entity"]) == 1  # the Patient is the target itself
    assert third["agent"][0]["policy"] == ["urn:careplane:oauth-client:app-1"]
    assert third["meta"]["tag"][0]["code"] == glass.hash
