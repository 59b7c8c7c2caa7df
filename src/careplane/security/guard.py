"""Decide and audit in one call: what every protected handler does before touching data.

The guard looks up the facts the policy needs for this one access — the patient's consent
provisions when a patient is touched, the live grants when the data belongs to another
organisation (or a researcher reaches identifiable domains) — so the common case (own
organisation, no patient) costs no query at all beyond the audit record.

A change's audit record is written in the caller's transaction, chained on as it commits; a
read-only access's (read, search) is queued when that transaction commits and group-committed
moments later by the audit writer (:mod:`careplane.security.audit` states the durability
window), so that reading a record does not cost a durable write of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, status
from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction

from careplane.security._principal import Principal, Role
from careplane.security.audit import (
    Outcome,
    flush,
    record,
    record_after_commit,
    record_at_commit,
)
from careplane.security.audit import _queue_at_commit as queue_at_commit
from careplane.security.audit import _values as audit_values
from careplane.security.consent import rules_for
from careplane.security.grants import grants_for
from careplane.security.policy import READS, Action, Decision, Facts, Target, decide

__all__ = ["authorize", "facts_for"]

_REFUSALS = "careplane.guard.refusals"

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

    A refusal is recorded in a transaction of its own because the request's transaction is
    usually rolled back when the 403 propagates, and a refused access must never go
    unrecorded. It is written once the caller's transaction has ended, committed or rolled
    back, not at once: that transaction may hold the audit chain's lock (or SQLite's write
    lock) for records it wrote already — a batch whose entry 1 was a change and entry 2 is
    refused — and a second transaction waiting on it would never get it.
    """
    decision = decide(principal, action, target, purpose=purpose,
                      facts=facts_for(session, principal, target))
    if not decision.allowed:
        refusal = dict(principal=principal, action=action.value, target=target,
                       decision=decision, source=source,
                       detail=_detail(decision, principal, detail))
        if session.in_transaction():
            session.info.setdefault(_REFUSALS, []).append(refusal)
        else:
            _record_refusals(session.get_bind(), [refusal])
        raise HTTPException(status.HTTP_403_FORBIDDEN, decision.reason)
    append = record_after_commit if action in READS else record_at_commit
    append(session, principal, action.value, target, decision=decision, source=source,
           detail=_detail(decision, principal, detail))
    return decision


def _record_refusals(bind: Engine | Connection, refusals: list[dict[str, Any]]) -> None:
    """Write refusals durably in their own transaction, after the reads this process has
    queued, so that the chain shows what a caller read before being refused in order."""
    flush(bind)
    if isinstance(bind, Connection) and _autocommit(bind):
        # A read session's connection runs each statement on its own: the chain's lock
        # would not be held across the append, so the refusal takes a pooled connection.
        bind = bind.engine
    with Session(bind=bind) as own:
        for refusal in refusals:
            record(own, refusal["principal"], refusal["action"], refusal["target"],
                   outcome=Outcome.denied, decision=refusal["decision"],
                   source=refusal["source"], detail=refusal["detail"])
        own.commit()


def _autocommit(conn: Connection) -> bool:
    options = conn.get_execution_options()
    return bool(options.get("isolation_level") == "AUTOCOMMIT"
                or options.get("careplane_autocommit"))


@event.listens_for(Session, "after_transaction_end")
def _write_refusals(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and _REFUSALS in session.info:
        _record_refusals(session.get_bind(), session.info.pop(_REFUSALS))


class Refusal(HTTPException):
    """A 403 from :func:`authorize_all`, naming which of its requests was refused."""

    def __init__(self, index: int, detail: Any) -> None:
        super().__init__(status.HTTP_403_FORBIDDEN, detail)
        self.index = index


def authorize_all(session: Session, principal: Principal,
                  requests: Sequence[tuple[Action, Target, dict[str, Any] | None]], *,
                  source: str | None = None) -> list[Decision]:
    """:func:`authorize` for the several kinds of access one request makes at once (the
    groups of a FHIR transaction), at the cost of about one.

    Each is decided exactly as ``authorize`` decides it; the facts (consents, grants) of a
    patient are looked up once for all of them. When every one is allowed, the records of
    the changes are appended together as the transaction commits: one chain lock, one
    look-up of the newest hash and one insert, instead of one of each per access (reads
    still go after the commit). The first refused is handed to ``authorize``, which records
    the refusal as it always does, and raised as a :class:`Refusal` naming it; the caller's
    transaction then fails, so none of the others' records is kept, as with one
    ``authorize`` after another.
    """
    facts: dict[tuple[str | None, str | None, str], Facts] = {}
    decisions: list[Decision] = []
    for index, (action, target, detail) in enumerate(requests):
        key = (target.org_id, target.patient_id, target.domain)
        if key not in facts:
            facts[key] = facts_for(session, principal, target)
        decision = decide(principal, action, target, facts=facts[key])
        if not decision.allowed:
            try:
                authorize(session, principal, action, target, source=source, detail=detail)
            except HTTPException as exc:
                raise Refusal(index, exc.detail) from None
            raise RuntimeError("the policy answered the same question two ways")
        decisions.append(decision)
    changes = []
    for (action, target, detail), decision in zip(requests, decisions, strict=True):
        values = _detail(decision, principal, detail)
        if action in READS:
            record_after_commit(session, principal, action.value, target, decision=decision,
                                source=source, detail=values)
        else:
            changes.append(audit_values(principal, action.value, target, Outcome.success,
                                        decision, source, values))
    if changes:
        queue_at_commit(session, changes)
    return decisions
