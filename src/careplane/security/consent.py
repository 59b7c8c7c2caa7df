"""Patients' consent directives, enforced by the access policy.

A directive is what a FHIR R4 ``Consent`` with scope ``patient-privacy`` (or ``research``)
says, kept in ``consent_directive`` / ``consent_provision`` so the policy can find the rules
for one patient with a single indexed query. Directives are written through
:func:`record_consent` (careplane's own API) or :func:`from_fhir` (the records domain hands
over each Consent resource it stores, so the FHIR resource and the enforced rules never drift).

How FHIR elements map onto the rules (anything that cannot be enforced is reported back, never
silently widened):

* ``provision.type`` → permit or deny; nested ``provision`` → exceptions to their parent;
* ``provision.actor.reference`` ``Organization/<careplane org id or slug>`` → that
  organisation; an identifier with system ``urn:careplane:user`` → that user (by username);
  ``actor.role`` codings with system ``urn:careplane:role`` → a careplane role;
* ``provision.purpose`` → HL7 v3 PurposeOfUse codes (``TREAT``, ``HRESCH``, ``ETREAT`` ...);
* ``provision.class`` → FHIR resource types (``records:<Type>``) or, with system
  ``urn:careplane:kind``, any careplane kind (``imaging:*``);
* ``provision.securityLabel`` → labels (``PSY``, ``ETH``, ``HIV`` ...) carried by targets;
* ``provision.action`` → ``access`` (read, search), ``use`` (read, search, export),
  ``disclose`` (export), ``correct`` (update), ``collect`` (create);
* ``provision.period`` → when the rule holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    bindparam,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql import FromClause

from careplane.platform.db import (
    MISSING,
    Base,
    JSONType,
    UTCDateTime,
    new_id,
    recall,
    remember,
    utcnow,
)
from careplane.security._principal import Role
from careplane.security.actions import Action
from careplane.security.models import Organisation, User
from careplane.security.policy import ConsentRule

__all__ = ["RULE_COLUMNS", "ConsentDirective", "ConsentError", "ConsentProvision", "Provision",
           "deactivate_consent", "from_fhir", "list_consents", "record_consent",
           "remember_rules", "rule_of", "rules_for", "sync_fhir", "with_rules"]

ENFORCED_SCOPES = frozenset({"patient-privacy", "research"})
_ACTION_CODES: dict[str, frozenset[Action]] = {
    "access": frozenset({Action.read, Action.search}),
    "use": frozenset({Action.read, Action.search, Action.export}),
    "disclose": frozenset({Action.export}),
    "correct": frozenset({Action.update}),
    "collect": frozenset({Action.create}),
}
_RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
_CAREPLANE_KIND = "urn:careplane:kind"
_CAREPLANE_ROLE = "urn:careplane:role"
_CAREPLANE_USER = "urn:careplane:user"


class ConsentError(ValueError):
    """A consent that cannot be recorded as asked; the message says which element."""


class ConsentDirective(Base):
    __tablename__ = "consent_directive"
    __table_args__ = (UniqueConstraint("org_id", "source_ref"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id", ondelete="CASCADE"))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), default="active")
    scope: Mapped[str] = mapped_column(String(32), default="patient-privacy")
    source_ref: Mapped[str | None] = mapped_column(String(100))  # "Consent/<id>" if from FHIR
    warnings: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentProvision(Base):
    __tablename__ = "consent_provision"
    # A search asks for its organisation's denials (records.access): by org and decision.
    __table_args__ = (Index("ix_consent_provision_org_id_decision", "org_id", "decision",
                            "patient_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    consent_id: Mapped[str] = mapped_column(
        ForeignKey("consent_directive.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(32))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(32))
    depth: Mapped[int] = mapped_column(Integer, default=0)
    decision: Mapped[str] = mapped_column(String(8))
    actor_user_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    actor_org_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    actor_roles: Mapped[list[str]] = mapped_column(JSONType, default=list)
    purposes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    data_classes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    actions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def as_rule(self) -> ConsentRule:
        return ConsentRule(
            id=self.id, consent_id=self.consent_id, patient_id=self.patient_id,
            decision=self.decision, parent_id=self.parent_id, depth=self.depth,
            actor_user_ids=frozenset(self.actor_user_ids),
            actor_org_ids=frozenset(self.actor_org_ids),
            actor_roles=frozenset(self.actor_roles), purposes=frozenset(self.purposes),
            data_classes=frozenset(self.data_classes),
            actions=frozenset(Action(a) for a in self.actions), start=self.start, end=self.end)


@dataclass
class Provision:
    """A provision to record (careplane's own API speaks this; FHIR is converted into it)."""

    decision: str
    actor_user_ids: list[str] = field(default_factory=list)
    actor_org_ids: list[str] = field(default_factory=list)
    actor_roles: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=list)
    data_classes: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    exceptions: list[Provision] = field(default_factory=list)


