"""Subsumption from CodeSystems stored on this server: token ``:below``/``:above`` and the
``is-a`` family of ValueSet filters.

``code:below=http://snomed.info/sct|73211009`` finds resources coded with 73211009 or any
code beneath it; ``:above`` with it or any code above it. FHIR leaves "beneath" to the code
system. careplane has no terminology server and fetches nothing, so the hierarchy is the one
a CodeSystem resource stored here states: nested ``concept.concept`` (the default meaning of
nesting is is-a) and the ``parent``/``child`` concept properties. The CodeSystem is found by
its canonical ``url`` among those the caller can search; one that is not there is a 400 that
says so, as a ValueSet for ``:in`` is (see :mod:`careplane.records.value_sets`).

A CodeSystem whose ``hierarchyMeaning`` is not ``is-a`` (grouped-by, part-of,
classified-with) does not say that a child is a kind of its parent, so subsumption over it
is refused by name rather than answered wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from careplane.records.errors import FhirError
from careplane.records.models import INDEX_TABLES, resource, resource_version
from careplane.records.search_sql import Scope, live
from careplane.records.values import cut

__all__ = ["Hierarchy", "hierarchy_of", "load_code_system", "properties_of", "stored"]


class Hierarchy:
    """The is-a links of one CodeSystem: each code's parents and children."""

    def __init__(self, links: Iterable[tuple[str, str]], codes: Iterable[str]) -> None:
        self.codes = frozenset(codes)
        self.parents: dict[str, set[str]] = {}
        self.children: dict[str, set[str]] = {}
        for child, parent in links:
            self.parents.setdefault(child, set()).add(parent)
            self.children.setdefault(parent, set()).add(child)

    def _closure(self, code: str, edges: Mapping[str, set[str]]) -> frozenset[str]:
        seen = {code}
        todo = [code]
        while todo:  # a cycle in a malformed CodeSystem ends here too: nothing is seen twice
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def below(self, code: str) -> frozenset[str]:
        """``code`` and every code it subsumes."""
        return self._closure(code, self.children)

    def above(self, code: str) -> frozenset[str]:
        """``code`` and every code that subsumes it."""
        return self._closure(code, self.parents)


def _each_concept(concepts: Any, parent: str | None = None
                  ) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """(code, the code it is nested under, the concept) of every concept, nested ones too."""
    for concept in concepts if isinstance(concepts, list) else ():
        if isinstance(concept, dict) and isinstance(concept.get("code"), str):
            yield concept["code"], parent, concept
            yield from _each_concept(concept.get("concept"), concept["code"])


def hierarchy_of(code_system: Mapping[str, Any]) -> Hierarchy:
    """The is-a hierarchy a CodeSystem resource states (see the module docstring)."""
    meaning = code_system.get("hierarchyMeaning") or "is-a"
    if meaning != "is-a":
        raise FhirError.of(400, "not-supported", f"CodeSystem {code_system.get('url')!r} "
                           f"has hierarchyMeaning {meaning!r}; subsumption needs is-a")
    links: list[tuple[str, str]] = []
    codes: list[str] = []
    for code, parent, concept in _each_concept(code_system.get("concept")):
        codes.append(code)
        if parent is not None:
            links.append((code, parent))
        for prop in concept.get("property") or ():
            if not isinstance(prop, dict) or not isinstance(prop.get("valueCode"), str):
                continue
            if prop.get("code") == "parent":
                links.append((code, prop["valueCode"]))
            elif prop.get("code") == "child":
                links.append((prop["valueCode"], code))
    return Hierarchy(links, codes)


def _value_text(prop: Mapping[str, Any]) -> str | None:
    """A concept property's value as a filter compares it: a Coding by its code, a boolean
    as ``true``/``false``, anything else as written."""
    for key, value in prop.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, dict):
            code = value.get("code")
            return code if isinstance(code, str) else None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, (str, int, float)) else None
    return None


def properties_of(code_system: Mapping[str, Any]) -> dict[str, dict[str, frozenset[str]]]:
    """Every concept of a CodeSystem (nested ones included), by code, with the values of
    its properties by property code: what a ValueSet filter on a property reads."""
    found: dict[str, dict[str, set[str]]] = {}
    for code, _, concept in _each_concept(code_system.get("concept")):
        values = found.setdefault(code, {})
        for prop in concept.get("property") or ():
            if isinstance(prop, dict) and isinstance(prop.get("code"), str):
                text = _value_text(prop)
                if text is not None:
                    values.setdefault(prop["code"], set()).add(text)
    return {code: {k: frozenset(v) for k, v in props.items()} for code, props in found.items()}


def stored(session: Session, scope: Scope, resource_type: str, *, rid: str | None = None,
           url: str = "", version: str = "") -> list[dict[str, Any]]:
    """The current content of the ``resource_type`` resources the caller can search that
    have the id ``rid``, or else the canonical ``url`` (and ``version``, when given): what
    a stored ValueSet or CodeSystem is found by. At most 50."""
    r = resource
    stmt = (select(resource_version.c.content)
            .join(r, and_(resource_version.c.resource_pk == r.c.pk,
                          resource_version.c.version == r.c.version))
            .where(live(r, resource_type, scope)))
    if rid is not None:
        stmt = stmt.where(r.c.id == rid)
    else:
        t = INDEX_TABLES["uri"]
        stmt = stmt.where(r.c.pk.in_(select(t.c.resource_pk).where(
            t.c.resource_type == resource_type, t.c.param == "url", t.c.value == cut(url))))
    return [c for c in session.scalars(stmt.limit(50))
            if isinstance(c, dict) and (rid is not None or c.get("url") == url)
            and (not version or c.get("version") == version)]


def load_code_system(session: Session, scope: Scope, url: str, *, why: str
                     ) -> dict[str, Any]:
    """The stored CodeSystem whose canonical ``url`` is ``url`` (``url|version`` picks a
    version), among those the caller can search; a 400 naming ``why`` it was needed when
    there is none or more than one."""
    canonical, _, version = url.partition("|")
    found = stored(session, scope, "CodeSystem", url=canonical, version=version)
    if not found:
        raise FhirError.of(400, "not-found", f"CodeSystem {url!r} is not on this server (or "
                           f"not visible to you): {why} needs the code system's hierarchy, "
                           "from a stored CodeSystem")
    if len(found) > 1:
        raise FhirError.of(400, "invalid", f"{len(found)} CodeSystems have the url {url!r}; "
                           "add |version")
    return found[0]
