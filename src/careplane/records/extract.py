"""Compile a SearchParameter's FHIRPath expression once into a fast value extractor.

Nine in ten of the spec's search expressions are plain paths (``Patient.name``,
``Observation.code``), a few restrict a choice element (``(Observation.value as Quantity)``)
or filter (``.where(resolve() is Patient)``, ``.where(system='email')``, ``[0]``). Those are
compiled here into *routes*: the concrete JSON keys to follow, with the FHIR type found at the
end, resolved against the R4 type model that fhirpathpy ships. Evaluating a route is a few dict
lookups, and knowing the element's type (ContactPoint, not Identifier; date, not string) lets
the indexer turn each value into the right index row without guessing from its shape.
Anything else (``deceased.exists() and deceased != false``) is handed to fhirpathpy, compiled
once, whose results carry no type and are recognised by shape instead.

``resolve()`` cannot be evaluated while indexing (the target may not exist yet); the one way
the spec uses it, ``where(resolve() is Type)``, is read as "the reference points at a Type",
which is what it means for a literal reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as _fhirpath_models

from careplane.records.spec.expressions import ANY_RESOURCE_ROOTS, split_union

__all__ = ["PRIMITIVE_TYPES", "CompositeRoute", "Extractor", "Getter", "Node",
           "compile_composite", "compile_composite_routes", "compile_expression",
           "compile_getters", "reference_type"]

_MODEL: dict[str, Any] = _fhirpath_models["r4"]
_PATH_TYPES: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENTS: dict[str, str] = _MODEL["type2Parent"]

PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
})


@cache
def _backbone_paths() -> frozenset[str]:
    """Paths of backbone elements: they have children in the model but no type of their own."""
    out: set[str] = set()
    for path in list(_PATH_TYPES) + list(_CHOICES):
        parts = path.split(".")
        for i in range(2, len(parts)):
            out.add(".".join(parts[:i]))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Node:
    """One value an expression selected: the JSON as stored and its FHIR type ('' if unknown)."""

    value: Any
    type: str


Extractor = Callable[[dict[str, Any]], list[Node]]


class _Unsupported(ValueError):
    """The expression is outside what routes express; fhirpathpy evaluates it instead."""


# -- routes ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Get:
    key: str


@dataclass(frozen=True, slots=True)
class _Filter:
    test: Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class _First:
    pass


_Op = _Get | _Filter | _First


@dataclass(frozen=True, slots=True)
class _Route:
    ops: tuple[_Op, ...]
    type: str
    context: str = ""  # where a relative expression continues from (for composites)


def _type_name(choice: str) -> str:
    """'DateTime' (as choiceTypePaths writes it) -> 'dateTime'; 'Quantity' stays."""
    lowered = choice[0].lower() + choice[1:]
    return lowered if lowered in PRIMITIVE_TYPES else choice


def _normal_type(model_type: str) -> str:
    return "string" if model_type.startswith("System.") else model_type


@dataclass(frozen=True, slots=True)
class _Step:
    """Where a route stands: the model context for children and the FHIR type of the value."""

    ops: tuple[_Op, ...]
    context: str  # a type name (HumanName) or a backbone path (Patient.contact)
    type: str


def _lookup(context: str, name: str) -> str | None:
    """The model path of ``context.name``, following inheritance for type contexts."""
    seen: str | None = context
    while seen:
        path = f"{seen}.{name}"
        path = _ELSEWHERE.get(path, path)
        if path in _PATH_TYPES or path in _CHOICES or path in _backbone_paths():
            return path
        seen = _PARENTS.get(seen) if "." not in seen else None
    return None


def _children(step: _Step, name: str, only: str | None = None) -> list[_Step]:
    path = _lookup(step.context, name)
    if path is None:
        raise _Unsupported(f"{step.context} has no element {name!r}")
    if path in _CHOICES:
        out = []
        for choice in _CHOICES[path]:
            if only is not None and _type_name(choice) != _type_name(only):
                continue
            ftype = _normal_type(_PATH_TYPES.get(path + choice, _type_name(choice)))
            out.append(_Step((*step.ops, _Get(name + choice)), ftype, ftype))
        if not out:
            raise _Unsupported(f"{path} cannot be a {only}")
        return out
    if only is not None:
        raise _Unsupported(f"{path} is not a choice element")
    if path in _PATH_TYPES:
        ftype = _normal_type(_PATH_TYPES[path])
        return [_Step((*step.ops, _Get(name)), ftype, ftype)]
    # A backbone element: its children are named below its own path.
    return [_Step((*step.ops, _Get(name)), path, "BackboneElement")]


_SEGMENT = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>0)\])?
      | (?:as|ofType)\((?P<cast>[A-Za-z]+)\)
      | where\(resolve\(\)\s+is\s+(?P<resolve>[A-Za-z]+)\)
      | where\((?P<field>[A-Za-z]+)\s*=\s*'(?P<literal>[^'\\]*)'\)
    """,
    re.VERBOSE,
)