def _check(provision: Provision) -> None:
    if provision.decision not in ("permit", "deny"):
        raise ConsentError("provision type must be 'permit' or 'deny'")
    for role in provision.actor_roles:
        if role not in Role.__members__:
            raise ConsentError(f"unknown role {role!r}")
    for data_class in provision.data_classes:
        if not (data_class.startswith("label:") or data_class == "*" or ":" in data_class):
            raise ConsentError(f"data class {data_class!r} must be a kind or 'label:<code>'")
    if provision.start and provision.end and provision.end <= provision.start:
        raise ConsentError("a provision must end after it starts")


def _store(session: Session, directive: ConsentDirective, provision: Provision,
           parent: ConsentProvision | None, depth: int) -> None:
    _check(provision)
    row = ConsentProvision(
        id=new_id(), consent_id=directive.id, org_id=directive.org_id,
        patient_id=directive.patient_id, parent_id=parent.id if parent else None, depth=depth,
        decision=provision.decision, actor_user_ids=sorted(set(provision.actor_user_ids)),
        actor_org_ids=sorted(set(provision.actor_org_ids)),
        actor_roles=sorted(set(provision.actor_roles)),
        purposes=sorted(set(provision.purposes)),
        data_classes=sorted(set(provision.data_classes)),
        actions=sorted({Action(a).value for a in provision.actions}),
        start=provision.start, end=provision.end)
    session.add(row)
    for nested in provision.exceptions:
        _store(session, directive, nested, row, depth + 1)


def record_consent(session: Session, *, org_id: str, patient_id: str, provision: Provision,
                   status: str = "active", scope: str = "patient-privacy",
                   source_ref: str | None = None, created_by: str | None = None,
                   warnings: list[str] | None = None) -> ConsentDirective:
    """Record (or, for the same ``source_ref``, replace) a patient's consent directive."""
    if not patient_id or len(patient_id) > 64:
        raise ConsentError("the consent must name its patient")
    directive = None
    if source_ref is not None:
        directive = session.scalar(select(ConsentDirective).where(
            ConsentDirective.org_id == org_id, ConsentDirective.source_ref == source_ref))
    if directive is None:
        directive = ConsentDirective(id=new_id(), org_id=org_id, source_ref=source_ref,
                                     created_by=created_by)
        session.add(directive)
    else:
        for old in session.scalars(select(ConsentProvision).where(
                ConsentProvision.consent_id == directive.id)):
            session.delete(old)
    directive.patient_id = patient_id
    directive.status = status
    directive.scope = scope
    directive.warnings = list(warnings or [])
    directive.updated_at = utcnow()
    session.flush()
    if status == "active" and scope in ENFORCED_SCOPES:
        _store(session, directive, provision, None, 0)
    session.flush()
    return directive


def deactivate_consent(session: Session, consent_id: str, *, org_id: str) -> bool:
    directive = session.get(ConsentDirective, consent_id)
    if directive is None or directive.org_id != org_id:
        return False
    directive.status = "inactive"
    directive.updated_at = utcnow()
    for row in session.scalars(select(ConsentProvision).where(
            ConsentProvision.consent_id == consent_id)):
        session.delete(row)
    return True


