"""``guard.authorize``: loads grants and consents, decides, and audits every outcome."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi import HTTPException
from sqlalchemy import select

from careplane.platform.db import Database
from careplane.security import Principal, Role
from careplane.security.audit import AuditRecord, flush_all, verify
from careplane.security.consent import Provision, record_consent
from careplane.security.grants import create_grant, revoke_grant
from careplane.security.guard import authorize
from careplane.security.identity import create_org
from careplane.security.policy import Action, Target
from careplane.security.review import break_glass_entries, review_break_glass


@pytest.fixture
def orgs(db: Database) -> tuple[str, str]:
    with db.session() as session:
        return create_org(session, "org-a", "A").id, create_org(session, "org-b", "B").id


def _records(db: Database) -> list[AuditRecord]:
    flush_all()  # reads are recorded moments after their commit
    with db.session() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))


def test_allowed_and_refused_accesses_are_audited(db: Database,
                                                  orgs: tuple[str, str]) -> None:
    a, b = orgs
    nurse = Principal("u1", "nurse", a, frozenset({Role.clinician}), "t1")
    with db.session() as session:
        authorize(session, nurse, Action.read, Target("records:Patient", a, "p1", "p1"))
    with db.session() as session, pytest.raises(HTTPException) as refused:
        authorize(session, nurse, Action.read, Target("records:Patient", b, "p9", "p9"))
    assert refused.value.status_code == 403
    rows = _records(db)
    assert [(r.outcome, r.target_org_id) for r in rows] == [("success", a), ("denied", b)]
    assert rows[0].purpose == "TREAT"


def test_grant_is_loaded_used_and_revocable(db: Database, orgs: tuple[str, str]) -> None:
    a, b = orgs
    doctor_b = Principal("u2", "dr-b", b, frozenset({Role.clinician}), "t2")
    with db.session() as session:
        grant = create_grant(session, grantor_org_id=a, kinds=["records:*"],
                             actions=[Action.read], grantee_org_id=b)
    with db.session() as session:
        decision = authorize(session, doctor_b, Action.read,
                             Target("records:Observation", a, "o1", "p1"))
        assert decision.grant_id == grant.id
    assert _records(db)[-1].detail["grant_id"] == grant.id
    with db.session() as session:
        assert revoke_grant(session, grant.id, grantor_org_id=a)
    with db.session() as session, pytest.raises(HTTPException):
        authorize(session, doctor_b, Action.read, Target("records:Observation", a, "o1", "p1"))


def test_consent_deny_beats_grant_and_break_glass_is_flagged(
        db: Database, orgs: tuple[str, str]) -> None:
    a, b = orgs
    doctor_b = Principal("u2", "dr-b", b, frozenset({Role.clinician}), "t2")
    with db.session() as session:
        create_grant(session, grantor_org_id=a, kinds=["*"], actions=list(Action),
                     grantee_org_id=b)
        record_consent(session, org_id=a, patient_id="p1",
                       provision=Provision("permit", exceptions=[
                           Provision("deny", actor_org_ids=[b])]))
    target = Target("records:Observation", a, "o1", "p1")
    with db.session() as session, pytest.raises(HTTPException) as refused:
        authorize(session, doctor_b, Action.read, target)
    assert "consent" in str(refused.value.detail)
    urgent = replace(doctor_b, break_glass_reason="cardiac arrest, need medication list")
    with db.session() as session:
        decision = authorize(session, urgent, Action.read, target)
    assert decision.allowed and decision.break_glass
    last = _records(db)[-1]
    assert last.break_glass and last.purpose == "ETREAT"
    assert last.detail["break_glass_reason"] == "cardiac arrest, need medication list"
    # Listed for review by the data owner's organisation, and reviewed once.
    admin_a = Principal("u3", "admin-a", a, frozenset({Role.admin}), "t3")
    with db.session() as session:
        pending = break_glass_entries(session, a, pending_only=True)
        assert [e.record.id for e in pending] == [last.id]
        assert pending[0].stated_reason.startswith("cardiac arrest")
        review_break_glass(session, admin_a, last.id, "justified", "checked with ED")
    with db.session() as session:
        assert break_glass_entries(session, a, pending_only=True) == []
        assert verify(session).ok
