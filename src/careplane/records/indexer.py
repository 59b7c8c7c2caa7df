"""Turn a resource into its search-index rows, from the spec's SearchParameters.

For each resource type the parameters are read from ``careplane.records.spec`` and each
expression compiled once (``careplane.records.extract``); indexing a resource runs every
extractor and converts what it selects into rows of the table of the parameter's type. The
conversion depends on the element's FHIR type: a HumanName gives one string row per part, a
CodeableConcept one token row per coding, a Period one date range. Values that cannot be read
(an impossible date in a type without a model to catch it) refuse the write with a 422 that
names the parameter, so no half-indexed resource is ever stored.

Composite and special parameters (``near``) are not indexed. Compartment membership (which
Patient, Encounter, Practitioner... compartments a resource is in) is derived here too, from
the reference rows of the parameters the CompartmentDefinitions list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from careplane.records.errors import FhirError
from careplane.records.extract import (
    CompositeRoute,
    Extractor,
    Node,
    compile_composite,
    compile_composite_routes,
    compile_expression,
    compile_getters,
    first_keys,
)
from careplane.records.spec import (
    COMPARTMENTS,
    SearchParam,
    compartment_params,
    resource_types,
    search_parameters,
)
from careplane.records.ucum import UCUM_SYSTEM, canonical
from careplane.records.values import (
    DATE_MAX,
    DATE_MIN,
    cut,
    date_range,
    fold,
    parse_reference,
)

__all__ = ["BY_IDENTIFIER", "COMPOSITE_SECONDS", "INDEXED_TYPES", "OF_TYPE", "IndexRows",
           "composite_params", "index_resource", "indexed_params", "load_plans", "stored_under"]

#: Search-parameter types that have an index table.
INDEXED_TYPES = frozenset({"string", "token", "date", "reference", "quantity", "number", "uri",
                           "composite"})
#: Token rows kept under ``<param>:of-type`` (an identifier's type and value) and
#: ``<param>:identifier`` (a reference's logical identifier), for those two modifiers.
OF_TYPE = ":of-type"
BY_IDENTIFIER = ":identifier"
#: What the second part of an indexed composite may be (the first is always a token).
COMPOSITE_SECONDS = frozenset({"token", "quantity", "date", "string", "number"})
# Parameters on the resource row itself, searched without an index table.
_ON_RESOURCE_ROW = frozenset({"_id", "_lastUpdated"})

_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_STRING_PRIMITIVES = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical",
                                "uuid", "oid"})
_NUMBER_PRIMITIVES = frozenset({"integer", "decimal", "positiveInt", "unsignedInt"})
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


#: The columns of each index table after ``resource_pk``, in the order of the rows'
#: tuples (the order COPY writes them in).
COLUMNS: dict[str, tuple[str, ...]] = {
    "string": ("resource_type", "param", "value", "exact"),
    "token": ("resource_type", "param", "system", "code", "text"),
    "date": ("resource_type", "param", "low", "high"),
    "reference": ("resource_type", "param", "target_type", "target_id", "url"),
    "quantity": ("resource_type", "param", "low", "high", "system", "code", "canonical_low",
                 "canonical_high", "canonical_code"),
    "number": ("resource_type", "param", "low", "high"),
    "uri": ("resource_type", "param", "value"),
    "composite": ("resource_type", "param", "a_system", "a_code", "system", "code", "low",
                  "high", "canonical_low", "canonical_high", "canonical_code", "date_low",
                  "date_high", "value", "exact"),
}
#: The columns of ``fhir_idx_compartment`` after ``resource_pk``.
COMPARTMENT_COLUMNS = ("resource_type", "compartment", "target_id")


@dataclass(slots=True)
class IndexRows:
    """The rows of one resource, by index table (the search-parameter type).

    Rows are tuples in the order of :data:`COLUMNS` (plain tuples are what the store streams
    to the database; building a dict per row costs more than the rest of the indexing).
    """

    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    compartments: list[tuple[str, str]] = field(default_factory=list)  # (compartment, id)

    @property
    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The same rows as dicts by column name (for tests and tools, not the write path)."""
        return {kind: [dict(zip(COLUMNS[kind], row, strict=True)) for row in rows]
                for kind, rows in self.tables.items()}

    @property
    def patient_id(self) -> str | None:
        """The Patient this resource belongs to (its first Patient compartment)."""
        for compartment, target in self.compartments:
            if compartment == "Patient":
                return target
        return None


