"""The one access decision every request passes.

``decide`` answers "may this principal do this action on this target, for this purpose?" from
who is asking (roles, organisation, token scopes, linked patient, a stated emergency) and what
is touched (kind, owning organisation, patient, de-identification, workspace, labels), together
with the facts the guard loads for it (cross-organisation grants and the patient's consents).
Domains describe their targets with :class:`Target` and never decide on their own.

The order of the checks is the order of precedence:

1. **roles** — what each role may do in each domain (``_ROLE_RIGHTS``), under the role's own
   condition: a patient only on their own records, a researcher only on de-identified data that
   was granted to them (their user, organisation or workspace);
2. **scopes** — an OAuth2 client's token narrows what the roles allow (SMART scopes);
3. **organisation** — another organisation's data needs an explicit grant (or the patient's
   permit consent naming the caller);
4. **consent** — a matching *deny* provision refuses, whatever grants or permits say;
5. **break-the-glass** — a clinician who states a reason may read past a consent deny; the
   decision is flagged, audited as such and listed for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from careplane.platform.db import utcnow
from careplane.security._principal import Principal, Role
from careplane.security.actions import READS, WRITES, Action
from careplane.security.scopes import ScopeError, ScopeSet

__all__ = ["READS", "WRITES", "AccessDenied", "Action", "ConsentRule", "Decision", "Facts",
           "Grant", "Purpose", "Target", "decide", "default_purpose", "enforce"]


class Purpose:
    """HL7 v3 PurposeOfUse codes the policy knows by name."""

    treatment = "TREAT"
    emergency = "ETREAT"
    research = "HRESCH"
    operations = "HOPERAT"
    patient_request = "PATRQT"


@dataclass(frozen=True)
class Target:
    """What is touched: ``kind`` is ``domain:type`` (``records:Observation``, ``imaging:study``).

    ``deidentified`` marks data stripped of identifiers (what a researcher may see);
    ``workspace_id`` names the research workspace it was shared into; ``labels`` are security
    labels (``PSY``, ``ETH``, ``HIV``...) that consents can name as a data class.
    """

    kind: str
    org_id: str | None
    id: str | None = None
    patient_id: str | None = None
    deidentified: bool = False
    workspace_id: str | None = None
    labels: frozenset[str] = frozenset()

    @property
    def domain(self) -> str:
        return self.kind.split(":", 1)[0]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    break_glass: bool = False
    purpose: str | None = None
    grant_id: str | None = None
    consent_id: str | None = None


class AccessDenied(PermissionError):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


@dataclass(frozen=True)
class Grant:
    """An explicit permission for someone outside the owning organisation (or a workspace)."""

    id: str
    grantor_org_id: str
    kinds: tuple[str, ...]  # "records:Observation", "imaging:*", "*"
    actions: frozenset[Action]
    grantee_org_id: str | None = None
    grantee_user_id: str | None = None
    workspace_id: str | None = None
    patient_id: str | None = None
    deidentified_only: bool = False
    valid_from: datetime | None = None
    valid_until: datetime | None = None

    def covers(self, principal: Principal, action: Action, target: Target,
               now: datetime) -> bool:
        if target.org_id is not None and target.org_id != self.grantor_org_id:
            return False
        if self.grantee_user_id is not None and self.grantee_user_id != principal.user_id:
            return False
        if self.grantee_org_id is not None and self.grantee_org_id != principal.org_id:
            return False
        if self.workspace_id is not None and self.workspace_id != target.workspace_id:
            return False
        if self.patient_id is not None and self.patient_id != target.patient_id:
            return False
        if self.deidentified_only and not target.deidentified:
            return False
        if not _within(now, self.valid_from, self.valid_until):
            return False
        return action in self.actions and any(_kind_matches(k, target.kind) for k in self.kinds)


@dataclass(frozen=True)
class ConsentRule:
    """One provision of a patient's consent (FHIR Consent.provision), flattened.

    Empty sets mean "any": a deny with no actors, purposes, classes or actions refuses
    everything to everyone except the patient themself. Nested provisions are exceptions to
    their parent (``parent_id``): within one consent the deepest provision that matches (with
    all its ancestors) gives that consent's answer; across consents a deny beats a permit.
    """

    id: str
    consent_id: str
    patient_id: str
    decision: str  # "permit" | "deny"
    parent_id: str | None = None
    depth: int = 0
    actor_user_ids: frozenset[str] = frozenset()
    actor_org_ids: frozenset[str] = frozenset()
    actor_roles: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    data_classes: frozenset[str] = frozenset()  # "records:Observation", "imaging:*", "label:PSY"
    actions: frozenset[Action] = frozenset()
    start: datetime | None = None
    end: datetime | None = None

    def applies(self, principal: Principal, action: Action, target: Target, purpose: str,
                now: datetime) -> bool:
        if target.patient_id != self.patient_id:
            return False
        if not _within(now, self.start, self.end):
            return False
        if (self.actor_user_ids or self.actor_org_ids or self.actor_roles) and not (
                principal.user_id in self.actor_user_ids
                or principal.org_id in self.actor_org_ids
                or any(role.value in self.actor_roles for role in principal.roles)):
            return False
        if self.purposes and purpose not in self.purposes:
            return False
        if self.actions and action not in self.actions:
            return False
        return not self.data_classes or any(
            (c.startswith("label:") and c[6:] in target.labels) or _kind_matches(c, target.kind)
            for c in self.data_classes)


@dataclass(frozen=True)
class Facts:
    """What the guard looked up for one decision (the policy itself reads no database)."""

    grants: tuple[Grant, ...] = ()
    consents: tuple[ConsentRule, ...] = ()
    now: datetime = field(default_factory=utcnow)


def _within(now: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or start <= now) and (end is None or now < end)


def _kind_matches(pattern: str, kind: str) -> bool:
    if pattern in ("*", kind):
        return True
    return pattern.endswith(":*") and kind.startswith(pattern[:-1])


# Which roles may do what in each domain, inside their own organisation, before the roles'
# own conditions (patient: own records; researcher: de-identified and granted).
_CLINICAL = frozenset({Role.clinician, Role.radiologist, Role.psychiatrist, Role.admin,
                       Role.service})
_EMERGENCY_ROLES = frozenset({Role.clinician, Role.radiologist, Role.psychiatrist})
_ROLE_RIGHTS: dict[str, dict[Role, frozenset[Action]]] = {
    "records": {
        **{r: frozenset(Action) for r in _CLINICAL},
        Role.counsellor: READS | WRITES,
        Role.patient: READS,
        Role.researcher: READS | {Action.export},
    },
    "imaging": {
        **{r: frozenset(Action) for r in _CLINICAL},
        Role.patient: READS,
        Role.researcher: READS | {Action.export},
    },
    "genomics": {
        **{r: frozenset(Action) for r in _CLINICAL},
        Role.researcher: frozenset(Action),
    },
    "jobs": {r: frozenset(Action) for r in Role if r is not Role.patient},
    # Patients' consent directives: recorded by clinical staff, or by the patient themself.
    "consent": {
        **{r: READS | WRITES for r in _CLINICAL - {Role.service}},
        Role.counsellor: READS,
        Role.patient: READS | {Action.create, Action.update},
    },
    # careplane's own security objects (grants) and the audit trail: administrators only.
    "security": {Role.admin: frozenset(Action)},
    "audit": {Role.admin: READS | {Action.export, Action.update}},
}
# Domains whose data identifies patients: a researcher sees only de-identified, granted data.
_IDENTIFIABLE = frozenset({"records", "imaging"})


def _consent_answers(facts: Facts, principal: Principal, action: Action, target: Target,
                     purpose: str) -> list[ConsentRule]:
    """Each consent's answer for this access: its deepest matching provision, if any."""
    by_consent: dict[str, list[ConsentRule]] = {}
    for rule in facts.consents:
        by_consent.setdefault(rule.consent_id, []).append(rule)
    answers = []
    for rules in by_consent.values():
        index = {r.id: r for r in rules}
        matched = {r.id for r in rules if r.applies(principal, action, target, purpose,
                                                    facts.now)}

        def chain_matches(rule: ConsentRule, index: dict[str, ConsentRule] = index,
                          matched: set[str] = matched) -> bool:
            parent = rule.parent_id
            while parent is not None:
                if parent not in matched:
                    return False
                parent = index[parent].parent_id
            return True

        effective = [r for r in rules if r.id in matched and chain_matches(r)]
        if effective:
            answers.append(max(effective, key=lambda r: r.depth))
    return answers


