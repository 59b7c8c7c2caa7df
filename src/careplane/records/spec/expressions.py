"""Split a SearchParameter's FHIRPath union into the part that applies to one resource type.

The specification shares one SearchParameter between many resource types and writes its
expression as a union, ``AllergyIntolerance.code | Condition.code | Observation.code | ...``.
An indexer that evaluates the whole union on every resource does needless work and, worse,
would match a part written for another type whenever two types share an element name. So each
(resource type, code) gets only the union members rooted at that type.

Only the top-level ``|`` splits: a bar inside parentheses, a function's arguments or a string
literal belongs to its member, so ``(Observation.value as Quantity)`` and
``AuditEvent.agent.who.where(resolve() is Patient)`` stay exactly as written. The extraction
script uses this once at build time; the server can use it again for SearchParameters that
users define at run time.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["ANY_RESOURCE_ROOTS", "expression_for_type", "root_name", "split_union"]

# A member rooted at one of these applies to every resource type: ``Resource.id`` on Patient.
ANY_RESOURCE_ROOTS = frozenset({"Resource", "DomainResource"})

_LEADING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = frozenset(_OPENERS.values())


def split_union(expression: str) -> list[str]:
    """The members of ``expression``'s top-level union, stripped, in written order.

    Quotes (``'...'`` strings and backtick-delimited identifiers, with backslash escapes) and
    brackets are tracked so that only a bar at nesting depth zero splits. An expression with no
    top-level bar comes back as a one-element list. Unbalanced input raises ValueError: a
    silently wrong split would index the wrong element.
    """
    members: list[str] = []
    start = 0
    depth = 0
    quote: str | None = None
    i = 0
    n = len(expression)
    while i < n:
        ch = expression[i]
        if quote is not None:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in ("'", "`"):
            quote = ch
        elif ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r} at {i} in FHIRPath {expression!r}")
        elif ch == "|" and depth == 0:
            members.append(expression[start:i].strip())
            start = i + 1
        i += 1
    if quote is not None or depth != 0:
        raise ValueError(f"unterminated quote or bracket in FHIRPath {expression!r}")
    members.append(expression[start:].strip())
    if any(not m for m in members):
        raise ValueError(f"empty union member in FHIRPath {expression!r}")
    return members


def root_name(member: str) -> str | None:
    """The first identifier of a union member, looking past opening parentheses.

    ``(Observation.value as Quantity)`` gives ``Observation``; ``name`` gives ``name``;
    ``%resource.id`` gives None (an environment variable, not a type).
    """
    m = _LEADING_NAME.match(member.lstrip("( \t\r\n"))
    return m.group(0) if m else None


def expression_for_type(
    expression: str, resource_type: str, type_names: Collection[str]
) -> str | None:
    """The members of ``expression`` that apply to ``resource_type``, rejoined with `` | ``.

    A member applies when its root is ``resource_type``, when it is rooted at ``Resource`` or
    ``DomainResource``, or when its root is not a type name at all (a path relative to the
    resource, as in the spec's ``name | alias`` for InsurancePlan), since a FHIRPath engine
    evaluates such a path against whatever resource it is given. ``type_names`` is the set of
    names that count as types (the resource types, abstract ones included). None means that no
    member applies: the expression was written for other types only.
    """
    kept = []
    for member in split_union(expression):
        root = root_name(member)
        if (
            root == resource_type
            or root in ANY_RESOURCE_ROOTS
            or root is None
            or root not in type_names
        ):
            kept.append(member)
    return " | ".join(kept) if kept else None
