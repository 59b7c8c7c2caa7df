"""ValueSets stored on this server, expanded for the token modifiers ``:in`` and ``:not-in``.

``code:in=http://example.org/vs/vitals`` names a ValueSet by its canonical ``url`` (optionally
``url|version``); ``code:in=ValueSet/123`` (or this server's full URL of it) names one by its
literal reference. Either must be a ValueSet the caller can search (their organisation's, or
one the policy opens to them); anything else is a 400 OperationOutcome naming the value.

A ValueSet is expanded from its ``expansion.contains`` (nested entries included) when it has
one, else from ``compose``: each ``include`` adds its listed ``concept`` codes of its
``system``, the whole ``system`` when it lists none, or the codes of the ValueSets it imports
(``include.valueSet``); ``exclude`` removes listed concepts. An include's ``filter``s are
answered from the stored CodeSystem of its system (:mod:`careplane.records.code_systems`),
all of them holding at once: on the ``concept`` property by its is-a hierarchy (is-a,
descendent-of, generalizes, is-not-a) or by code (=, in, not-in); on any other property by
the values the CodeSystem's concepts give it (=, in, not-in, exists). ``regex`` is refused:
a pattern from a stored resource, run over every code, could stall the server.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.orm import Session

from careplane.records.code_systems import (
    hierarchy_of,
    load_code_system,
    properties_of,
    stored,
)
from careplane.records.errors import FhirError
from careplane.records.search_params import Criterion, TokenValue, ValueSetCodes
from careplane.records.search_sql import Scope
from careplane.records.values import parse_reference

__all__ = ["MAX_CODES", "expand", "resolve_value_sets"]

#: A ValueSet expanding to more codes than this is refused (the search would be too costly).
MAX_CODES = 5000
_MAX_DEPTH = 5


def _bad(ref: str, message: str) -> FhirError:
    return FhirError.of(400, "invalid", f"ValueSet {ref!r}: {message}")


def _load(session: Session, scope: Scope, ref: str) -> dict[str, Any]:
    """The ValueSet resource ``ref`` names (canonical url[|version] or literal reference)."""
    local = scope.base and ref.startswith(scope.base.rstrip("/") + "/ValueSet/")
    literal = parse_reference(ref) if (local or ref.startswith("ValueSet/")) else None
    if literal is not None and literal.type == "ValueSet" and literal.id:
        found = stored(session, scope, "ValueSet", rid=literal.id)
    else:
        url, _, version = ref.partition("|")
        found = stored(session, scope, "ValueSet", url=url, version=version)
    if not found:
        raise FhirError.of(400, "not-found", f"ValueSet {ref!r} is not on this server "
                           "(or not visible to you): :in and :not-in need a stored ValueSet")
    if len(found) > 1:
        raise _bad(ref, f"{len(found)} ValueSets have this url; add |version or use "
                   "ValueSet/<id>")
    return found[0]


def _contains(items: Any, out: list[tuple[str | None, str]]) -> None:
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        if isinstance(code, str) and code and not item.get("abstract"):
            system = item.get("system")
            out.append((system if isinstance(system, str) and system else None, code))
        _contains(item.get("contains"), out)


def _concepts(part: dict[str, Any]) -> list[tuple[str, str]]:
    system = part.get("system")
    return [(system, c["code"]) for c in part.get("concept") or []
            if isinstance(system, str) and isinstance(c, dict) and isinstance(c.get("code"), str)]


_SUBSUMPTION = frozenset({"is-a", "descendent-of", "generalizes", "is-not-a"})
_CONCEPT_OPS = _SUBSUMPTION | {"=", "in", "not-in"}
_PROPERTY_OPS = frozenset({"=", "in", "not-in", "exists"})


def _filtered(session: Session, scope: Scope, ref: str, where: str, part: dict[str, Any]
              ) -> list[tuple[str | None, str]]:
    """The codes of an include's ``filter``s (all must hold), from the stored CodeSystem of
    its system (:mod:`careplane.records.code_systems`); see the module docstring."""
    system = part.get("system")
    if not isinstance(system, str) or not system:
        raise _bad(ref, f"{where}.filter needs the include's system")
    filters: list[tuple[str, str, str]] = []
    for j, f in enumerate(part["filter"]):
        prop, op, value = (f.get(k) for k in ("property", "op", "value")) \
            if isinstance(f, dict) else (None, None, None)
        ops = _CONCEPT_OPS if prop == "concept" else _PROPERTY_OPS
        if not isinstance(prop, str) or op not in ops or not isinstance(value, str):
            raise _bad(ref, f"{where}.filter[{j}] ({prop} {op}) is not one careplane "
                       f"answers: the concept property takes {', '.join(sorted(_CONCEPT_OPS))}"
                       f", other properties {', '.join(sorted(_PROPERTY_OPS))}")
        filters.append((prop, op, value))
    version = part.get("version")
    code_system = load_code_system(
        session, scope, f"{system}|{version}" if isinstance(version, str) else system,
        why=f"ValueSet {ref!r} {where}.filter")
    concepts = properties_of(code_system)
    every = frozenset(concepts)
    found = hierarchy_of(code_system) if any(op in _SUBSUMPTION for _, op, _ in filters) \
        else None
    kept: frozenset[str] | None = None
    for prop, op, value in filters:
        listed = frozenset(v.strip() for v in value.split(",") if v.strip())
        if prop == "concept":
            if found is not None and op in _SUBSUMPTION:
                below = found.below(value)
                match = {"is-a": below, "descendent-of": below - {value},
                         "generalizes": found.above(value),
                         "is-not-a": found.codes - below}[op]
            else:
                match = frozenset({value}) if op == "=" else \
                    (listed if op == "in" else every - listed)
        else:
            having = {code: props.get(prop, frozenset()) for code, props in concepts.items()}
            if op == "exists":
                wanted = value.strip().lower() == "true"
                match = frozenset(c for c, values in having.items() if bool(values) == wanted)
            elif op == "=":
                match = frozenset(c for c, values in having.items() if value in values)
            elif op == "in":
                match = frozenset(c for c, values in having.items() if values & listed)
            else:  # not-in
                match = frozenset(c for c, values in having.items() if not values & listed)
        kept = match if kept is None else kept & match
    return [(system, code) for code in sorted(kept or ())]


def expand(session: Session, scope: Scope, ref: str, depth: int = 0) -> ValueSetCodes:
    """The codes of the stored ValueSet ``ref`` (see the module docstring)."""
    if depth > _MAX_DEPTH:
        raise _bad(ref, f"imports ValueSets more than {_MAX_DEPTH} levels deep")
    vs = _load(session, scope, ref)
    codes: list[tuple[str | None, str]] = []
    systems: list[str] = []
    excluded: list[tuple[str, str]] = []
    expansion = vs.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        _contains(expansion["contains"], codes)
    else:
        raw = vs.get("compose")
        compose: dict[str, Any] = raw if isinstance(raw, dict) else {}
        includes = compose.get("include") or []
        if not includes:
            raise _bad(ref, "has neither expansion.contains nor compose.include")
        for i, part in enumerate(includes):
            if not isinstance(part, dict):
                continue
            where = f"compose.include[{i}]"
            if part.get("filter"):
                if part.get("concept") or part.get("valueSet"):
                    raise _bad(ref, f"{where} combines filter with concept or valueSet, "
                               "which is not supported")
                codes += _filtered(session, scope, ref, where, part)
                continue
            imported = part.get("valueSet") or []
            if imported and (part.get("system") or part.get("concept")):
                raise _bad(ref, f"{where} combines valueSet with system (an intersection), "
                           "which is not supported")
            for url in imported:
                inner = expand(session, scope, str(url), depth + 1)
                codes += inner.codes
                systems += inner.systems
                excluded += inner.excluded
            if part.get("concept"):
                codes += _concepts(part)
            elif isinstance(part.get("system"), str) and not imported:
                systems.append(part["system"])
        for part in compose.get("exclude") or []:
            if isinstance(part, dict):
                if part.get("filter") or part.get("valueSet"):
                    raise _bad(ref, "compose.exclude supports listed concepts only")
                excluded += _concepts(part)
    drop = set(excluded)
    kept = sorted({c for c in codes if c not in drop}, key=lambda c: (c[0] or "", c[1]))
    if len(kept) > MAX_CODES:
        raise FhirError.of(400, "too-costly", f"ValueSet {ref!r} expands to {len(kept)} "
                           f"codes; at most {MAX_CODES} are searched")
    return ValueSetCodes(ref, tuple(kept), tuple(sorted(set(systems))),
                         tuple(sorted(set(excluded))))


def resolve_value_sets(session: Session, scope: Scope, criteria: list[Criterion]
                       ) -> list[Criterion]:
    """``criteria`` with each ``:in``/``:not-in`` value replaced by its expansion (chains and
    ``_has`` included); the others come back unchanged."""
    return [_resolve(session, scope, c) for c in criteria]


def _subsumed(session: Session, scope: Scope, crit: Criterion, value: Any) -> ValueSetCodes:
    """A token ``:below``/``:above`` value as the codes it stands for (``system|code``)."""
    modifier = crit.modifier
    if not isinstance(value, TokenValue) or not value.system or not value.code:
        raise FhirError.of(400, "invalid", f"{crit.name}:{modifier} takes system|code: the "
                           "code system says what lies below or above a code")
    found = hierarchy_of(load_code_system(session, scope, value.system,
                                          why=f":{modifier}"))
    codes = found.below(value.code) if modifier == "below" else found.above(value.code)
    if len(codes) > MAX_CODES:
        raise FhirError.of(400, "too-costly", f"{value.system}|{value.code} has {len(codes)} "
                           f"codes {modifier} it; at most {MAX_CODES} are searched")
    return ValueSetCodes(f"{value.system}|{value.code}",
                         tuple((value.system, c) for c in sorted(codes)))


def _resolve(session: Session, scope: Scope, crit: Criterion) -> Criterion:
    if crit.chains:
        return dataclasses.replace(crit, chains=tuple(
            (t, _resolve(session, scope, inner)) for t, inner in crit.chains))
    if crit.missing is None and crit.modifier in ("below", "above") and crit.type == "token":
        # the codes subsumed (or subsuming), searched as :in searches an expansion
        return dataclasses.replace(crit, modifier="in", values=tuple(
            _subsumed(session, scope, crit, v) for v in crit.values))
    if crit.modifier not in ("in", "not-in") or crit.missing is not None:
        return crit
    return dataclasses.replace(crit, values=tuple(
        expand(session, scope, v) if isinstance(v, str) else v for v in crit.values))


