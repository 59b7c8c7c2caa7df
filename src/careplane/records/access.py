"""The records side of the access decision: describe the target, let security decide.

Every FHIR interaction passes through :func:`check`, which builds the
``Target(kind="records:<Type>", org_id, id, patient_id)`` of what is touched and calls
``careplane.security.guard.authorize`` (which decides and writes the audit record). A refusal
comes back as a :class:`FhirError` so that it reaches the client as an OperationOutcome, inside
a batch entry as much as on a plain request. No access rule is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from sqlalchemy import ColumnElement, Select, String, and_, cast, not_, or_, select, union_all
from sqlalchemy.orm import Session

from careplane.platform.db import utcnow
from careplane.records.errors import FhirError
from careplane.security import Principal, Role
from careplane.security.consent import RULE_COLUMNS, ConsentProvision, rule_of, rules_for
from careplane.security.grants import grants_for
from careplane.security.guard import authorize
from careplane.security.policy import (
    Action,
    ConsentRule,
    Decision,
    Facts,
    Grant,
    Target,
    decide,
    default_purpose,
)

__all__ = ["Action", "Opening", "Reach", "check", "labels_of", "reach_of", "target"]

SOURCE = "fhir"
#: At most this many patients (or organisations) opened to one caller are honoured per search.
_MAX_OPENINGS = 500


def labels_of(content: dict[str, Any] | None) -> frozenset[str]:
    """The resource's security labels (``meta.security`` codes: PSY, ETH, HIV, R, V...)."""
    meta = content.get("meta") if isinstance(content, dict) else None
    security = meta.get("security") if isinstance(meta, dict) else None
    if not isinstance(security, list):
        return frozenset()
    return frozenset(c["code"] for c in security
                     if isinstance(c, dict) and isinstance(c.get("code"), str))


def target(resource_type: str, org_id: str | None, id: str | None = None,
           patient_id: str | None = None, content: dict[str, Any] | None = None) -> Target:
    """The Target of one resource; ``content`` gives its security labels to the policy."""
    return Target(kind=f"records:{resource_type}", org_id=org_id, id=id, patient_id=patient_id,
                  labels=labels_of(content))


def check(session: Session, principal: Principal, action: Action, what: Target, *,
          detail: dict[str, Any] | None = None) -> None:
    """Authorise (and audit) ``action`` on ``what``, or raise FhirError 403."""
    try:
        authorize(session, principal, action, what, source=SOURCE, detail=detail)
    except HTTPException as exc:
        raise FhirError.of(exc.status_code, "forbidden", str(exc.detail)) from None


# -- what a search may reach beyond the caller's organisation -------------------------------

@dataclass(frozen=True, slots=True)
class Opening:
    """Records of another organisation that the policy lets the caller search.

    ``patient_id`` None opens the whole organisation (a grant that names no patient), less
    the patients in ``hidden_patients`` (whose consent refuses the caller). ``hidden_labels``
    are (patient, security label) pairs a consent refuses: that patient's resources carrying
    the label stay out of the results.
    """

    org_id: str
    patient_id: str | None
    hidden_patients: frozenset[str] = frozenset()
    hidden_labels: tuple[tuple[str, str], ...] = ()
    via: str = ""


