"""The one access decision every request passes.

``decide`` answers "may this principal do this action on this target, for this purpose?" from
who is asking (roles, organisation, scopes) and what is touched (kind, owning organisation,
patient). Domains describe their targets with :class:`Target` and never decide on their own;
consent and break-the-glass refine the answer here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from careplane.security._principal import Principal, Role

__all__ = ["AccessDenied", "Action", "Decision", "Target", "decide", "enforce"]


class Action(StrEnum):
    read = "read"
    search = "search"
    create = "create"
    update = "update"
    delete = "delete"
    export = "export"
    execute = "execute"


READS = frozenset({Action.read, Action.search})
WRITES = frozenset({Action.create, Action.update, Action.delete})


@dataclass(frozen=True)
class Target:
    """What is touched: ``kind`` is ``domain:type`` (``records:Observation``, ``imaging:study``)."""

    kind: str
    org_id: str | None
    id: str | None = None
    patient_id: str | None = None

    @property
    def domain(self) -> str:
        return self.kind.split(":", 1)[0]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    break_glass: bool = False
    purpose: str | None = None


class AccessDenied(PermissionError):
    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


# Which roles may do what in each domain, inside their own organisation.
_CLINICAL = frozenset({Role.clinician, Role.radiologist, Role.psychiatrist, Role.admin,
                       Role.service})
_ROLE_RIGHTS: dict[str, dict[Role, frozenset[Action]]] = {
    "records": {
        **{r: frozenset(Action) for r in _CLINICAL},
        Role.counsellor: READS | WRITES,
    },
    "imaging": {
        **{r: frozenset(Action) for r in _CLINICAL},
    },
    "genomics": {
        **{r: frozenset(Action) for r in _CLINICAL},
        Role.researcher: frozenset(Action),
    },
    "jobs": {r: frozenset(Action) for r in Role if r is not Role.patient},
}


def decide(principal: Principal, action: Action, target: Target, *,
           purpose: str | None = None) -> Decision:
    rights = _ROLE_RIGHTS.get(target.domain, {})
    allowed_actions: set[Action] = set()
    for role in principal.roles:
        allowed_actions |= rights.get(role, frozenset())
    if action not in allowed_actions:
        return Decision(False, f"your roles ({', '.join(sorted(principal.roles))}) may not "
                        f"{action.value} {target.kind}", purpose=purpose)
    if target.org_id is not None and target.org_id != principal.org_id:
        return Decision(False, f"{target.kind} belongs to another organisation",
                        purpose=purpose)
    return Decision(True, "same organisation and role permits it", purpose=purpose)


def enforce(principal: Principal, action: Action, target: Target, *,
            purpose: str | None = None) -> Decision:
    decision = decide(principal, action, target, purpose=purpose)
    if not decision.allowed:
        raise AccessDenied(decision)
    return decision
