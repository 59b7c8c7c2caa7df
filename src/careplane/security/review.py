"""Review of break-the-glass accesses: every emergency access waits here for a reviewer.

The audit record itself is never changed (that would break its chain); a review is a row of
its own pointing at it, and the act of reviewing is audited too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from careplane.platform.db import Base, UTCDateTime, new_id, utcnow
from careplane.security._principal import Principal
from careplane.security.audit import AuditRecord, record
from careplane.security.policy import Decision, Target

__all__ = ["BreakGlassEntry", "BreakGlassReview", "ReviewError", "break_glass_entries",
           "review_break_glass"]

OUTCOMES = ("justified", "unjustified")


class ReviewError(ValueError):
    pass


class BreakGlassReview(Base):
    __tablename__ = "audit_break_glass_review"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    audit_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("audit_record.id", ondelete="RESTRICT"), unique=True)
    reviewer_id: Mapped[str] = mapped_column(String(32))
    reviewer_name: Mapped[str] = mapped_column(String(150))
    outcome: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@dataclass(frozen=True)
class BreakGlassEntry:
    record: AuditRecord
    review: BreakGlassReview | None

    @property
    def stated_reason(self) -> str:
        return str(self.record.detail.get("break_glass_reason", "")) if isinstance(
            self.record.detail, dict) else ""


def break_glass_entries(session: Session, org_id: str, *, pending_only: bool = False,
                        limit: int = 200) -> list[BreakGlassEntry]:
    """Emergency accesses by members of ``org_id`` or to its data, newest first."""
    query = (select(AuditRecord, BreakGlassReview)
             .outerjoin(BreakGlassReview, BreakGlassReview.audit_id == AuditRecord.id)
             .where(AuditRecord.break_glass.is_(True),
                    (AuditRecord.org_id == org_id) | (AuditRecord.target_org_id == org_id))
             .order_by(AuditRecord.id.desc()).limit(limit))
    if pending_only:
        query = query.where(BreakGlassReview.id.is_(None))
    return [BreakGlassEntry(row, review) for row, review in session.execute(query).all()]


def review_break_glass(session: Session, reviewer: Principal, audit_id: int, outcome: str,
                       note: str = "") -> BreakGlassReview:
    if outcome not in OUTCOMES:
        raise ReviewError(f"outcome must be one of {', '.join(OUTCOMES)}")
    row = session.get(AuditRecord, audit_id)
    if row is None or not row.break_glass or reviewer.org_id not in (row.org_id,
                                                                      row.target_org_id):
        raise ReviewError(f"no break-the-glass access {audit_id} for your organisation")
    if session.scalar(select(BreakGlassReview).where(BreakGlassReview.audit_id == audit_id)):
        raise ReviewError(f"break-the-glass access {audit_id} was already reviewed")
    review = BreakGlassReview(audit_id=audit_id, reviewer_id=reviewer.user_id,
                              reviewer_name=reviewer.username, outcome=outcome, note=note)
    session.add(review)
    record(session, reviewer, "update", Target("audit:break-glass", reviewer.org_id,
                                               id=str(audit_id)),
           decision=Decision(True, f"break-the-glass review: {outcome}"),
           detail={"outcome": outcome, "note": note})
    session.flush()
    return review