@cache
def indexed_params(resource_type: str) -> tuple[tuple[SearchParam, Extractor], ...]:
    """The parameters of ``resource_type`` that have an index table, with their extractors."""
    out = []
    for code, param in search_parameters(resource_type).items():
        if param.type not in INDEXED_TYPES or param.type == "composite" \
                or code in _ON_RESOURCE_ROW or not param.expression:
            continue
        out.append((param, compile_expression(param.expression, resource_type)))
    return tuple(out)


#: A value getter and the FHIR type of what it selects ('' where only its shape tells).
_Part = tuple[Callable[[dict[str, Any]], list[Any]], str]


@dataclass(frozen=True, slots=True)
class _Step:
    """One indexed parameter of a type, ready to run on a resource of that type."""

    code: str
    kind: str                      # the index table (the parameter's type)
    parts: tuple[_Part, ...]       # one per route of the expression
    keys: frozenset[str] | None    # the top-level elements it reads; None: unknown
    where: str                     # ``Type.code``, named in a refusal
    # a reference parameter searched on its parts' rows (SearchParam.parts_target): it
    # writes only its ``:identifier`` rows, which its parts' cannot tell apart by target
    identifiers_only: bool = False


def _fhirpath_part(extract: Extractor) -> _Part:
    return (lambda resource: [node.value for node in extract(resource)], "")


@cache
def _indexing_plan(resource_type: str) -> tuple[_Step, ...]:
    """``indexed_params`` compiled for the hot path: plain getters where the expression is a
    path, and the top-level elements each one reads (to skip those a resource lacks)."""
    out = []
    for param, extract in indexed_params(resource_type):
        assert param.expression is not None
        if param.parts and param.parts_target is None:
            continue  # searched on its parts' rows (see stored_under)
        getters = compile_getters(param.expression, resource_type)
        parts = getters if getters is not None else (_fhirpath_part(extract),)
        out.append(_Step(param.code, param.type, parts,
                         first_keys(param.expression, resource_type),
                         f"{resource_type}.{param.code}", bool(param.parts)))
    return tuple(out)


CompositeExtractor = Callable[[dict[str, Any]], list[tuple[list[Node], ...]]]


@cache
def composite_params(resource_type: str) -> tuple[tuple[SearchParam, CompositeExtractor], ...]:
    """The composite parameters indexed here: two parts, a token then a token, quantity,
    date, string or number (every R4 composite but three)."""
    out = []
    for param in search_parameters(resource_type).values():
        if param.type != "composite" or not param.expression or len(param.components) != 2:
            continue
        first, second = param.components
        if first.type != "token" or second.type not in COMPOSITE_SECONDS:
            continue
        extract = compile_composite(param.expression, resource_type,
                                    (first.expression, second.expression))
        if extract is not None:
            out.append((param, extract))
    return tuple(out)