def list_consents(session: Session, org_id: str, patient_id: str | None = None
                  ) -> list[ConsentDirective]:
    query = select(ConsentDirective).where(ConsentDirective.org_id == org_id)
    if patient_id is not None:
        query = query.where(ConsentDirective.patient_id == patient_id)
    return list(session.scalars(query.order_by(ConsentDirective.updated_at.desc()).limit(500)))


#: What a :class:`ConsentRule` is read from (:func:`rule_of`), in this order.
RULE_COLUMNS = (ConsentProvision.id, ConsentProvision.consent_id, ConsentProvision.patient_id,
                 ConsentProvision.decision, ConsentProvision.parent_id, ConsentProvision.depth,
                 ConsentProvision.actor_user_ids, ConsentProvision.actor_org_ids,
                 ConsentProvision.actor_roles, ConsentProvision.purposes,
                 ConsentProvision.data_classes, ConsentProvision.actions,
                 ConsentProvision.start, ConsentProvision.end)


def _rules_query(*, by_org: bool) -> Executable:
    p = ConsentProvision
    query = select(*RULE_COLUMNS).where(p.patient_id == bindparam("patient"))
    return query.where(p.org_id == bindparam("org")) if by_org else query


# Built once: this runs on every request that touches a patient.
_RULES = {True: _rules_query(by_org=True), False: _rules_query(by_org=False)}


def with_rules(left: FromClause, patient_id: ColumnElement[Any], org_id: ColumnElement[Any]
               ) -> FromClause:
    """``left`` outer-joined to the enforced provisions of the patient ``patient_id`` in
    ``org_id`` (columns of ``left``), whose :data:`RULE_COLUMNS` :func:`rule_of` reads: for
    a statement that fetches a patient's rules together with rows of its own."""
    return left.outerjoin(ConsentProvision.__table__,
                          (ConsentProvision.patient_id == patient_id)
                          & (ConsentProvision.org_id == org_id))


def rule_of(r: Sequence[Any]) -> ConsentRule:
    """The :class:`ConsentRule` of a row whose first columns are :data:`RULE_COLUMNS`."""
    return ConsentRule(
        id=r[0], consent_id=r[1], patient_id=r[2], decision=r[3], parent_id=r[4], depth=r[5],
        actor_user_ids=frozenset(r[6]), actor_org_ids=frozenset(r[7]),
        actor_roles=frozenset(r[8]), purposes=frozenset(r[9]), data_classes=frozenset(r[10]),
        actions=frozenset(Action(a) for a in r[11]), start=r[12], end=r[13])


def remember_rules(session: Session, org_id: str, patient_id: str,
                   rules: tuple[ConsentRule, ...]) -> None:
    """Hand :func:`rules_for` the provisions of this patient in ``org_id``, read ahead."""
    remember(session, ("consents", org_id, patient_id), rules)


def rules_for(session: Session, org_id: str | None, patient_id: str) -> tuple[ConsentRule, ...]:
    """Every enforced provision of this patient's active consents (one indexed query, or
    none when they were read ahead)."""
    if org_id is not None:
        ahead = recall(session, ("consents", org_id, patient_id))
        if ahead is not MISSING:
            return ahead
    query = _RULES[org_id is not None]
    params = {"patient": patient_id, "org": org_id} if org_id is not None \
        else {"patient": patient_id}
    # Plain rows, not ORM objects: this runs on every request that touches a patient.
    return tuple(rule_of(r) for r in session.execute(query, params))


# --- FHIR R4 Consent ------------------------------------------------------------------------


def _codings(value: Any) -> list[Mapping[str, Any]]:
    """Codings of a Coding, a CodeableConcept or a list of either."""
    items = value if isinstance(value, list) else [value] if value else []
    out: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "coding" in item and isinstance(item["coding"], list):
            out.extend(c for c in item["coding"] if isinstance(c, Mapping))
        else:
            out.append(item)
    return out


