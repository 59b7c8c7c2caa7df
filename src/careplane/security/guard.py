"""Decide and audit in one call: what every protected handler does before touching data.

The guard looks up the facts the policy needs for this one access — the patient's consent
provisions when a patient is touched, the live grants when the data belongs to another
organisation (or a researcher reaches identifiable domains) — so the common case (own
organisation, no patient) costs no query at all beyond the audit record.

A change's audit record is written in the caller's transaction; a read-only access's (read,
search) is queued when that transaction commits and group-committed moments later by the
audit writer (:mod:`careplane.security.audit` states the durability window), so that reading
a record does not cost a durable write of its own.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from careplane.security._principal import Principal, Role
from careplane.security.audit import Outcome, flush, record, record_after_commit
from careplane.security.consent import rules_for
from careplane.security.grants import grants_for
from careplane.security.policy import READS, Action, Decision, Facts, Target, decide

__all__ = ["authorize", "facts_for"]

_IDENTIFIABLE = frozenset({"records", "imaging"})


def facts_for(session: Session, principal: Principal, target: Target) -> Facts:
    consents = rules_for(session, target.org_id, target.patient_id) \
        if target.patient_id else ()
    cross_org = target.org_id is not None and target.org_id != principal.org_id
    researching = Role.researcher in principal.roles and target.domain in _IDENTIFIABLE
    grants = grants_for(session, principal, target.org_id) if cross_org or researching else ()
    return Facts(grants=grants, consents=consents)


def _detail(decision: Decision, principal: Principal,
            detail: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(detail or {})
    if decision.grant_id:
        out["grant_id"] = decision.grant_id
    if decision.consent_id:
        out["consent_id"] = decision.consent_id
    if principal.break_glass_reason:
        out["break_glass_reason"] = principal.break_glass_reason
    if principal.client_id:
        out["client_id"] = principal.client_id
    return out


def authorize(session: Session, principal: Principal, action: Action, target: Target, *,
              purpose: str | None = None, source: str | None = None,
              detail: dict[str, Any] | None = None) -> Decision:
    """Allow (audited in the caller's transaction) or refuse with 403 (audited on its own).

    A refusal is recorded in a separate transaction because the request's own transaction is
    rolled back when the 403 propagates, and a refused access must never go unrecorded.
    """
    decision = decide(principal, action, target, purpose=purpose,
                      facts=facts_for(session, principal, target))
    if not decision.allowed:
        # Durable at once, and after the reads this process has queued, so that the chain
        # shows what a caller read before being refused in the order it happened.
        flush(session.get_bind())
        with Session(bind=session.get_bind()) as own:
            record(own, principal, action.value, target, outcome=Outcome.denied,
                   decision=decision, source=source,
                   detail=_detail(decision, principal, detail))
            own.commit()
        raise HTTPException(status.HTTP_403_FORBIDDEN, decision.reason)
    append = record_after_commit if action in READS else record
    append(session, principal, action.value, target, decision=decision, source=source,
           detail=_detail(decision, principal, detail))
    return decision
