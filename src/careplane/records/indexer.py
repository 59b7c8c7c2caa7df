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

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from careplane.records.errors import FhirError
from careplane.records.extract import (
    Extractor,
    Node,
    compile_composite,
    compile_expression,
    first_keys,
)
from careplane.records.spec import (
    COMPARTMENTS,
    SearchParam,
    compartment_params,
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
           "composite_params", "index_resource", "indexed_params"]

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


@dataclass
class IndexRows:
    """The rows of one resource, by index table name (the search-parameter type)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    compartments: list[tuple[str, str]] = field(default_factory=list)  # (compartment, id)

    def add(self, kind: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(row)

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


@cache
def _indexing_plan(resource_type: str
                   ) -> tuple[tuple[SearchParam, Extractor, frozenset[str] | None], ...]:
    """``indexed_params`` with the top-level elements each one reads (to skip the absent)."""
    return tuple((param, extract, first_keys(param.expression, resource_type))
                 for param, extract in indexed_params(resource_type))


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
def _compartment_params(resource_type: str) -> tuple[tuple[str, frozenset[str]], ...]:
    out = []
    for compartment in sorted(COMPARTMENTS, key=lambda c: c != "Patient"):
        codes = frozenset(compartment_params(compartment, resource_type))
        if codes or compartment == resource_type:
            out.append((compartment, codes))
    return tuple(out)


# -- values per search type -----------------------------------------------------------------

def _shape(node: Node) -> str:
    """The FHIR type of a value selected without type information, from its shape."""
    if node.type:
        return node.type
    v = node.value
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


def _strings(node: Node) -> Iterator[str]:
    kind = _shape(node)
    v = node.value
    if isinstance(v, str):
        yield v
    elif kind == "HumanName" and isinstance(v, dict):
        for key in ("text", "family"):
            if isinstance(v.get(key), str):
                yield v[key]
        for key in ("given", "prefix", "suffix"):
            yield from (p for p in v.get(key) or () if isinstance(p, str))
    elif kind == "Address" and isinstance(v, dict):
        for key in ("text", "city", "district", "state", "postalCode", "country"):
            if isinstance(v.get(key), str):
                yield v[key]
        yield from (p for p in v.get("line") or () if isinstance(p, str))
    elif kind == "CodeableConcept" and isinstance(v, dict) and isinstance(v.get("text"), str):
        yield v["text"]


def _tokens(node: Node) -> Iterator[tuple[str | None, str | None, str | None]]:
    """(system, code, folded text) triples."""
    kind = _shape(node)
    v = node.value
    if isinstance(v, bool):
        yield None, "true" if v else "false", None
    elif isinstance(v, (str, int, float)):
        yield None, str(v), None
    elif not isinstance(v, dict):
        return
    elif kind == "CodeableConcept":
        for coding in v.get("coding") or ():
            if isinstance(coding, dict):
                yield from _coding(coding)
        if isinstance(v.get("text"), str):
            yield None, None, fold(v["text"])
    elif kind == "Coding":
        yield from _coding(v)
    elif kind == "Identifier":
        text = (v.get("type") or {}).get("text") if isinstance(v.get("type"), dict) else None
        if isinstance(v.get("value"), str) or isinstance(v.get("system"), str):
            yield (_text_or_none(v.get("system")), _text_or_none(v.get("value")),
                   fold(text) if isinstance(text, str) else None)
    elif kind == "ContactPoint":
        if isinstance(v.get("value"), str):
            yield None, v["value"], None
    elif kind == "Reference" and isinstance(v.get("identifier"), dict):
        yield from _tokens(Node(v["identifier"], "Identifier"))


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _coding(c: dict[str, Any]) -> Iterator[tuple[str | None, str | None, str | None]]:
    system, code, display = c.get("system"), c.get("code"), c.get("display")
    if isinstance(code, str) or isinstance(system, str):
        yield (_text_or_none(system), _text_or_none(code),
               fold(display) if isinstance(display, str) else None)


def _dates(node: Node, where: str) -> Iterator[tuple[Any, Any]]:
    kind = _shape(node)
    v = node.value
    try:
        if isinstance(v, str) and kind in _DATE_TYPES:
            r = date_range(v)
            yield r.low, r.high
        elif isinstance(v, str):  # free text in a choice (occurrenceString): a date or nothing
            try:
                r = date_range(v)
            except ValueError:
                return
            yield r.low, r.high
        elif kind == "Period" and isinstance(v, dict):
            start = date_range(v["start"]).low if isinstance(v.get("start"), str) else DATE_MIN
            end = date_range(v["end"]).high if isinstance(v.get("end"), str) else DATE_MAX
            if "start" in v or "end" in v:
                yield start, max(start, end)
        elif kind == "Timing" and isinstance(v, dict):
            for event in v.get("event") or ():
                if isinstance(event, str):
                    r = date_range(event)
                    yield r.low, r.high
            bounds = (v.get("repeat") or {}).get("boundsPeriod")
            if isinstance(bounds, dict):
                yield from _dates(Node(bounds, "Period"), where)
    except ValueError as exc:
        raise FhirError.of(422, "value", f"{where}: {exc}", expression=where) from None


def _references(node: Node) -> Iterator[tuple[str | None, str | None, str | None]]:
    kind = _shape(node)
    v = node.value
    if isinstance(v, str) and kind in ("canonical", "uri", "url", "string", ""):
        ref = parse_reference(v)
        if ref is not None:
            yield ref.type, ref.id, ref.url
    elif kind == "Resource" and isinstance(v, dict):
        if isinstance(v.get("resourceType"), str) and isinstance(v.get("id"), str):
            yield v["resourceType"], v["id"], None
    elif kind == "Attachment" and isinstance(v, dict) and isinstance(v.get("url"), str):
        yield None, None, cut(v["url"])
    elif isinstance(v, dict) and isinstance(v.get("reference"), str):
        ref = parse_reference(v["reference"])
        if ref is not None:
            yield ref.type, ref.id, ref.url


def _decimal(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _quantities(node: Node) -> Iterator[dict[str, Any]]:
    kind = _shape(node)
    v = node.value
    if kind == "Range" and isinstance(v, dict):
        low: dict[str, Any] = v["low"] if isinstance(v.get("low"), dict) else {}
        high: dict[str, Any] = v["high"] if isinstance(v.get("high"), dict) else {}
        lo, hi = _decimal(low.get("value")), _decimal(high.get("value"))
        if lo is None and hi is None:
            return
        unit = low if lo is not None else high
        yield _quantity_row(lo if lo is not None else float("-inf"),
                            hi if hi is not None else float("inf"), unit)
    elif kind == "Money" and isinstance(v, dict):
        value = _decimal(v.get("value"))
        if value is not None:
            yield _quantity_row(value, value, {"system": "urn:iso:std:iso:4217",
                                               "code": v.get("currency")})
    elif isinstance(v, dict):
        value = _decimal(v.get("value"))
        if value is not None:
            yield _quantity_row(value, value, v)
    else:
        value = _decimal(v)
        if value is not None:
            yield _quantity_row(value, value, {})


def _quantity_row(low: float, high: float, unit: dict[str, Any]) -> dict[str, Any]:
    system = _text_or_none(unit.get("system"))
    code = _text_or_none(unit.get("code"))
    row: dict[str, Any] = {"low": low, "high": high, "system": system, "code": code,
                           "canonical_low": None, "canonical_high": None,
                           "canonical_code": None}
    if code is None and isinstance(unit.get("unit"), str):
        row["code"] = cut(unit["unit"])
    if code is not None and system == UCUM_SYSTEM:
        factor, canon = canonical(code)
        row.update(canonical_low=low * factor, canonical_high=high * factor,
                   canonical_code=cut(canon))
    return row


def _numbers(node: Node) -> Iterator[tuple[float, float]]:
    v = node.value
    if isinstance(v, dict) and _shape(node) == "Range":
        lo = _decimal((v.get("low") or {}).get("value"))
        hi = _decimal((v.get("high") or {}).get("value"))
        if lo is not None or hi is not None:
            yield (lo if lo is not None else float("-inf"), hi if hi is not None else float("inf"))
    elif isinstance(v, dict):
        value = _decimal(v.get("value"))
        if value is not None:
            yield value, value
    else:
        value = _decimal(v)
        if value is not None:
            yield value, value


def _uris(node: Node) -> Iterator[str]:
    v = node.value
    if isinstance(v, str):
        yield cut(v)


# -- the resource ---------------------------------------------------------------------------

def index_resource(resource: dict[str, Any]) -> IndexRows:
    """Every index row of ``resource`` (without ``resource_pk``, which the store adds)."""
    rtype = resource["resourceType"]
    out = IndexRows()
    refs_by_param: dict[str, list[tuple[str | None, str | None]]] = {}
    for param, extract, keys in _indexing_plan(rtype):
        if keys is not None and keys.isdisjoint(resource):
            continue
        nodes = extract(resource)
        if not nodes:
            continue
        code = param.code
        base = {"resource_type": rtype, "param": code}
        seen: set[Any] = set()
        kind = param.type
        for node in nodes:
            if kind == "string":
                for s in _strings(node):
                    key = (fold(s), s)
                    if key[0] and key not in seen:
                        seen.add(key)
                        out.add(kind, {**base, "value": key[0], "exact": s})
            elif kind == "token":
                for system, tcode, text in _tokens(node):
                    key3 = (cut(system) if system else None, cut(tcode) if tcode else None, text)
                    if key3 not in seen and (system or tcode or text):
                        seen.add(key3)
                        out.add(kind, {**base, "system": key3[0], "code": key3[1],
                                       "text": key3[2]})
                if _shape(node) == "Identifier":
                    for row in _of_type(node.value):
                        out.add(kind, {**base, "param": f"{code}{OF_TYPE}", **row})
            elif kind == "date":
                for low, high in _dates(node, f"{rtype}.{code}"):
                    if (low, high) not in seen:
                        seen.add((low, high))
                        out.add(kind, {**base, "low": low, "high": high})
            elif kind == "reference":
                for ttype, tid, url in _references(node):
                    if (ttype, tid, url) not in seen:
                        seen.add((ttype, tid, url))
                        out.add(kind, {**base, "target_type": ttype, "target_id": tid,
                                       "url": url})
                        refs_by_param.setdefault(code, []).append((ttype, tid))
                ident = node.value.get("identifier") if isinstance(node.value, dict) else None
                if isinstance(ident, dict):
                    for system, value, _ in _tokens(Node(ident, "Identifier")):
                        if value is not None:
                            out.add("token", {**base, "param": f"{code}{BY_IDENTIFIER}",
                                              "system": cut(system) if system else None,
                                              "code": cut(value), "text": None})
            elif kind == "quantity":
                for row in _quantities(node):
                    out.add(kind, {**base, **row})
            elif kind == "number":
                for low, high in _numbers(node):
                    out.add(kind, {**base, "low": low, "high": high})
            elif kind == "uri":
                for u in _uris(node):
                    if u not in seen:
                        seen.add(u)
                        out.add(kind, {**base, "value": u})
    for param, extract_parts in composite_params(rtype):
        where = f"{rtype}.{param.code}"
        second_type = param.components[1].type
        seen_rows: set[tuple[Any, ...]] = set()
        for firsts, seconds in extract_parts(resource):
            heads = [(sys_, code) for n in firsts for sys_, code, _ in _tokens(n)
                     if code is not None]
            tails = [t for n in seconds for t in _composite_second(second_type, n, where)]
            for a_system, a_code in heads:
                for tail in tails:
                    row = {"resource_type": rtype, "param": param.code,
                           "a_system": cut(a_system) if a_system else None,
                           "a_code": cut(a_code), **_COMPOSITE_EMPTY, **tail}
                    row_key = tuple(sorted(row.items(), key=lambda kv: kv[0]))
                    if row_key not in seen_rows:
                        seen_rows.add(row_key)
                        out.add("composite", row)
    for compartment, codes in _compartment_params(rtype):
        members: list[str] = []
        if compartment == rtype and isinstance(resource.get("id"), str):
            members.append(resource["id"])
        for code in sorted(codes, key=_compartment_order):
            for ttype, tid in refs_by_param.get(code, ()):
                if ttype == compartment and tid and tid not in members:
                    members.append(tid)
        out.compartments.extend((compartment, m) for m in members)
    return out


def _of_type(identifier: Any) -> Iterator[dict[str, Any]]:
    """Rows for ``:of-type``: the identifier's type coding (as ``system|code``) and value."""
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return
    kind = identifier.get("type")
    for coding in (kind.get("coding") or ()) if isinstance(kind, dict) else ():
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            yield {"system": cut(f"{coding.get('system') or ''}|{coding['code']}"),
                   "code": cut(identifier["value"]), "text": None}