def _split_dots(path: str) -> list[str]:
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(path):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == ".":
            parts.append(path[start:i])
            start = i + 1
    parts.append(path[start:])
    return [p.strip() for p in parts]


def reference_type(value: Any) -> str | None:
    """The resource type a Reference's literal ``reference`` names, if it names one."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if not isinstance(ref, str):
        return None
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else None


def _points_at(type_name: str) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        return reference_type(value) == type_name

    return test


def _has_child(field: str, literal: str) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        return isinstance(value, dict) and value.get(field) == literal

    return test


def _compile_member(member: str, resource_type: str, context: str | None = None
                    ) -> list[_Route]:
    """Routes of one union member; with ``context`` the member is relative to that model
    path or type (a composite's component, ``value.as(Quantity)`` within
    ``Observation.component``)."""
    cast: str | None = None
    tail = ""
    text = member.strip()
    m = re.fullmatch(r"\((.+?)\s+as\s+([A-Za-z]+)\)((?:\.[A-Za-z]+)*)", text)
    if m:
        text, cast, tail = m.group(1), m.group(2), m.group(3)
    else:
        m = re.fullmatch(r"(.+?)\s+as\s+([A-Za-z]+)", text)
        if m:
            text, cast = m.group(1), m.group(2)
    segments = _split_dots(text)
    if cast is not None:
        segments.append(f"as({cast})")
    segments += [s for s in tail.split(".") if s]
    if context is not None:
        segments = ["", *segments]
        steps = [_Step((), context, context)]
    else:
        root = segments[0]
        if root != resource_type and root not in ANY_RESOURCE_ROOTS:
            if _lookup(resource_type, root) is None:
                raise _Unsupported(f"member rooted at {root!r}")
            segments = [resource_type, *segments]  # a path relative to the resource
        steps = [_Step((), resource_type, resource_type)]
    pending: str | None = None  # an element name whose choice a following as() narrows
    for seg in segments[1:]:
        sm = _SEGMENT.fullmatch(seg)
        if sm is None:
            raise _Unsupported(f"segment {seg!r}")
        if sm.group("cast"):
            if pending is None:
                raise _Unsupported("as() without an element")
            steps = [c for s in steps for c in _children(s, pending, only=sm.group("cast"))]
            pending = None
            continue
        if pending is not None:
            steps = [c for s in steps for c in _children(s, pending)]
            pending = None
        if sm.group("name"):
            name = sm.group("name")
            path = _lookup(steps[0].context, name) if steps else None
            if path is not None and path in _CHOICES and not sm.group("index"):
                pending = name  # wait: the next segment may be as(Type)
                continue
            steps = [c for s in steps for c in _children(s, name)]
            if sm.group("index"):
                steps = [_Step((*s.ops, _First()), s.context, s.type) for s in steps]
        elif sm.group("resolve"):
            test = _points_at(sm.group("resolve"))
            steps = [_Step((*s.ops, _Filter(test)), s.context, s.type) for s in steps]
        else:
            test = _has_child(sm.group("field"), sm.group("literal"))
            steps = [_Step((*s.ops, _Filter(test)), s.context, s.type) for s in steps]
    if pending is not None:
        steps = [c for s in steps for c in _children(s, pending)]
    return [_Route(s.ops, s.type, s.context) for s in steps]


def _flatten(values: Iterable[Any]) -> Iterator[Any]:
    for v in values:
        if isinstance(v, list):
            yield from v
        elif v is not None:
            yield v


def _run(route: _Route, resource: dict[str, Any]) -> list[Node]:
    items: list[Any] = [resource]
    for op in route.ops:
        if op.__class__ is _Get:
            key = op.key
            found: list[Any] = []
            for item in items:
                if isinstance(item, dict):
                    value = item.get(key)
                    if value.__class__ is list:
                        found.extend(v for v in value if v is not None)
                    elif value is not None:
                        found.append(value)
            items = found
        elif op.__class__ is _Filter:
            items = [i for i in items if op.test(i)]
        else:
            items = items[:1]
        if not items:
            return []
    kind = route.type
    return [Node(i, kind) for i in items]


def _route_extractor(routes: list[_Route]) -> Extractor:
    if len(routes) == 1:
        only = routes[0]
        return lambda resource: _run(only, resource)

    def extract(resource: dict[str, Any]) -> list[Node]:
        out: list[Node] = []
        for route in routes:
            out.extend(_run(route, resource))
        return out

    return extract


def _fhirpath_extractor(expression: str) -> Extractor:
    compiled = fhirpathpy.compile(expression, model=_MODEL)

    def extract(resource: dict[str, Any]) -> list[Node]:
        try:
            values = compiled(resource, {})
        except Exception:
            return []
        return [Node(v, "") for v in values if v is not None]

    return extract


def compile_composite(expression: str, resource_type: str, components: tuple[str, ...]
                      ) -> Callable[[dict[str, Any]], list[tuple[list[Node], ...]]] | None:
    """For a composite parameter: each value its expression selects, with what each
    component expression (relative to that value) selects in it. None if not compilable."""
    try:
        routes = [r for member in split_union(expression)
                  for r in _compile_member(member, resource_type)]
        parts = [[[p for m in split_union(c) for p in _compile_member(m, resource_type,
                                                                       r.context)]
                  for c in components] for r in routes]
    except _Unsupported:
        return None

    def extract(resource: dict[str, Any]) -> list[tuple[list[Node], ...]]:
        out: list[tuple[list[Node], ...]] = []
        for route, comps in zip(routes, parts, strict=True):
            for node in _run(route, resource):
                out.append(tuple([n for sub in comp for n in _run(sub, node.value)]
                                 for comp in comps))
        return out

    return extract


@cache
def first_keys(expression: str, resource_type: str) -> frozenset[str] | None:
    """The top-level elements ``expression`` starts from on a ``resource_type`` resource:
    where a resource has none of them the expression selects nothing. None where that is
    not known (an expression evaluated by fhirpathpy, or one not starting with an element)."""
    try:
        routes = [r for member in split_union(expression)
                  for r in _compile_member(member, resource_type)]
    except _Unsupported:
        return None
    keys = set()
    for route in routes:
        if not route.ops or not isinstance(route.ops[0], _Get):
            return None
        keys.add(route.ops[0].key)
    return frozenset(keys)


#: Selects the raw JSON values of one route from a resource (no Node wrapping).
Getter = Callable[[dict[str, Any]], list[Any]]


def _one_key(key: str) -> Getter:
    def get(resource: dict[str, Any]) -> list[Any]:
        value = resource.get(key)
        if value is None:
            return []
        if value.__class__ is list:
            return [v for v in value if v is not None]
        return [value]

    return get


def _two_keys(first: str, second: str) -> Getter:
    def get(resource: dict[str, Any]) -> list[Any]:
        value = resource.get(first)
        if value is None:
            return []
        out: list[Any] = []
        for item in (value if value.__class__ is list else (value,)):
            if isinstance(item, dict):
                inner = item.get(second)
                if inner.__class__ is list:
                    out.extend(v for v in inner if v is not None)
                elif inner is not None:
                    out.append(inner)
        return out

    return get


def _route_getter(route: _Route) -> Getter:
    """A route as a function of its own: the common one- and two-key paths without the
    general loop over operations."""
    ops = route.ops
    if all(op.__class__ is _Get for op in ops):
        keys = [op.key for op in ops if isinstance(op, _Get)]
        if len(keys) == 1:
            return _one_key(keys[0])
        if len(keys) == 2:
            return _two_keys(keys[0], keys[1])
    plain = _Route(ops, "")
    return lambda resource: [node.value for node in _run(plain, resource)]


@cache
def compile_getters(expression: str, resource_type: str
                    ) -> tuple[tuple[Getter, str], ...] | None:
    """The expression as (getter, FHIR type of what it selects) per route, for the indexer's
    hot path; None where fhirpathpy evaluates it (use :func:`compile_expression`)."""
    try:
        routes = [r for member in split_union(expression)
                  for r in _compile_member(member, resource_type)]
    except _Unsupported:
        return None
    return tuple((_route_getter(r), r.type) for r in routes)


def _keys_of(parts: Iterable[_Route]) -> frozenset[str] | None:
    keys = set()
    for route in parts:
        if not route.ops or not isinstance(route.ops[0], _Get):
            return None
        keys.add(route.ops[0].key)
    return frozenset(keys)


@dataclass(frozen=True, slots=True)
class CompositeRoute:
    """One route of a composite parameter, compiled for the indexer.

    ``select`` gives the values the composite's expression selects (None: the resource
    itself); ``components`` the getters of each component within such a value, with the
    FHIR type each selects; ``keys`` per component, the elements it reads first (None
    where unknown), so that a resource lacking them can be passed over.
    """

    select: Getter | None
    components: tuple[tuple[tuple[Getter, str], ...], ...]
    keys: tuple[frozenset[str] | None, ...]


@cache
def compile_composite_routes(expression: str, resource_type: str, components: tuple[str, ...]
                             ) -> tuple[CompositeRoute, ...] | None:
    """What :func:`compile_composite` evaluates, as getters (None if not compilable)."""
    try:
        routes = [r for member in split_union(expression)
                  for r in _compile_member(member, resource_type)]
        out = []
        for route in routes:
            parts = [[p for m in split_union(c) for p in _compile_member(m, resource_type,
                                                                          route.context)]
                     for c in components]
            out.append(CompositeRoute(
                _route_getter(route) if route.ops else None,
                tuple(tuple((_route_getter(p), p.type) for p in part) for part in parts),
                tuple(_keys_of(part) for part in parts)))
    except _Unsupported:
        return None
    return tuple(out)


@cache
def compile_expression(expression: str, resource_type: str) -> Extractor:
    """The extractor for ``expression`` evaluated on resources of ``resource_type``.

    Compiled once per (expression, type) and cached for the life of the process.
    """
    try:
        routes = [r for member in split_union(expression)
                  for r in _compile_member(member, resource_type)]
    except _Unsupported:
        return _fhirpath_extractor(expression)
    return _route_extractor(routes)
