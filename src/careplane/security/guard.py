"""Decide and audit in one call: what every protected handler does before touching data."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from careplane.security._principal import Principal
from careplane.security.audit import Outcome, record
from careplane.security.policy import Action, Decision, Target, decide

__all__ = ["authorize"]


def authorize(session: Session, principal: Principal, action: Action, target: Target, *,
              purpose: str | None = None, source: str | None = None,
              detail: dict[str, Any] | None = None) -> Decision:
    """Allow (audited in the caller's transaction) or refuse with 403 (audited on its own).

    A refusal is recorded in a separate transaction because the request's own transaction is
    rolled back when the 403 propagates, and a refused access must never go unrecorded.
    """
    decision = decide(principal, action, target, purpose=purpose)
    if not decision.allowed:
        with Session(bind=session.get_bind()) as own:
            record(own, principal, action.value, target, outcome=Outcome.denied,
                   decision=decision, source=source, detail=detail)
            own.commit()
        raise HTTPException(status.HTTP_403_FORBIDDEN, decision.reason)
    record(session, principal, action.value, target, decision=decision, source=source,
           detail=detail)
    return decision