@cache
def _compartment_params(resource_type: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per compartment, the parameters whose reference rows put a resource in it,
    patient-naming first (a parameter without rows of its own, by its parts': an
    Observation's ``patient`` by its ``subject`` references to a Patient)."""
    out = []
    for compartment in sorted(COMPARTMENTS, key=lambda c: (c != "Patient", c)):
        named = sorted(compartment_params(compartment, resource_type), key=_compartment_order)
        codes: list[str] = []
        for code in named:
            stored, target = stored_under(resource_type, code)
            if target in (None, compartment):  # else all its references point elsewhere
                codes += [c for c in stored if c not in codes]
        if codes or compartment == resource_type:
            out.append((compartment, tuple(codes)))
    return tuple(out)


@cache
def stored_under(resource_type: str, code: str) -> tuple[tuple[str, ...], str | None]:
    """The ``param`` values of the index rows that hold the values of ``resource_type``'s
    parameter ``code``, and the type their references must point at (None: any).

    Its own rows, or those of its parts (``SearchParam.parts``): an Observation's
    ``combo-code`` rows would repeat its ``code`` and ``component-code`` rows, a quarter of
    its index rows, and its ``patient`` rows its ``subject`` rows that point at a Patient
    (``SearchParam.parts_target``), one in eight."""
    param = search_parameters(resource_type).get(code) if resource_type in resource_types() \
        else None
    if param is None or not param.parts:
        return (code,), None
    return param.parts, param.parts_target


def load_plans() -> None:
    """Compile the indexing of every resource type now rather than on its first write."""
    for resource_type in sorted(resource_types()):
        _indexing_plan(resource_type)
        _composite_plan(resource_type)
        _compartment_params(resource_type)


# -- values per search type -----------------------------------------------------------------
#
# Each takes the JSON value and its FHIR type (``_shape`` guesses the type where the
# expression could not say) and returns what the index table needs from it.

def _shape(value: Any, ftype: str = "") -> str:
    """The FHIR type of a value: the one its expression gave, else one guessed from its
    shape (values selected by fhirpathpy carry no type)."""
    if ftype:
        return ftype
    v = value
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "decimal"
    if isinstance(v, str):
        return "string"
    if not isinstance(v, dict):
        return ""
    if "coding" in v or ("text" in v and len(v) == 1):
        return "CodeableConcept"
    if "reference" in v:
        return "Reference"
    if "family" in v or "given" in v:
        return "HumanName"
    if "line" in v or "city" in v or "postalCode" in v:
        return "Address"
    if "start" in v or "end" in v:
        return "Period"
    if "low" in v or "high" in v:
        return "Range"
    if "value" in v and ("unit" in v or "code" in v) and not isinstance(v["value"], str):
        return "Quantity"
    if "value" in v and v.get("system") in _CONTACT_SYSTEMS:
        return "ContactPoint"
    if "value" in v and "system" in v:
        return "Identifier"
    if "code" in v or "system" in v:
        return "Coding"
    if "resourceType" in v:
        return "Resource"
    return ""


def _strings(v: Any, kind: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, dict):
        return []
    out: list[str] = []
    if kind == "HumanName":
        for key in ("text", "family"):
            if isinstance(v.get(key), str):
                out.append(v[key])
        for key in ("given", "prefix", "suffix"):
            out.extend(p for p in v.get(key) or () if isinstance(p, str))
    elif kind == "Address":
        for key in ("text", "city", "district", "state", "postalCode", "country"):
            if isinstance(v.get(key), str):
                out.append(v[key])
        out.extend(p for p in v.get("line") or () if isinstance(p, str))
    elif kind == "CodeableConcept" and isinstance(v.get("text"), str):
        out.append(v["text"])
    return out


_Token = tuple[str | None, str | None, str | None]


def _tokens(v: Any, kind: str) -> list[_Token]:
    """(system, code, folded text) triples."""
    if isinstance(v, bool):
        return [(None, "true" if v else "false", None)]
    if isinstance(v, (str, int, float)):
        return [(None, str(v), None)]
    if not isinstance(v, dict):
        return []
    if kind == "CodeableConcept":
        out: list[_Token] = []
        for coding in v.get("coding") or ():
            if isinstance(coding, dict):
                _coding(coding, out)
        text = v.get("text")
        if isinstance(text, str):
            # A text that is also a coding's display is found by :text on that coding's row
            # already; a row of its own would only cost the store (two of an Observation's
            # fifteen rows, where code.text repeats the display as it usually does).
            folded = fold(text)
            if not any(t[2] == folded for t in out):
                out.append((None, None, folded))
        return out
    if kind == "Coding":
        out = []
        _coding(v, out)
        return out
    if kind == "Identifier":
        kind_of = v.get("type")
        text = kind_of.get("text") if isinstance(kind_of, dict) else None
        system, value = v.get("system"), v.get("value")
        if isinstance(value, str) or isinstance(system, str):
            return [(system if isinstance(system, str) else None,
                     value if isinstance(value, str) else None,
                     fold(text) if isinstance(text, str) else None)]
        return []
    if kind == "ContactPoint":
        value = v.get("value")
        return [(None, value, None)] if isinstance(value, str) else []
    if kind == "Reference" and isinstance(v.get("identifier"), dict):
        return _tokens(v["identifier"], "Identifier")
    return []


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _coding(c: dict[str, Any], out: list[_Token]) -> None:
    system, code, display = c.get("system"), c.get("code"), c.get("display")
    if isinstance(code, str) or isinstance(system, str):
        out.append((system if isinstance(system, str) else None,
                    code if isinstance(code, str) else None,
                    fold(display) if isinstance(display, str) else None))


def _dates(v: Any, kind: str, where: str) -> list[tuple[Any, Any]]:
    try:
        return _date_pairs(v, kind)
    except ValueError as exc:
        raise FhirError.of(422, "value", f"{where}: {exc}", expression=where) from None


def _date_pairs(v: Any, kind: str) -> list[tuple[Any, Any]]:
    if isinstance(v, str) and kind in _DATE_TYPES:
        r = date_range(v)
        return [(r.low, r.high)]
    if isinstance(v, str):  # free text in a choice (occurrenceString): a date or nothing
        try:
            r = date_range(v)
        except ValueError:
            return []
        return [(r.low, r.high)]
    if not isinstance(v, dict):
        return []
    if kind == "Period":
        if "start" not in v and "end" not in v:
            return []
        start = date_range(v["start"]).low if isinstance(v.get("start"), str) else DATE_MIN
        end = date_range(v["end"]).high if isinstance(v.get("end"), str) else DATE_MAX
        return [(start, max(start, end))]
    if kind == "Timing":
        out = []
        for event in v.get("event") or ():
            if isinstance(event, str):
                r = date_range(event)
                out.append((r.low, r.high))
        bounds = (v.get("repeat") or {}).get("boundsPeriod")
        if isinstance(bounds, dict):
            out.extend(_date_pairs(bounds, "Period"))
        return out
    return []


def _references(v: Any, kind: str) -> list[tuple[str | None, str | None, str | None]]:
    if isinstance(v, str):
        if kind in ("canonical", "uri", "url", "string", ""):
            ref = parse_reference(v)
            if ref is not None:
                return [(ref.type, ref.id, ref.url)]
        return []
    if not isinstance(v, dict):
        return []
    if kind == "Resource":
        if isinstance(v.get("resourceType"), str) and isinstance(v.get("id"), str):
            return [(v["resourceType"], v["id"], None)]
        return []
    if kind == "Attachment":
        return [(None, None, cut(v["url"]))] if isinstance(v.get("url"), str) else []
    if isinstance(v.get("reference"), str):
        ref = parse_reference(v["reference"])
        if ref is not None:
            return [(ref.type, ref.id, ref.url)]
    return []


def _decimal(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


_Quantity = tuple[float, float, str | None, str | None, float | None, float | None, str | None]


def _quantities(v: Any, kind: str) -> list[_Quantity]:
    """(low, high, system, code, canonical low, canonical high, canonical code)."""
    if kind == "Range" and isinstance(v, dict):
        low: dict[str, Any] = v["low"] if isinstance(v.get("low"), dict) else {}
        high: dict[str, Any] = v["high"] if isinstance(v.get("high"), dict) else {}
        lo, hi = _decimal(low.get("value")), _decimal(high.get("value"))
        if lo is None and hi is None:
            return []
        unit = low if lo is not None else high
        return [_quantity(lo if lo is not None else float("-inf"),
                          hi if hi is not None else float("inf"), unit)]
    if kind == "Money" and isinstance(v, dict):
        value = _decimal(v.get("value"))
        if value is None:
            return []
        return [_quantity(value, value, {"system": "urn:iso:std:iso:4217",
                                         "code": v.get("currency")})]
    if isinstance(v, dict):
        value = _decimal(v.get("value"))
        return [] if value is None else [_quantity(value, value, v)]
    value = _decimal(v)
    return [] if value is None else [_quantity(value, value, _NO_UNIT)]


_NO_UNIT: dict[str, Any] = {}


def _quantity(low: float, high: float, unit: dict[str, Any]) -> _Quantity:
    system = _text_or_none(unit.get("system"))
    code = _text_or_none(unit.get("code"))
    stored = code
    if code is None and isinstance(unit.get("unit"), str):
        stored = cut(unit["unit"])
    if code is not None and system == UCUM_SYSTEM:
        factor, canon = canonical(code)
        return (low, high, system, stored, low * factor, high * factor, cut(canon))
    return (low, high, system, stored, None, None, None)


def _numbers(v: Any, kind: str) -> list[tuple[float, float]]:
    if isinstance(v, dict) and kind == "Range":
        lo = _decimal((v.get("low") or {}).get("value"))
        hi = _decimal((v.get("high") or {}).get("value"))
        if lo is not None or hi is not None:
            return [(lo if lo is not None else float("-inf"),
                     hi if hi is not None else float("inf"))]
        return []
    value = _decimal(v.get("value")) if isinstance(v, dict) else _decimal(v)
    return [] if value is None else [(value, value)]


# -- the resource ---------------------------------------------------------------------------

def index_resource(resource: dict[str, Any]) -> IndexRows:
    """Every index row of ``resource`` (without ``resource_pk``, which the store adds)."""
    rtype = resource["resourceType"]
    tables: dict[str, list[tuple[Any, ...]]] = {}
    refs_by_param: dict[str, list[tuple[str | None, str | None]]] = {}
    for step in _indexing_plan(rtype):
        keys = step.keys
        if keys is not None and keys.isdisjoint(resource):
            continue
        code = step.code
        kind = step.kind
        seen: set[Any] = set()
        rows = tables.get(kind)
        if rows is None:
            rows = tables[kind] = []
        for get, ftype in step.parts:
            for v in get(resource):
                shape = ftype or _shape(v)
                if kind == "token":
                    for system, tcode, text in _tokens(v, shape):
                        key3 = (cut(system) if system else None, cut(tcode) if tcode else None,
                                text)
                        if key3 not in seen and (system or tcode or text):
                            seen.add(key3)
                            rows.append((rtype, code, *key3))
                    if shape == "Identifier":
                        _of_type(rtype, code, v, rows)
                elif kind == "reference":
                    for target in () if step.identifiers_only else _references(v, shape):
                        if target not in seen:
                            seen.add(target)
                            rows.append((rtype, code, *target))
                            refs_by_param.setdefault(code, []).append(target[:2])
                    ident = v.get("identifier") if isinstance(v, dict) else None
                    if isinstance(ident, dict):
                        for system, value, _ in _tokens(ident, "Identifier"):
                            if value is not None:
                                tables.setdefault("token", []).append(
                                    (rtype, f"{code}{BY_IDENTIFIER}",
                                     cut(system) if system else None, cut(value), None))
                elif kind == "date":
                    for pair in _dates(v, shape, step.where):
                        if pair not in seen:
                            seen.add(pair)
                            rows.append((rtype, code, *pair))
                elif kind == "string":
                    for text in _strings(v, shape):
                        key = (fold(text), text)
                        if key[0] and key not in seen:
                            seen.add(key)
                            rows.append((rtype, code, *key))
                elif kind == "quantity":
                    rows.extend((rtype, code, *q) for q in _quantities(v, shape))
                elif kind == "number":
                    rows.extend((rtype, code, *n) for n in _numbers(v, shape))
                elif kind == "uri" and isinstance(v, str):
                    u = cut(v)
                    if u not in seen:
                        seen.add(u)
                        rows.append((rtype, code, u))
    _composites(rtype, resource, tables)
    compartments: list[tuple[str, str]] = []
    for compartment, codes in _compartment_params(rtype):
        members: list[str] = []
        if compartment == rtype and isinstance(resource.get("id"), str):
            members.append(resource["id"])
        for code in codes:
            for ttype, tid in refs_by_param.get(code, ()):
                if ttype == compartment and tid and tid not in members:
                    members.append(tid)
        compartments.extend((compartment, m) for m in members)
    return IndexRows({k: v for k, v in tables.items() if v}, compartments)


def _of_type(rtype: str, code: str, identifier: Any, rows: list[tuple[Any, ...]]) -> None:
    """Rows for ``:of-type``: the identifier's type coding (as ``system|code``) and value."""
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return
    kind = identifier.get("type")
    for coding in (kind.get("coding") or ()) if isinstance(kind, dict) else ():
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            rows.append((rtype, f"{code}{OF_TYPE}",
                         cut(f"{coding.get('system') or ''}|{coding['code']}"),
                         cut(identifier["value"]), None))


# The second part of a composite row: system, code, low, high, canonical low, canonical
# high, canonical code, date low, date high, value, exact (the columns after a_code).
_Second = tuple[Any, Any, Any, Any, Any, Any, Any, Any, Any, Any, Any]


def _composites(rtype: str, resource: dict[str, Any],
                tables: dict[str, list[tuple[Any, ...]]]) -> None:
    for code, second_type, routes, where in _composite_plan(rtype):
        seen_rows: set[tuple[Any, ...]] = set()
        for route in routes:
            if route.select is None:
                first_keys_, second_keys = route.keys
                # Nothing to pair without the second part; without the first, only a date
                # (which may be refused) is worth reading.
                if second_keys is not None and second_keys.isdisjoint(resource):
                    continue
                if first_keys_ is not None and first_keys_.isdisjoint(resource) \
                        and second_type != "date":
                    continue
                nodes: list[Any] = [resource]
            else:
                nodes = route.select(resource)
            firsts, seconds = route.components
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                heads = [(sys_, head) for get, ftype in firsts for v in get(node)
                         for sys_, head, _ in _tokens(v, ftype or _shape(v))
                         if head is not None]
                tails = [t for get, ftype in seconds for v in get(node)
                         for t in _composite_second(second_type, v, ftype, where)]
                for a_system, a_code in heads:
                    for tail in tails:
                        row = (rtype, code, cut(a_system) if a_system else None,
                               cut(a_code), *tail)
                        if row not in seen_rows:
                            seen_rows.add(row)
                            tables.setdefault("composite", []).append(row)


@cache
def _composite_plan(resource_type: str
                    ) -> tuple[tuple[str, str, tuple[CompositeRoute, ...], str], ...]:
    """``composite_params`` compiled to getters: (code, second part's type, routes, where)."""
    out = []
    for param, _ in composite_params(resource_type):
        assert param.expression is not None
        if param.parts:
            continue
        first, second = param.components
        routes = compile_composite_routes(param.expression, resource_type,
                                          (first.expression, second.expression))
        assert routes is not None  # composite_params keeps only the compilable
        out.append((param.code, second.type, routes, f"{resource_type}.{param.code}"))
    return tuple(out)


def _composite_second(kind: str, v: Any, ftype: str, where: str) -> list[_Second]:
    """The columns of a composite's second part, by its type."""
    shape = ftype or _shape(v)
    if kind == "token":
        return [(cut(system) if system else None, cut(code), None, None, None, None, None,
                 None, None, None, None)
                for system, code, _ in _tokens(v, shape) if code is not None]
    if kind == "quantity":
        return [(system, code, low, high, c_low, c_high, c_code, None, None, None, None)
                for low, high, system, code, c_low, c_high, c_code in _quantities(v, shape)]
    if kind == "number":
        return [(None, None, low, high, None, None, None, None, None, None, None)
                for low, high in _numbers(v, shape)]
    if kind == "date":
        return [(None, None, None, None, None, None, None, low, high, None, None)
                for low, high in _dates(v, shape, where)]
    if kind == "string":
        return [(None, None, None, None, None, None, None, None, None, fold(text), text)
                for text in _strings(v, shape) if fold(text)]
    return []


def _compartment_order(code: str) -> tuple[int, str]:
    """Prefer the parameters that name the resource's own patient for its patient_id."""
    return ({"patient": 0, "subject": 1, "beneficiary": 2}.get(code, 3), code)