_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def _instant(value: Any, where: str, *, end: bool = False) -> datetime | None:
    """A FHIR dateTime as an instant. A date alone (``2016``, ``2016-01``, ``2016-01-01``,
    read in UTC) stands for its whole year, month or day: a period's start is its first
    instant, a period's end (exclusive in the policy) the first instant after it."""
    if value is None:
        return None
    partial = _PARTIAL_DATE.fullmatch(str(value))
    if partial:
        year, month, day = (int(g) if g else None for g in partial.groups())
        try:
            first = datetime(year or 1, month or 1, day or 1, tzinfo=UTC)
        except ValueError as exc:
            raise ConsentError(f"{where}: {value!r} is not a date") from exc
        if not end:
            return first
        if day is not None:
            return first + timedelta(days=1)
        if month is not None:
            return first.replace(year=first.year + (month == 12), month=month % 12 + 1)
        return first.replace(year=first.year + 1)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConsentError(f"{where}: {value!r} is not a FHIR dateTime") from exc
    if parsed.tzinfo is None:
        raise ConsentError(f"{where}: {value!r} needs a time zone")
    return parsed


def _provision(session: Session, element: Mapping[str, Any], where: str,
               warnings: list[str]) -> Provision:
    decision = element.get("type")
    if decision not in ("permit", "deny"):
        raise ConsentError(f"{where}.type must be 'permit' or 'deny'")
    out = Provision(decision=decision)
    unresolved = False
    for i, actor in enumerate(element.get("actor") or []):
        if not isinstance(actor, Mapping):
            raise ConsentError(f"{where}.actor[{i}] must be an object")
        resolved = False
        for coding in _codings(actor.get("role")):
            if coding.get("system") == _CAREPLANE_ROLE and coding.get("code") in \
                    Role.__members__:
                out.actor_roles.append(str(coding["code"]))
                resolved = True
        reference = actor.get("reference") or {}
        ref = str(reference.get("reference") or "") if isinstance(reference, Mapping) else ""
        identifier = reference.get("identifier") if isinstance(reference, Mapping) else None
        if ref.startswith("Organization/"):
            key = ref.split("/", 1)[1]
            org = session.get(Organisation, key) or session.scalar(
                select(Organisation).where(Organisation.slug == key))
            if org is not None:
                out.actor_org_ids.append(org.id)
                resolved = True
        elif isinstance(identifier, Mapping) and identifier.get("system") == _CAREPLANE_USER:
            user = session.scalar(select(User).where(User.username == identifier.get("value")))
            if user is not None:
                out.actor_user_ids.append(user.id)
                resolved = True
        if not resolved:
            unresolved = True
            warnings.append(f"{where}.actor[{i}] names nobody careplane knows" + (
                "; the deny applies to everyone" if decision == "deny" else "; ignored"))
    if unresolved and decision == "deny":
        # Fail closed: a patient's refusal aimed at someone we cannot identify is applied to
        # everyone (break-the-glass remains for emergencies) rather than to no-one.
        out.actor_user_ids, out.actor_org_ids, out.actor_roles = [], [], []
    if unresolved and decision == "permit" and not (
            out.actor_user_ids or out.actor_org_ids or out.actor_roles):
        # ... and a permit for someone unknown permits no-one.
        out.actor_user_ids = ["<unresolved>"]
    for coding in _codings(element.get("purpose")):
        if coding.get("code"):
            out.purposes.append(str(coding["code"]))
    for coding in _codings(element.get("class")):
        system, code = coding.get("system"), coding.get("code")
        if not code:
            continue
        if system == _CAREPLANE_KIND:
            out.data_classes.append(str(code))
        elif system in (_RESOURCE_TYPES, None):
            out.data_classes.append(f"records:{code}")
        else:
            warnings.append(f"{where}.class {system}|{code} is not understood; ignored")
    for coding in _codings(element.get("securityLabel")):
        if coding.get("code"):
            out.data_classes.append(f"label:{coding['code']}")
    for coding in _codings(element.get("action")):
        actions = _ACTION_CODES.get(str(coding.get("code")))
        if actions is None:
            warnings.append(f"{where}.action {coding.get('code')!r} is not understood; "
                            "the provision applies to every action")
            out.actions = []
            break
        out.actions.extend(actions)
    period = element.get("period") or {}
    if isinstance(period, Mapping):
        out.start = _instant(period.get("start"), f"{where}.period.start")
        out.end = _instant(period.get("end"), f"{where}.period.end", end=True)
    if element.get("data") or element.get("dataPeriod") or element.get("code"):
        warnings.append(f"{where}: data, dataPeriod and code are not enforced")
    for i, nested in enumerate(element.get("provision") or []):
        if not isinstance(nested, Mapping):
            raise ConsentError(f"{where}.provision[{i}] must be an object")
        out.exceptions.append(_provision(session, nested, f"{where}.provision[{i}]", warnings))
    return out