@dataclass
class Reach:
    """The other organisations' records one principal may search, per resource type.

    Built once per search from the grants and consents that could admit the caller; for each
    resource type the policy (``security.policy.decide``) is asked, per granted patient or
    organisation, whether a search of that type there is allowed, with the patient's
    consents as facts, so a consent deny beats a grant exactly as it does on a read. Nothing
    is decided here that the policy does not decide.

    ``own`` holds the consents of the caller's own organisation's patients that have a deny
    which may concern the caller: :meth:`own_opening` asks the policy about each of them, so
    a patient whose consent refuses the caller (or their organisation, role or purpose) stays
    out of the caller's own searches too, and a deny of a security label hides that
    patient's labelled resources only.
    """

    principal: Principal
    grants: tuple[Grant, ...] = ()
    patients: tuple[tuple[str, str], ...] = ()       # (org, patient) that grants/consents name
    whole_orgs: tuple[str, ...] = ()                 # orgs granted without a patient
    consents: dict[tuple[str, str], tuple[ConsentRule, ...]] = field(default_factory=dict)
    own: dict[str, tuple[ConsentRule, ...]] = field(default_factory=dict)
    _cache: dict[str, tuple[Opening, ...]] = field(default_factory=dict)
    _own_cache: dict[tuple[str, str | None, str | None], bool] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing of another organisation is open (the caller's own may still be narrowed)."""
        return not self.patients and not self.whole_orgs

    def _own_refuses(self, resource_type: str, patient: str, label: str | None) -> bool:
        """Whether the patient's consent refuses the caller a search of ``resource_type``
        (carrying ``label``) in their own organisation. The answer for a type the patient's
        consents do not name is the same for every such type, so it is asked once."""
        rules = self.own[patient]
        named = {c[8:] for rule in rules for c in rule.data_classes
                 if c.startswith("records:") and c != "records:*"}
        key = (patient, resource_type if resource_type in named else None, label)
        refused = self._own_cache.get(key)
        if refused is None:
            decision = decide(self.principal, Action.search, Target(
                kind=f"records:{resource_type}", org_id=self.principal.org_id,
                patient_id=patient, labels=frozenset({label}) if label else frozenset()),
                facts=Facts(consents=rules))
            # break-the-glass opens single reads, never a search
            refused = not decision.allowed or decision.break_glass
            self._own_cache[key] = refused
        return refused

    def own_opening(self, resource_type: str) -> Opening:
        """The caller's own organisation for ``resource_type``, less what consents refuse."""
        hidden: set[str] = set()
        labels: list[tuple[str, str]] = []
        for patient, rules in self.own.items():
            if self._own_refuses(resource_type, patient, None):
                hidden.add(patient)
                continue
            named = sorted({c[6:] for rule in rules for c in rule.data_classes
                            if c.startswith("label:")})
            labels += [(patient, label) for label in named
                       if self._own_refuses(resource_type, patient, label)]
        return Opening(self.principal.org_id, None, frozenset(hidden), tuple(labels))

    def _allowed(self, kind: str, org: str, patient: str | None,
                 labels: frozenset[str] = frozenset()) -> Decision:
        rules = self.consents.get((org, patient), ()) if patient else ()
        facts = Facts(grants=self.grants, consents=rules)
        decision = decide(self.principal, Action.search,
                          Target(kind=kind, org_id=org, patient_id=patient, labels=labels),
                          facts=facts)
        if decision.break_glass:
            # Break-the-glass opens one record a clinician reads, audited for review; it
            # never widens a search to the records a consent refuses.
            return Decision(False, "break-the-glass does not widen a search",
                            purpose=decision.purpose, consent_id=decision.consent_id)
        return decision

    def _hidden_labels(self, kind: str, org: str, patient: str) -> tuple[tuple[str, str], ...]:
        labels = sorted({c[6:] for rule in self.consents.get((org, patient), ())
                         for c in rule.data_classes if c.startswith("label:")})
        return tuple((patient, label) for label in labels
                     if not self._allowed(kind, org, patient, frozenset({label})).allowed)

    def openings(self, resource_type: str) -> tuple[Opening, ...]:
        """Where, outside the caller's organisation, ``resource_type`` may be searched."""
        cached = self._cache.get(resource_type)
        if cached is not None:
            return cached
        kind = f"records:{resource_type}"
        out: list[Opening] = []
        for org in self.whole_orgs:
            decision = self._allowed(kind, org, None)
            if not decision.allowed:
                continue
            hidden: set[str] = set()
            labels: list[tuple[str, str]] = []
            for p_org, patient in self.consents:
                if p_org != org:
                    continue
                if not self._allowed(kind, org, patient).allowed:
                    hidden.add(patient)
                else:
                    labels += self._hidden_labels(kind, org, patient)
            out.append(Opening(org, None, frozenset(hidden), tuple(labels),
                               _via(decision)))
        for org, patient in self.patients:
            if org in self.whole_orgs:
                continue  # already open (and its consents applied) above
            decision = self._allowed(kind, org, patient)
            if decision.allowed:
                out.append(Opening(org, patient, hidden_labels=self._hidden_labels(
                    kind, org, patient), via=_via(decision)))
        self._cache[resource_type] = result = tuple(out)
        return result


def _via(decision: Decision) -> str:
    if decision.grant_id:
        return f"grant {decision.grant_id}"
    if decision.consent_id:
        return f"consent {decision.consent_id}"
    return decision.reason


def _records_kind(kind: str) -> bool:
    return kind in ("*", "records:*") or kind.startswith("records:")


# a provision's rule (consent.rule_of reads the first columns) and its organisation
_RULE_COLUMNS = (*RULE_COLUMNS, ConsentProvision.org_id)


def _names(column: Any, value: str) -> ColumnElement[bool]:
    return cast(column, String).like(f'%"{value}"%')


def _empty(column: Any) -> ColumnElement[bool]:
    return not_(cast(column, String).like('%"%'))


def _own_rules(principal: Principal) -> Select[*tuple[Any, ...]]:
    """Every provision of the caller's organisation's patients who have a live deny that may
    concern the caller: one naming nobody, or their user, organisation or one of their
    roles, for any purpose or theirs (the policy decides the rest: classes, labels, nesting).
    """
    p = ConsentProvision
    now = utcnow()
    actors = [and_(_empty(p.actor_user_ids), _empty(p.actor_org_ids), _empty(p.actor_roles)),
              _names(p.actor_org_ids, principal.org_id)]
    if principal.user_id:
        actors.append(_names(p.actor_user_ids, principal.user_id))
    actors += [_names(p.actor_roles, role.value) for role in sorted(principal.roles)]
    purposes = [_empty(p.purposes), _names(p.purposes, default_purpose(principal))]
    denying = select(p.patient_id).where(
        p.org_id == principal.org_id, p.decision == "deny", or_(*actors), or_(*purposes),
        or_(p.start.is_(None), p.start <= now), or_(p.end.is_(None), p.end > now))
    return select(*_RULE_COLUMNS).where(p.org_id == principal.org_id,
                                        p.patient_id.in_(denying))


def reach_of(session: Session, principal: Principal, *, other_orgs: bool = True) -> Reach:
    """What the policy lets ``principal`` search: the consents that narrow their own
    organisation and (``other_orgs``) the grants and consents that open other organisations'.

    A fixed number of queries: the live grants; one for the permit provisions that name the
    caller (or their organisation) together with the consents of their own organisation's
    patients that have a deny which may concern the caller; the patients with a deny in a
    wholly granted organisation; then the consents of each other organisation's patient
    named (bounded by the grants and consents, not by results). A patient (or an app
    launched for one) searches only their own compartment, so reaches no other organisation.
    """
    own: dict[str, list[ConsentRule]] = {}
    patient_only = principal.patient_id is not None or Role.patient in principal.roles
    if not other_orgs or patient_only:
        for row in session.execute(_own_rules(principal)):
            own.setdefault(row.patient_id, []).append(rule_of(row))
        return Reach(principal, own={k: tuple(v) for k, v in own.items()})
    grants = tuple(g for g in grants_for(session, principal, None)
                   if g.grantor_org_id != principal.org_id and not g.deidentified_only
                   and g.workspace_id is None and any(_records_kind(k) for k in g.kinds))
    patients: dict[tuple[str, str], None] = {}
    whole: dict[str, None] = {}
    for g in grants:
        if g.patient_id is None:
            whole[g.grantor_org_id] = None
        else:
            patients[(g.grantor_org_id, g.patient_id)] = None
    p = ConsentProvision
    named = [_names(p.actor_org_ids, principal.org_id)]
    if principal.user_id:
        named.append(_names(p.actor_user_ids, principal.user_id))
    permits = (select(*_RULE_COLUMNS)
               .where(p.decision == "permit", p.org_id != principal.org_id, or_(*named))
               .limit(_MAX_OPENINGS).subquery())
    for row in session.execute(union_all(select(*permits.c), _own_rules(principal))):
        if row.org_id == principal.org_id:
            own.setdefault(row.patient_id, []).append(rule_of(row))
        elif principal.org_id in row.actor_org_ids or (
                principal.user_id and principal.user_id in row.actor_user_ids):
            patients[(row.org_id, row.patient_id)] = None
    if whole:
        for org, patient in session.execute(
                select(p.org_id, p.patient_id).distinct()
                .where(p.org_id.in_(list(whole)), p.decision == "deny")
                .limit(_MAX_OPENINGS)):
            patients.setdefault((org, patient), None)
    consents = {(org, patient): rules_for(session, org, patient) for org, patient in
                list(patients)[:_MAX_OPENINGS]}
    return Reach(principal, grants, tuple(patients), tuple(whole), consents,
                 {k: tuple(v) for k, v in own.items()})
