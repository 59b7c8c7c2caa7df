"""FHIR R4 search definitions, as the specification publishes them.

careplane's search indexes are derived from the spec's own SearchParameters, never from a
hand-kept list: each parameter's type, FHIRPath expression, reference targets and composite
parts come from ``search_parameters.json``, which ``tools/fhir_extract.py`` writes from the
npm package ``hl7.fhir.r4.examples@4.0.1``. A wrong or missing parameter is then a data
question with one fix (re-extract), and every one of the spec's ~1,400 parameters is handled
by the same code.

The file is read once per process, on first use, and the answers are immutable, so callers
can hold on to them. Only the spec's core parameters are served by default: the package also
carries a few example SearchParameters (one of them redefines ``Condition.subject`` with a
wrong target) that must never reach a server, and some from extension pages that a caller can
ask for with ``include_supplementary=True``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, cast

from careplane.records.spec.expressions import split_union

__all__ = [
    "COMPARTMENTS",
    "Component",
    "SearchParam",
    "SearchParamType",
    "SpecSource",
    "compartment_params",
    "reference_paths",
    "resource_types",
    "search_parameters",
    "source",
]

SearchParamType = Literal[
    "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"
]
Origin = Literal["core", "supplementary", "example"]

#: The compartments that R4 defines, by CompartmentDefinition.code.
COMPARTMENTS = frozenset({"Patient", "Encounter", "RelatedPerson", "Practitioner", "Device"})

_DATA_FILE = "search_parameters.json"
_FORMAT = 1
_URL_PREFIX = "http://hl7.org/fhir/SearchParameter/"
_GENERAL = ("Resource", "DomainResource")


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter, resolved to the parameter it reuses.

    ``expression`` is relative to the value the composite's own expression selects
    (``code`` within ``Observation``), and ``type`` is the type of the parameter named by
    ``definition``: it tells how the part of a ``code$value`` search value is parsed.
    """

    definition: str
    code: str
    type: SearchParamType
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A SearchParameter as it applies to one resource type.

    ``expression`` holds only the members of the spec's FHIRPath union rooted at
    ``resource_type`` (for ``code`` on Observation, ``Observation.code`` of the long shared
    ``clinical-code`` union), so an indexer evaluates no more than it needs and never picks up
    an element written for another type. Parameters defined on Resource keep their
    ``Resource.`` root (``Resource.id``), which FHIRPath matches on any resource.
    ``spec_expression`` is the union as published. Either is None for the few parameters the
    spec defines without an expression (``_content``, ``_query``, ``_text``): those need code
    of their own or are refused.

    ``multiple_or`` and ``multiple_and`` are None where the spec does not say. ``modifiers`` is
    what the SearchParameter itself lists (almost always nothing): the modifiers each search
    type allows are set by the FHIR search page, not by this data.

    ``parts`` names, for a parameter whose expression is the union of other parameters' of
    the same type (``combo-code`` is ``code`` and ``component-code``), those parameters: its
    values are theirs, so it needs no index rows of its own and is searched on theirs.
    ``parts_target`` narrows them to the references that point at one type: an Observation's
    ``patient`` is ``Observation.subject.where(resolve() is Patient)``, so its values are the
    ``subject`` references to a Patient (``parts`` is ``("subject",)``, ``parts_target``
    ``"Patient"``).
    """

    code: str
    type: SearchParamType
    resource_type: str
    expression: str | None
    spec_expression: str | None
    base: tuple[str, ...]
    url: str
    xpath_usage: str | None = None
    target: tuple[str, ...] = ()
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    comparators: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    origin: Origin = "core"
    parts: tuple[str, ...] = ()
    parts_target: str | None = None


@dataclass(frozen=True, slots=True)
class SpecSource:
    """Which published package the data came from, for CapabilityStatement and audits."""

    package: str
    version: str
    fhir_version: str


class _Spec:
    """The parsed data file, indexed the ways the public functions ask for it."""

    def __init__(self, data: dict[str, Any]) -> None:
        if data.get("format") != _FORMAT:
            raise RuntimeError(
                f"{_DATA_FILE} has format {data.get('format')!r}, expected {_FORMAT}: "
                "re-run tools/fhir_extract.py"
            )
        src = data["source"]
        self.source = SpecSource(src["package"], src["version"], src["fhir_version"])
        self.parents: dict[str, str] = dict(data["resource_types"])
        self.types = frozenset(self.parents)
        any_target = tuple(data["any_target"])
        self.compartments: dict[str, dict[str, tuple[str, ...]]] = {
            name: {rtype: tuple(codes) for rtype, codes in members.items()}
            for name, members in data["compartments"].items()
        }
        self.reference_paths: dict[str, MappingProxyType[str, tuple[str, ...]]] = {
            rtype: MappingProxyType({path: tuple(t) for path, t in paths.items()})
            for rtype, paths in data["reference_paths"].items()
        }
        # base type -> its raw records; SearchParam objects are made per asked type.
        self.records: dict[str, list[dict[str, Any]]] = {}
        for rec in data["search_parameters"]:
            if rec.get("target") == "*":
                rec = {**rec, "target": any_target}
            for base in rec["base"]:
                self.records.setdefault(base, []).append(rec)

    def params_for(self, resource_type: str, supplementary: bool) -> dict[str, SearchParam]:
        if resource_type in self.types:
            parent = self.parents[resource_type]
            bases = ["Resource"] + (["DomainResource"] if parent == "DomainResource" else [])
            bases.append(resource_type)
        elif resource_type in _GENERAL:
            bases = ["Resource"] if resource_type == "Resource" else list(_GENERAL)
        else:
            raise KeyError(f"{resource_type!r} is not an R4 resource type")
        out: dict[str, SearchParam] = {}
        extra: dict[str, SearchParam] = {}
        for base in bases:
            for rec in self.records.get(base, ()):
                origin = rec.get("origin", "core")
                if origin == "core":
                    out[rec["code"]] = _make(rec, base, resource_type)
                elif origin == "supplementary" and supplementary:
                    extra.setdefault(rec["code"], _make(rec, base, resource_type))
        for code, param in extra.items():
            out.setdefault(code, param)
        return _with_parts(out)


def _members(param: SearchParam) -> frozenset[str]:
    return frozenset(m.strip() for m in split_union(param.expression or ""))


def _same_values(a: SearchParam, b: SearchParam) -> bool:
    """Whether ``a`` and ``b`` take the same values from what their expressions select."""
    return a.type == b.type and [(c.type, c.expression) for c in a.components] \
        == [(c.type, c.expression) for c in b.components]


def _unions(params: dict[str, SearchParam], members: dict[str, frozenset[str]],
            among: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """The parameters whose union ``members`` are exactly those of others in ``among``."""
    found: dict[str, tuple[str, ...]] = {}
    for code, mine in members.items():
        if len(mine) < 2:
            continue
        subs = sorted(o for o in among & members.keys() if o != code
                      and members[o] < mine and _same_values(params[o], params[code]))
        if subs and frozenset().union(*(members[o] for o in subs)) == mine:
            found[code] = tuple(subs)
    return found


def _with_parts(params: dict[str, SearchParam]) -> dict[str, SearchParam]:
    """``params`` with ``parts`` set where a parameter is a union of others (of those that
    are not unions themselves, so that every part has rows of its own), or the references of
    others that point at one type."""
    members = {code: _members(p) for code, p in params.items() if p.expression}
    unions = _unions(params, members, frozenset(params))
    if unions:
        unions = _unions(params, members, frozenset(params) - unions.keys())
    narrowed = _narrowed(params, members, frozenset(params) - unions.keys())
    if not unions and not narrowed:
        return params
    out = dict(params)
    for code, parts in unions.items():
        out[code] = replace(params[code], parts=parts)
    for code, (parts, target) in narrowed.items():
        out[code] = replace(params[code], parts=parts, parts_target=target)
    return out


_POINTS_AT = re.compile(r"(?P<path>.+)\.where\(resolve\(\)\s+is\s+(?P<type>[A-Za-z]+)\)")


def _narrowed(params: dict[str, SearchParam], members: dict[str, frozenset[str]],
              among: frozenset[str]) -> dict[str, tuple[tuple[str, ...], str]]:
    """The reference parameters whose every union member is ``X.where(resolve() is T)``,
    one ``T``, where the ``X`` are exactly the members of other reference parameters in
    ``among``: those parameters, and ``T``."""
    found: dict[str, tuple[tuple[str, ...], str]] = {}
    for code, mine in members.items():
        if params[code].type != "reference":
            continue
        matches = [_POINTS_AT.fullmatch(m) for m in mine]
        targets = {m.group("type") for m in matches if m is not None}
        if None in matches or len(targets) != 1:
            continue
        wider = frozenset(m.group("path").strip() for m in matches if m is not None)
        subs = sorted(o for o in among & members.keys() if o != code
                      and params[o].type == "reference" and members[o] <= wider)
        if subs and frozenset().union(*(members[o] for o in subs)) == wider:
            found[code] = (tuple(subs), targets.pop())
    return found


def _make(rec: dict[str, Any], base: str, resource_type: str) -> SearchParam:
    spec_expression: str | None = rec.get("expression")
    per_base = rec.get("expressions")
    expression = spec_expression if per_base is None else per_base.get(base)
    return SearchParam(
        code=rec["code"],
        type=cast(SearchParamType, rec["type"]),
        resource_type=resource_type,
        expression=expression,
        spec_expression=spec_expression,
        base=tuple(rec["base"]),
        url=rec.get("url", _URL_PREFIX + rec["id"]),
        xpath_usage=rec.get("xpath_usage"),
        target=tuple(rec.get("target", ())),
        multiple_or=rec.get("multiple_or"),
        multiple_and=rec.get("multiple_and"),
        comparators=tuple(rec.get("comparator", ())),
        modifiers=tuple(rec.get("modifier", ())),
        chains=tuple(rec.get("chain", ())),
        components=tuple(
            Component(
                definition=_URL_PREFIX + c["definition"],
                code=c["code"],
                type=cast(SearchParamType, c["type"]),
                expression=c["expression"],
            )
            for c in rec.get("component", ())
        ),
        origin=cast(Origin, rec.get("origin", "core")),
    )


@cache
def _spec() -> _Spec:
    raw = resources.files(__name__).joinpath(_DATA_FILE).read_bytes()
    return _Spec(json.loads(raw))


@cache
def _params(resource_type: str, supplementary: bool) -> MappingProxyType[str, SearchParam]:
    return MappingProxyType(_spec().params_for(resource_type, supplementary))


def search_parameters(
    resource_type: str, *, include_supplementary: bool = False
) -> dict[str, SearchParam]:
    """Every search parameter of ``resource_type``, by code.

    Includes those defined on Resource (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
    ``_security``, ``_source``, ...) and, for types derived from DomainResource, ``_text``.
    ``"Resource"`` gives just the parameters valid on every type, for a search across all
    types. ``include_supplementary`` adds parameters published on the spec's extension and
    profile pages (``_filter``, ``mothersMaidenName``, genetics), which never replace a core
    parameter of the same code. The dict is a fresh copy; its values are immutable. Raises
    KeyError for a name that is not an R4 resource type.
    """
    return dict(_params(resource_type, include_supplementary))


def compartment_params(compartment: str, resource_type: str) -> list[str]:
    """The parameters whose value puts a ``resource_type`` resource into ``compartment``.

    A resource is in ``Patient/123``'s compartment when any of these parameters refers to
    ``Patient/123`` (Observation: ``subject``, ``performer``). An empty list means that the
    type is never in that compartment. The spec writes ``{def}`` where the compartment's own
    resource belongs to it (Encounter in the Encounter compartment); it is passed through as
    written. Raises KeyError for a compartment R4 does not define.
    """
    try:
        members = _spec().compartments[compartment]
    except KeyError:
        raise KeyError(
            f"{compartment!r} is not an R4 compartment (one of {sorted(COMPARTMENTS)})"
        ) from None
    return list(members.get(resource_type, ()))


def resource_types() -> frozenset[str]:
    """The names of R4's concrete resource types (146, Parameters included)."""
    return _spec().types


def reference_paths(resource_type: str) -> MappingProxyType[str, tuple[str, ...]]:
    """The reference-typed elements of ``resource_type``, with their allowed target types.

    Keys are JSON key paths below the resource (``participant.individual``; a choice element
    that allows a Reference is named by its JSON key, ``medicationReference``). ``Resource``
    as a target means any type. References inside data types (``Identifier.assigner``) and
    below recursive elements (``Questionnaire.item.item``) are not listed: code that must find
    every reference walks the JSON for ``reference`` keys instead.
    """
    try:
        return _spec().reference_paths[resource_type]
    except KeyError:
        raise KeyError(f"{resource_type!r} is not an R4 resource type") from None


def source() -> SpecSource:
    """The package (name, version) and FHIR version the data was extracted from."""
    return _spec().source