def from_fhir(session: Session, org_id: str, resource: Mapping[str, Any], *,
              created_by: str | None = None) -> ConsentDirective:
    """Record what a FHIR R4 Consent resource says (replacing its previous version).

    Returns the directive; ``directive.warnings`` lists what could not be enforced.
    """
    if resource.get("resourceType") != "Consent":
        raise ConsentError("resourceType must be Consent")
    patient_ref = (resource.get("patient") or {}).get("reference", "") \
        if isinstance(resource.get("patient"), Mapping) else ""
    if not str(patient_ref).startswith("Patient/"):
        raise ConsentError("Consent.patient must reference a Patient")
    status = str(resource.get("status") or "")
    if status not in ("draft", "proposed", "active", "rejected", "inactive",
                      "entered-in-error"):
        raise ConsentError("Consent.status is missing or not a Consent status code")
    scopes = {str(c.get("code")) for c in _codings(resource.get("scope"))}
    scope = next(iter(sorted(scopes & ENFORCED_SCOPES)), next(iter(sorted(scopes)), "other"))
    warnings: list[str] = []
    element = resource.get("provision")
    if isinstance(element, Mapping):
        provision = _provision(session, element, "Consent.provision", warnings)
    elif status == "active" and scope in ENFORCED_SCOPES:
        raise ConsentError("an active privacy Consent needs a provision")
    else:
        provision = Provision(decision="permit")
    source_ref = f"Consent/{resource['id']}" if resource.get("id") else None
    return record_consent(session, org_id=org_id, patient_id=str(patient_ref).split("/", 1)[1],
                          provision=provision, status=status, scope=scope,
                          source_ref=source_ref, created_by=created_by, warnings=warnings)


def sync_fhir(session: Session, *, org_id: str, rid: str,
              resource: Mapping[str, Any] | None) -> ConsentDirective | None:
    """Make the enforced rules say what FHIR ``Consent/<rid>`` says now, in the caller's
    transaction (the records store calls this with every Consent it writes).

    A new or changed version is recorded (replacing the rules of the previous one); a deleted
    one (``resource`` None) is withdrawn. A privacy or research Consent that cannot be enforced
    raises :class:`ConsentError`, so the write fails rather than store a refusal nobody
    enforces. A Consent of another scope (treatment, advance directive) is stored by FHIR
    alone (and a version that leaves the privacy scope withdraws the rules).
    """
    source_ref = f"Consent/{rid}"
    if resource is not None and {str(c.get("code")) for c in _codings(
            resource.get("scope"))} & ENFORCED_SCOPES:
        return from_fhir(session, org_id, {**resource, "id": rid})
    directive = session.scalar(select(ConsentDirective).where(
        ConsentDirective.org_id == org_id, ConsentDirective.source_ref == source_ref))
    if directive is not None:
        deactivate_consent(session, directive.id, org_id=org_id)
    return None
