"""Explicit access grants: what one organisation lets another (or a user, or a workspace) do.

A grant is the only way across organisations besides a patient's own permit consent, and the
only way a researcher reaches de-identified records or images. Grants never override a
patient's deny consent (:mod:`careplane.security.policy`). Revoking keeps the row, so the
audit trail can always say which grant an access went through.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, Text, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from careplane.platform.db import Base, JSONType, UTCDateTime, new_id, utcnow
from careplane.security._principal import Principal
from careplane.security.actions import Action
from careplane.security.identity import IdentityError
from careplane.security.policy import Grant

__all__ = ["AccessGrant", "create_grant", "grants_for", "list_grants", "revoke_grant"]


class AccessGrant(Base):
    __tablename__ = "auth_grant"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    grantor_org_id: Mapped[str] = mapped_column(
        ForeignKey("organisation.id", ondelete="CASCADE"), index=True)
    grantee_org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organisation.id", ondelete="CASCADE"), index=True)
    grantee_user_id: Mapped[str | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    workspace_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    kinds: Mapped[list[str]] = mapped_column(JSONType, default=list)
    actions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    deidentified_only: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def as_policy(self) -> Grant:
        return Grant(id=self.id, grantor_org_id=self.grantor_org_id, kinds=tuple(self.kinds),
                     actions=frozenset(Action(a) for a in self.actions),
                     grantee_org_id=self.grantee_org_id, grantee_user_id=self.grantee_user_id,
                     workspace_id=self.workspace_id, patient_id=self.patient_id,
                     deidentified_only=self.deidentified_only, valid_from=self.valid_from,
                     valid_until=self.valid_until)


def _check_kind(kind: str) -> str:
    domain, sep, type_ = kind.partition(":")
    if kind == "*" or (sep and domain.isalpha() and domain.islower() and type_):
        return kind
    raise IdentityError(f"kind {kind!r} must be '*' or 'domain:type' (type may be '*')")


def create_grant(session: Session, *, grantor_org_id: str, kinds: list[str],
                 actions: list[Action], grantee_org_id: str | None = None,
                 grantee_user_id: str | None = None, workspace_id: str | None = None,
                 patient_id: str | None = None, deidentified_only: bool = False,
                 valid_from: datetime | None = None, valid_until: datetime | None = None,
                 reason: str = "", created_by: str | None = None) -> AccessGrant:
    if not (grantee_org_id or grantee_user_id):
        # A workspace only narrows a grant (to data shared into it); who may use it is always
        # named, so workspace membership never has to be trusted from the caller.
        raise IdentityError("a grant names its grantee: an organisation or a user")
    if not kinds or not actions:
        raise IdentityError("a grant names at least one kind and one action")
    if valid_from and valid_until and valid_until <= valid_from:
        raise IdentityError("a grant must end after it starts")
    row = AccessGrant(grantor_org_id=grantor_org_id, grantee_org_id=grantee_org_id,
                      grantee_user_id=grantee_user_id, workspace_id=workspace_id,
                      patient_id=patient_id, kinds=[_check_kind(k) for k in kinds],
                      actions=sorted(Action(a).value for a in actions),
                      deidentified_only=deidentified_only, valid_from=valid_from,
                      valid_until=valid_until, reason=reason, created_by=created_by)
    session.add(row)
    session.flush()
    return row


def revoke_grant(session: Session, grant_id: str, *, grantor_org_id: str) -> bool:
    row = session.get(AccessGrant, grant_id)
    if row is None or row.grantor_org_id != grantor_org_id:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return True


def list_grants(session: Session, org_id: str) -> list[AccessGrant]:
    """Grants an organisation gave or received, newest first."""
    return list(session.scalars(select(AccessGrant).where(or_(
        AccessGrant.grantor_org_id == org_id, AccessGrant.grantee_org_id == org_id))
        .order_by(AccessGrant.created_at.desc())))


def grants_for(session: Session, principal: Principal, grantor_org_id: str | None
               ) -> tuple[Grant, ...]:
    """The live grants that could admit ``principal`` to data of ``grantor_org_id``."""
    now = utcnow()
    query = select(AccessGrant).where(
        AccessGrant.revoked_at.is_(None),
        or_(AccessGrant.valid_until.is_(None), AccessGrant.valid_until > now),
        or_(AccessGrant.grantee_user_id == principal.user_id,
            AccessGrant.grantee_org_id == principal.org_id))
    if grantor_org_id is not None:
        query = query.where(AccessGrant.grantor_org_id == grantor_org_id)
    return tuple(row.as_policy() for row in session.scalars(query.limit(200)))