def default_purpose(principal: Principal) -> str:
    """The purpose of use assumed when the caller states none, from its roles."""
    if principal.break_glass_reason:
        return Purpose.emergency
    if principal.roles & {Role.clinician, Role.radiologist, Role.psychiatrist,
                          Role.counsellor}:
        return Purpose.treatment
    if Role.researcher in principal.roles:
        return Purpose.research
    if Role.patient in principal.roles:
        return Purpose.patient_request
    return Purpose.operations


def _grant_for(principal: Principal, action: Action, target: Target,
               facts: Facts) -> Grant | None:
    return next((g for g in facts.grants if g.covers(principal, action, target, facts.now)),
                None)


def _role_condition(role: Role, principal: Principal, action: Action, target: Target,
                    facts: Facts) -> tuple[bool, Grant | None, str]:
    """Whether ``role`` admits this access under its own condition (and through which grant)."""
    if role is Role.patient:
        if target.patient_id is None or target.patient_id != principal.patient_id:
            return False, None, "a patient may only see their own records"
        return True, None, ""
    if role is Role.researcher and target.domain in _IDENTIFIABLE:
        if not target.deidentified:
            return False, None, "a researcher may only see de-identified data"
        grant = _grant_for(principal, action, target, facts)
        if grant is None:
            return False, None, "this de-identified data was not granted to you or your " \
                                "workspace"
        return True, grant, ""
    return True, None, ""


