"""The audit trail: append-only and hash-chained.

Each record's hash covers its content and the previous record's hash, so editing or deleting any
record breaks every later link, which :func:`verify` reports. Records are written in the
caller's transaction: if the change fails, so does its audit record, and the other way round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import BigInteger, Boolean, Integer, String, Text, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from careplane.platform.db import Base, JSONType, UTCDateTime, utcnow
from careplane.platform.logs import request_id_var
from careplane.security._principal import Principal
from careplane.security.policy import Decision, Target

__all__ = ["AuditRecord", "Outcome", "VerifyResult", "record", "verify"]

GENESIS = "0" * 64


class Outcome(StrEnum):
    success = "success"
    denied = "denied"
    failure = "failure"


class AuditRecord(Base):
    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[str | None] = mapped_column(String(32), index=True)
    actor_name: Mapped[str] = mapped_column(String(150), default="")
    org_id: Mapped[str | None] = mapped_column(String(32), index=True)
    action: Mapped[str] = mapped_column(String(32))
    target_kind: Mapped[str] = mapped_column(String(100))
    target_id: Mapped[str | None] = mapped_column(String(200))
    target_org_id: Mapped[str | None] = mapped_column(String(32))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    purpose: Mapped[str | None] = mapped_column(String(64))
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    source: Mapped[str | None] = mapped_column(String(100))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


_CHAINED = ("at", "actor_id", "actor_name", "org_id", "action", "target_kind", "target_id",
            "target_org_id", "patient_id", "outcome", "reason", "purpose", "break_glass",
            "source", "request_id", "detail")


def _digest(row: AuditRecord, prev_hash: str) -> str:
    content = {name: getattr(row, name) for name in _CHAINED}
    content["at"] = row.at.isoformat()
    blob = orjson.dumps(content, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(prev_hash.encode() + blob).hexdigest()


def _lock_chain(session: Session) -> None:
    """Serialise appends so that two transactions never chain onto the same predecessor."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7350001)"))


def record(session: Session, principal: Principal | None, action: str, target: Target, *,
           outcome: Outcome = Outcome.success, decision: Decision | None = None,
           source: str | None = None, detail: dict[str, Any] | None = None) -> AuditRecord:
    _lock_chain(session)
    last = session.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1))
    prev_hash = last or GENESIS
    row = AuditRecord(
        at=utcnow(),
        actor_id=principal.user_id if principal else None,
        actor_name=principal.username if principal else "",
        org_id=principal.org_id if principal else None,
        action=str(action), target_kind=target.kind, target_id=target.id,
        target_org_id=target.org_id, patient_id=target.patient_id, outcome=outcome.value,
        reason=decision.reason if decision else "",
        purpose=decision.purpose if decision else None,
        break_glass=bool(decision and decision.break_glass), source=source,
        request_id=request_id_var.get(), detail=detail or {}, prev_hash=prev_hash)
    row.hash = _digest(row, prev_hash)
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str = ""
    # The newest record verified: note it somewhere else (a ticket, a log host) and pass it
    # back as ``expect`` later, and deleting records from the end is noticed as well.
    head_id: int | None = None
    head_hash: str | None = None


def _walk(session: Session, batch: int = 5000) -> Iterator[AuditRecord]:
    after = 0
    while True:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.id > after)
                               .order_by(AuditRecord.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id
        session.expunge_all()


def verify(session: Session, *, expect: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute the chain; the first record that does not match is where tampering begins.

    A chain alone cannot show that its newest records were cut off; ``expect`` — a head
    ``(id, hash)`` noted from an earlier run — must still be in the chain, unchanged.
    """
    prev = GENESIS
    checked = 0
    head_id: int | None = None
    found_expected = expect is None
    for row in _walk(session):
        if row.prev_hash != prev:
            return VerifyResult(False, checked, row.id,
                                "link broken: a record before this one was deleted or changed")
        if _digest(row, prev) != row.hash:
            return VerifyResult(False, checked, row.id, "content does not match its hash")
        if expect is not None and row.id == expect[0]:
            if row.hash != expect[1]:
                return VerifyResult(False, checked, row.id,
                                    "this record differs from the head noted earlier")
            found_expected = True
        prev = row.hash
        head_id = row.id
        checked += 1
    if not found_expected:
        assert expect is not None
        return VerifyResult(False, checked, expect[0],
                            "the head noted earlier is gone: records were cut off the end",
                            head_id, prev if head_id else None)
    return VerifyResult(True, checked, head_id=head_id, head_hash=prev if head_id else None)