_COMPOSITE_EMPTY: dict[str, Any] = {
    "system": None, "code": None, "low": None, "high": None, "canonical_low": None,
    "canonical_high": None, "canonical_code": None, "date_low": None, "date_high": None,
    "value": None, "exact": None}


def _composite_second(kind: str, node: Node, where: str) -> Iterator[dict[str, Any]]:
    """The columns of a composite's second part, by its type."""
    if kind == "token":
        for system, code, _ in _tokens(node):
            if code is not None:
                yield {"system": cut(system) if system else None, "code": cut(code)}
    elif kind == "quantity":
        for q in _quantities(node):
            yield {k: q[k] for k in ("low", "high", "system", "code", "canonical_low",
                                     "canonical_high", "canonical_code")}
    elif kind == "number":
        for low, high in _numbers(node):
            yield {"low": low, "high": high}
    elif kind == "date":
        for low, high in _dates(node, where):
            yield {"date_low": low, "date_high": high}
    elif kind == "string":
        for text in _strings(node):
            if fold(text):
                yield {"value": fold(text), "exact": text}


def _compartment_order(code: str) -> tuple[int, str]:
    """Prefer the parameters that name the resource's own patient for its patient_id."""
    return ({"patient": 0, "subject": 1, "beneficiary": 2}.get(code, 3), code)