def decide(principal: Principal, action: Action, target: Target, *,
           purpose: str | None = None, facts: Facts | None = None) -> Decision:
    facts = facts or Facts()
    purpose = purpose or default_purpose(principal)

    def deny(reason: str) -> Decision:
        return Decision(False, reason, purpose=purpose)

    # 1. roles, each under its own condition
    rights = _ROLE_RIGHTS.get(target.domain, {})
    granting = [r for r in sorted(principal.roles) if action in rights.get(r, frozenset())]
    if not granting:
        return deny(f"your roles ({', '.join(sorted(principal.roles)) or 'none'}) may not "
                    f"{action.value} {target.kind}")
    grant: Grant | None = None
    refusals = []
    for role in granting:
        ok, via, why = _role_condition(role, principal, action, target, facts)
        if ok:
            grant = via
            break
        refusals.append(why)
    else:
        return deny("; ".join(refusals))

    # 2. an OAuth2 client's scopes narrow the roles
    if principal.client_id is not None:
        try:
            scopes = ScopeSet.parse(principal.scopes)
        except ScopeError:
            return deny("the token carries an invalid scope")
        patient_ok = target.patient_id is not None and target.patient_id == principal.patient_id
        if not scopes.permits(action, target.kind, patient_ok=patient_ok):
            return deny(f"the token's scopes do not permit {action.value} {target.kind}"
                        + ("" if patient_ok or target.patient_id is None
                           else " for this patient"))

    # 3. another organisation's data needs a grant (or the patient's permit naming you)
    consents = _consent_answers(facts, principal, action, target, purpose)
    permit = next((c for c in consents if c.decision == "permit"), None)
    if target.org_id is not None and target.org_id != principal.org_id and grant is None:
        grant = _grant_for(principal, action, target, facts)
        # Only a permit that names the caller (their user or organisation) opens another
        # organisation's record: "I agree to share" without a recipient opens nothing.
        named = permit is not None and (principal.user_id in permit.actor_user_ids
                                        or principal.org_id in permit.actor_org_ids)
        if grant is None and not (named and action in READS | {Action.export}):
            return deny(f"{target.kind} belongs to another organisation and no grant or "
                        "consent covers you")

    # 4. consent: a deny beats every permit and grant; the patient is never refused their own
    denial = next((c for c in consents if c.decision == "deny"), None)
    is_own = Role.patient in principal.roles and target.patient_id == principal.patient_id
    if denial is not None and not is_own:
        # 5. break-the-glass: a clinician's stated emergency opens reads, flagged for review
        if principal.break_glass_reason and principal.roles & _EMERGENCY_ROLES \
                and action in READS:
            return Decision(True, f"break-the-glass past consent {denial.consent_id}: "
                            f"{principal.break_glass_reason}", break_glass=True,
                            purpose=Purpose.emergency,
                            grant_id=grant.id if grant else None,
                            consent_id=denial.consent_id)
        return Decision(False, "the patient's consent refuses this access"
                        + (" (a clinician may state an emergency reason to override it)"
                           if principal.roles & _EMERGENCY_ROLES and action in READS else ""),
                        purpose=purpose, consent_id=denial.consent_id)

    if grant is not None:
        return Decision(True, f"granted by {grant.grantor_org_id} (grant {grant.id})",
                        purpose=purpose, grant_id=grant.id)
    if permit is not None and target.org_id is not None and target.org_id != principal.org_id:
        return Decision(True, f"the patient's consent {permit.consent_id} permits it",
                        purpose=purpose, consent_id=permit.consent_id)
    return Decision(True, "same organisation and role permits it", purpose=purpose)


def enforce(principal: Principal, action: Action, target: Target, *,
            purpose: str | None = None, facts: Facts | None = None) -> Decision:
    decision = decide(principal, action, target, purpose=purpose, facts=facts)
    if not decision.allowed:
        raise AccessDenied(decision)
    return decision
