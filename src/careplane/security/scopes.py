"""SMART on FHIR scopes (App Launch 2.x, with the 1.x forms still accepted).

A resource scope is ``context/resource.permissions``:

* ``context`` is ``patient`` (only the patient in the launch context), ``user`` (whatever the
  signed-in user may see) or ``system`` (a backend service, whatever its account may see);
* ``resource`` is a FHIR type or ``*`` (all FHIR types), or, for careplane's other domains,
  ``domain:type`` / ``domain:*`` (``imaging:*``, ``genomics:*``, ``jobs:*``);
* ``permissions`` are the v2 letters ``c r u d s`` (in that order, any non-empty subset) or the
  v1 words ``read``, ``write``, ``*``.

Scopes only ever narrow what the roles of the user (or the service account) allow; the policy
checks both (:func:`careplane.security.policy.decide`). Query-narrowed v2 scopes
(``patient/Observation.rs?category=...``) are refused as ``invalid_scope`` rather than widened.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from careplane.security.actions import Action

__all__ = ["OTHER_SCOPES", "ResourceScope", "ScopeError", "ScopeSet"]

# Scopes that are not about resources: identity, launch context and token lifetime.
OTHER_SCOPES = frozenset({"openid", "fhirUser", "profile", "launch", "launch/patient",
                          "offline_access", "online_access"})

_V2 = {"c": frozenset({Action.create, Action.execute}),
       "r": frozenset({Action.read, Action.export}),
       "u": frozenset({Action.update}),
       "d": frozenset({Action.delete}),
       "s": frozenset({Action.search})}
_V1 = {"read": _V2["r"] | _V2["s"],
       "write": _V2["c"] | _V2["u"] | _V2["d"],
       "*": frozenset(Action)}
_RESOURCE = re.compile(
    r"^(?P<context>patient|user|system)/"
    r"(?P<resource>\*|[A-Z][A-Za-z]{1,63}|[a-z]{2,32}:(?:\*|[A-Za-z][A-Za-z0-9_-]{0,63}))"
    r"\.(?P<perms>\*|read|write|c?r?u?d?s?)$")


class ScopeError(ValueError):
    """A scope string that cannot be granted; the message names it."""


@dataclass(frozen=True)
class ResourceScope:
    context: str
    resource: str
    actions: frozenset[Action]
    text: str

    @classmethod
    def parse(cls, text: str) -> ResourceScope:
        match = _RESOURCE.match(text)
        if match is None or match["perms"] == "":
            raise ScopeError(f"{text!r} is not a valid SMART resource scope")
        perms = match["perms"]
        if perms in _V1:
            actions = _V1[perms]
        else:
            actions = frozenset().union(*(_V2[letter] for letter in perms))
        return cls(match["context"], match["resource"], actions, text)

    def matches_kind(self, kind: str) -> bool:
        """Whether this scope is about targets of ``kind`` (``records:Observation``...)."""
        domain, _, type_ = kind.partition(":")
        if ":" in self.resource:
            scope_domain, _, scope_type = self.resource.partition(":")
            return scope_domain == domain and scope_type in ("*", type_)
        return domain == "records" and self.resource in ("*", type_)

    def covers(self, other: ResourceScope) -> bool:
        """Whether holding this scope entitles a client to ask for ``other``."""
        if self.context != other.context or not other.actions <= self.actions:
            return False
        if self.resource == other.resource:
            return True
        if self.resource == "*":
            return ":" not in other.resource
        if self.resource.endswith(":*"):
            return other.resource.startswith(self.resource[:-1])
        return False


@dataclass(frozen=True)
class ScopeSet:
    resources: tuple[ResourceScope, ...]
    other: frozenset[str]

    @staticmethod
    def parse(scopes: str | Iterable[str]) -> ScopeSet:
        items = scopes.split() if isinstance(scopes, str) else scopes
        return _parse(frozenset(items))

    def __str__(self) -> str:
        return " ".join(sorted([*self.other, *(r.text for r in self.resources)]))

    def covers(self, requested: ScopeSet) -> bool:
        return requested.other <= self.other and all(
            any(mine.covers(theirs) for mine in self.resources) for theirs in requested.resources)

    def permits(self, action: Action, kind: str, *, patient_ok: bool) -> bool:
        """Whether some scope allows ``action`` on ``kind``; patient-context scopes count only
        when the target belongs to the launch patient (``patient_ok``)."""
        for scope in self.resources:
            if action in scope.actions and scope.matches_kind(kind) and (
                    scope.context != "patient" or patient_ok):
                return True
        return False


@lru_cache(maxsize=1024)
def _parse(items: frozenset[str]) -> ScopeSet:
    resources = []
    other = set()
    for item in items:
        if item in OTHER_SCOPES:
            other.add(item)
        elif "/" in item and not item.startswith("launch/"):
            resources.append(ResourceScope.parse(item))
        else:
            raise ScopeError(f"unknown scope {item!r}")
    return ScopeSet(tuple(sorted(resources, key=lambda r: r.text)), frozenset(other))
