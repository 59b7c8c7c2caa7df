"""Read a FHIR search query into criteria and result controls, checking it against the spec.

``parse_search`` takes the query's (name, value) pairs as sent, in order: a repeated name is
AND, a comma inside a value is OR (``\\,`` is a literal comma). Each name is looked up among
the resource type's SearchParameters (from ``careplane.records.spec``) with its modifier
(``name:exact``), chain (``subject:Patient.name``) or reverse chain (``_has:...``); each
value is parsed by the parameter's type (prefixes for dates, numbers and quantities,
``system|code`` for tokens). What the server cannot honour - an unknown parameter, a
modifier that its type does not take, a parameter type that is not indexed - is refused
(``Prefer: handling=strict``) or dropped and reported back (lenient, the default). A value
that cannot mean anything (``birthdate=yesterday``) is a 400 either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

from careplane.records.errors import FhirError, Issue
from careplane.records.indexer import INDEXED_TYPES, composite_params
from careplane.records.spec import SearchParam, resource_types, search_parameters
from careplane.records.values import DateRange, date_range, parse_reference

__all__ = [
    "PREFIXES",
    "CompositeValue",
    "Criterion",
    "FilterExpr",
    "Include",
    "NearValue",
    "NumberValue",
    "QuantityValue",
    "ReferenceValue",
    "SearchRequest",
    "SortKey",
    "ThreePartValue",
    "TokenValue",
    "ValueSetCodes",
    "parse_one",
    "parse_search",
    "split_values",
    "three_part",
    "unescape",
]

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]

# The modifiers each parameter type takes here (the FHIR search page defines the full set).
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "missing", "of-type", "in", "not-in", "above",
                        "below"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "reference": frozenset({"missing", "identifier"}),  # plus :Type, checked apart
    "uri": frozenset({"below", "above", "missing"}),
    "composite": frozenset({"missing"}),
}
RESULT_PARAMS = frozenset({"_count", "_sort", "_include", "_revinclude", "_summary",
                           "_elements", "_total", "_format", "_pretty", "_cursor",
                           "_contained", "_containedType"})
SUMMARY_MODES = frozenset({"true", "false", "text", "data", "count"})
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_VALUES = 100
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]+")


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: any system; "" : no system (``|code``)
    code: str | None    # None: any code (``system|``)


@dataclass(frozen=True, slots=True)
class NumberValue:
    prefix: Prefix
    value: float
    low: float   # the range the value's precision implies (100 -> [99.5, 100.5))
    high: float


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: Prefix
    range: DateRange


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """``code$value``: a token, and the second part parsed by its own type."""

    first: TokenValue
    second: str | TokenValue | NumberValue | QuantityValue | DateValue
    second_type: str


@dataclass(frozen=True, slots=True)
class NearValue:
    """``near=lat|long|distance|units`` on Location, the distance in kilometres."""

    latitude: float
    longitude: float
    km: float


@dataclass(frozen=True, slots=True)
class ValueSetCodes:
    """A ValueSet named by ``:in``/``:not-in``, expanded: explicit ``(system, code)`` pairs
    (system None: any), whole ``systems`` it includes, and codes ``excluded`` from those."""

    url: str
    codes: tuple[tuple[str | None, str], ...] = ()
    systems: tuple[str, ...] = ()
    excluded: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ThreePartValue:
    """``token$value$value`` of a three-part composite, each part parsed by its type."""

    first: TokenValue
    second: NumberValue
    third: NumberValue


Value = str | ValueSetCodes | NearValue | ThreePartValue | TokenValue | NumberValue | \
    QuantityValue | DateValue | ReferenceValue | CompositeValue


@dataclass(frozen=True)
class Criterion:
    """One ``name[:modifier]=v1,v2`` of the query: the values are OR'd.

    A chained criterion (``subject:Patient.name=x``) carries ``chains``: for each type the
    reference may point at, the criterion applied to resources of that type. A reverse chain
    (``_has:Observation:patient:code=x``) carries ``has`` (source type, reference parameter)
    and, in ``chains``, the criterion on the source. ``param`` is None for ``_id`` and
    ``_lastUpdated``, which live on the resource row.
    """

    name: str
    type: str
    param: SearchParam | None
    modifier: str | None = None
    values: tuple[Value, ...] = ()
    missing: bool | None = None
    chains: tuple[tuple[str, Criterion], ...] = ()
    has: tuple[str, str] | None = None
    filter: FilterExpr | None = None


@dataclass(frozen=True)
class FilterExpr:
    """A ``_filter`` expression's logic: ``and``/``or`` of its parts, or ``not`` of one; a
    part is a further expression or a Criterion (one ``param op value`` test)."""

    op: Literal["and", "or", "not"]
    parts: tuple[Criterion | FilterExpr, ...]


@dataclass(frozen=True, slots=True)
class SortKey:
    name: str
    type: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=Source:param[:Target]`` or the same for ``_revinclude``; ``*`` for any."""

    source: str
    param: str
    target: str | None
    iterate: bool
    reverse: bool

    @property
    def text(self) -> str:
        base = f"{self.source}:{self.param}" + (f":{self.target}" if self.target else "")
        return base


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: tuple[str, ...] = ()
    #: ``_total`` as asked; ``None`` when the client did not ask (see search._page: counted
    #: up to a bound)
    total: str | None = None
    cursor: str | None = None
    used: list[tuple[str, str]] = field(default_factory=list)  # for the self link
    warnings: list[Issue] = field(default_factory=list)


def split_values(raw: str) -> list[str]:
    """Split on commas that are not escaped with a backslash.

    Only ``\\,`` is resolved here; the other escapes (``\\|``, ``\\$``, ``\\\\``) stay for the
    value's own parser, which splits on them before unescaping.
    """
    out, cur, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            cur.append(raw[i + 1] if raw[i + 1] == "," else raw[i:i + 2])
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unescape(raw: str) -> str:
    """Resolve the search syntax's backslash escapes (``\\|`` ``\\$`` ``\\,`` ``\\\\``)."""
    return re.sub(r"\\(.)", r"\1", raw)


def _split_unescaped(raw: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (escapes are kept)."""
    parts, start, i = [], 0, 0
    while i < len(raw):
        if raw[i] == "\\":
            i += 2
            continue
        if raw[i] == sep:
            parts.append(raw[start:i])
            start = i + 1
        i += 1
    parts.append(raw[start:])
    return parts


def _split_token(raw: str) -> tuple[str | None, str | None]:
    """``system|code`` honouring ``\\|``; returns (None, code) when there is no bar."""
    parts = _split_unescaped(raw, "|")
    if len(parts) == 1:
        return None, unescape(raw)
    return unescape(parts[0]), unescape("|".join(parts[1:]))


def _bad(name: str, message: str) -> FhirError:
    return FhirError.of(400, "invalid", f"search parameter {name}: {message}")


def _prefix(raw: str) -> tuple[Prefix, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[2].isalpha():
        return raw[:2], raw[2:]  # type: ignore[return-value]
    return "eq", raw


def parse_number(name: str, raw: str) -> NumberValue:
    prefix, text = _prefix(raw)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _bad(name, f"{raw!r} is not a number") from None
    if not number.is_finite():
        raise _bad(name, f"{raw!r} is not a finite number")
    exponent = number.as_tuple().exponent
    half = Decimal(5) * Decimal(10) ** (int(exponent) - 1) if isinstance(exponent, int) else 0
    return NumberValue(prefix, float(number), float(number - half), float(number + half))


def _parse_value(name: str, ptype: str, raw: str, modifier: str | None) -> Value:
    if ptype == "token" and modifier == "of-type":
        parts = _split_unescaped(raw, "|")
        if len(parts) != 3 or not all(parts):
            raise _bad(name, f"{raw!r} is not type-system|type-code|value")
        return TokenValue(f"{unescape(parts[0])}|{unescape(parts[1])}", unescape(parts[2]))
    if ptype == "reference" and modifier == "identifier":
        return _parse_value(name, "token", raw, None)
    if ptype == "token":
        if modifier in ("text", "in", "not-in"):
            return unescape(raw)  # for :in/:not-in, the ValueSet, resolved when searching
        system, code = _split_token(raw)
        if system is None:
            return TokenValue(None, code or None)
        return TokenValue(system, code or None)
    if ptype == "string" or ptype == "uri":
        return unescape(raw)
    if ptype == "date":
        prefix, text = _prefix(raw)
        try:
            return DateValue(prefix, date_range(text))
        except ValueError as exc:
            raise _bad(name, str(exc)) from None
    if ptype == "number":
        return parse_number(name, raw)
    if ptype == "quantity":
        parts = [unescape(p) for p in _split_unescaped(raw, "|")]
        if len(parts) not in (1, 3):
            raise _bad(name, f"{raw!r} is not [prefix]number[|system|code]")
        number = parse_number(name, parts[0])
        system = parts[1] or None if len(parts) == 3 else None
        code = parts[2] or None if len(parts) == 3 else None
        return QuantityValue(number, system, code)
    if ptype == "composite":
        raise _bad(name, "composite values are parsed with their parameter")
    if ptype == "reference":
        raw = unescape(raw)
        if "/" not in raw and ":" not in raw:
            return ReferenceValue(None, raw, None)
        ref = parse_reference(raw)
        if ref is None:
            raise _bad(name, f"{raw!r} is not a reference (Type/id, id or a URL)")
        if ref.url is not None:
            return ReferenceValue(ref.type, ref.id, ref.url)
        return ReferenceValue(ref.type, ref.id, None)
    raise _bad(name, f"parameters of type {ptype} are not supported")


class _Refusal(Exception):
    """Something this server does not support: strict refuses, lenient reports and drops."""


def _lookup(resource_type: str, code: str) -> SearchParam:
    param = search_parameters(resource_type).get(code)
    if param is None:
        raise _Refusal(f"{resource_type} has no search parameter {code!r}")
    if param.type == "composite" and not three_part(param) and code not in {
            p.code for p, _ in composite_params(resource_type)}:
        raise _Refusal(f"{resource_type}.{code} is a composite of parts this server does "
                       "not index together")
    if param.expression is None and code not in ("_id", "_lastUpdated"):
        raise _Refusal(f"{resource_type}.{code} is not supported by this server")
    if param.type not in INDEXED_TYPES and code not in ("_id", "_lastUpdated"):
        raise _Refusal(f"{resource_type}.{code} is a {param.type} parameter, which this "
                       "server does not search")
    return param


def _criterion(resource_type: str, name: str, raw: str, depth: int = 0) -> Criterion:
    """One query parameter (``name`` as sent, with modifier or chain) into a Criterion."""
    if name.startswith("_has:"):
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise _bad(name, "use _has:Type:reference-parameter:parameter=value")
        _, source, ref_code, rest = parts
        if source not in resource_types():
            raise _Refusal(f"_has names {source!r}, which is not a resource type")
        ref_param = _lookup(source, ref_code)
        if ref_param.type != "reference":
            raise _Refusal(f"{source}.{ref_code} is not a reference parameter")
        if ref_param.target and resource_type not in ref_param.target:
            raise _Refusal(f"{source}.{ref_code} never refers to a {resource_type}")
        inner = _criterion(source, rest, raw, depth + 1)
        return Criterion(name, "reverse-chain", None, has=(source, ref_code),
                         chains=((source, inner),))
    head, dot, chained = name.partition(".")
    code, _, modifier_text = head.partition(":")
    modifier = modifier_text or None
    if code in ("_id", "_lastUpdated") and not dot:
        ptype = "token" if code == "_id" else "date"
        if modifier not in (None, "missing") and not (code == "_id" and modifier == "not"):
            raise _Refusal(f"{code} does not take the modifier :{modifier}")
        return _finish(name, ptype, None, modifier, raw)
    if code in ("_text", "_content") and not dot:
        param = search_parameters(resource_type).get(code)
        if param is None:
            raise _Refusal(f"{resource_type} has no search parameter {code!r}")
        if modifier is not None:
            raise _Refusal(f"{code} does not take the modifier :{modifier}")
        return Criterion(name, "fulltext", param, None, _plain_values(name, raw))
    if code == "_list" and not dot:
        if modifier is not None:
            raise _Refusal(f"_list does not take the modifier :{modifier}")
        ids = _plain_values(name, raw)
        if not all(_LIST_ID.fullmatch(i) for i in ids):
            raise _bad(name, "names a List by its id (functional lists such as $current-"
                             "problems are not kept by this server)")
        return Criterion(name, "list", None, None, ids)
    if code == "near" and resource_type == "Location" and not dot:
        if modifier is not None:
            raise _Refusal(f"near does not take the modifier :{modifier}")
        values = tuple(parse_near(name, p) for p in split_values(raw) if p)
        if not values:
            raise _bad(name, "has no value")
        return Criterion(name, "near", search_parameters("Location")["near"], None, values)
    param = _lookup(resource_type, code)
    if dot:
        if param.type != "reference":
            raise _bad(name, f"{code} is not a reference parameter and cannot be chained")
        if depth >= 2:
            raise _Refusal(f"{name}: chains deeper than two levels are not supported")
        if modifier is not None:
            if not _TYPE_NAME.fullmatch(modifier) or modifier not in resource_types():
                raise _bad(name, f":{modifier} is not a resource type")
            types: tuple[str, ...] = (modifier,)
        else:
            types = tuple(t for t in param.target if t in resource_types()) or ()
        chains = []
        for t in types:
            try:
                chains.append((t, _criterion(t, chained, raw, depth + 1)))
            except _Refusal:
                continue
        if not chains:
            raise _Refusal(f"{name}: no type that {code} refers to has a parameter "
                           f"{chained.split(':')[0]!r}")
        return Criterion(name, "chain", param, chains=tuple(chains))
    return _finish(name, param.type, param, modifier, raw)


#: Kilometres per unit for ``near`` (UCUM codes; kilometres when none is given).
_NEAR_UNITS = {"km": 1.0, "m": 0.001, "[mi_i]": 1.609344, "mi": 1.609344,
               "[nmi_i]": 1.852}
#: ``near`` without a distance: within this many kilometres.
NEAR_DEFAULT_KM = 5.0


def parse_near(name: str, raw: str) -> NearValue:
    parts = [unescape(p) for p in _split_unescaped(raw, "|")]
    if len(parts) < 2 or len(parts) > 4:
        raise _bad(name, f"{raw!r} is not latitude|longitude[|distance[|units]]")
    try:
        lat, lon = float(parts[0]), float(parts[1])
        distance = float(parts[2]) if len(parts) > 2 and parts[2] else NEAR_DEFAULT_KM
    except ValueError:
        raise _bad(name, f"{raw!r}: latitude, longitude and distance are numbers") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise _bad(name, f"{raw!r}: latitude is within ±90 and longitude within ±180")
    if not distance >= 0 or distance == float("inf"):
        raise _bad(name, f"{raw!r}: the distance is a finite number, zero or more")
    unit = parts[3] if len(parts) > 3 and parts[3] else "km"
    if len(parts) > 2 and not parts[2]:
        unit = "km"
    if unit not in _NEAR_UNITS:
        raise _bad(name, f"unit {unit!r}: one of {', '.join(sorted(_NEAR_UNITS))}")
    return NearValue(lat, lon, distance * _NEAR_UNITS[unit])


def parse_one(resource_type: str, name: str, raw: str) -> Criterion:
    """One ``name=raw`` of a query as a Criterion; what this server does not support is a
    400 (for ``_filter``, which cannot drop a part of its logic)."""
    try:
        return _criterion(resource_type, name, raw)
    except _Refusal as exc:
        raise FhirError.of(400, "not-supported", str(exc)) from None


def _finish(name: str, ptype: str, param: SearchParam | None, modifier: str | None,
            raw: str) -> Criterion:
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(name, ":missing takes true or false")
        return Criterion(name, ptype, param, modifier, (), missing=raw == "true")
    if modifier is not None:
        allowed = MODIFIERS.get(ptype, frozenset())
        if ptype == "reference" and modifier in resource_types():
            if param is not None and param.target and modifier not in param.target:
                raise _bad(name, f"{param.code} never refers to a {modifier}")
        elif modifier not in allowed:
            raise _Refusal(f"the modifier :{modifier} is not supported on {ptype} "
                           f"parameters ({', '.join(sorted(allowed)) or 'none'})")
    pieces = split_values(raw)
    if len(pieces) > MAX_VALUES:
        raise _bad(name, f"at most {MAX_VALUES} values may be OR'd")
    if ptype == "composite" and param is not None:
        values: tuple[Value, ...] = tuple(_composite(name, param, p) for p in pieces if p != "")
    else:
        values = tuple(_parse_value(name, ptype, p, modifier) for p in pieces if p != "")
    if not values:
        raise _bad(name, "has no value")
    if ptype == "reference" and modifier and modifier not in ("missing", "identifier"):
        values = tuple(ReferenceValue(modifier, v.id, v.url) if isinstance(v, ReferenceValue)
                       and v.type is None else v for v in values)
    return Criterion(name, ptype, param, modifier, values)


def _plain_values(name: str, raw: str) -> tuple[str, ...]:
    """A parameter's OR'd values as plain strings (unescaped, trimmed, empty ones dropped):
    at least one, at most :data:`MAX_VALUES`."""
    values = tuple(v for v in (unescape(p).strip() for p in split_values(raw)) if v)
    if not values:
        raise _bad(name, "has no value")
    if len(values) > MAX_VALUES:
        raise _bad(name, f"at most {MAX_VALUES} values may be OR'd")
    return values


_NAME = re.compile(r"[a-z][A-Za-z0-9]*")
#: A resource id (FHIR's id datatype)
_LIST_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def three_part(param: SearchParam) -> bool:
    """A composite of a token and two numbers, searched here from the resource JSON
    (R4 has four, MolecularSequence's coordinates: ``chromosome$start$end``). Its token is
    on the resource (its own parameter's index); the other two are elements of each item the
    composite's expression selects, tested together on the same item."""
    comps = param.components
    return (len(comps) == 3 and comps[0].type == "token"
            and all(c.type == "number" and _NAME.fullmatch(c.expression)
                    for c in comps[1:])
            and param.expression is not None
            and all(_NAME.fullmatch(p) for p in param.expression.split(".")[1:]))


def _three_part(name: str, param: SearchParam, raw: str) -> ThreePartValue:
    parts = _split_unescaped(raw, "$")
    if len(parts) != 3:
        raise _bad(name, f"{raw!r} is not {'$'.join(c.code for c in param.components)}")
    first = _parse_value(name, "token", parts[0], None)
    rest = [_parse_value(name, c.type, p, None)
            for c, p in zip(param.components[1:], parts[1:], strict=True)]
    second, third = rest
    assert isinstance(first, TokenValue)
    assert isinstance(second, NumberValue) and isinstance(third, NumberValue)
    return ThreePartValue(first, second, third)


def _composite(name: str, param: SearchParam, raw: str) -> CompositeValue | ThreePartValue:
    if three_part(param):
        return _three_part(name, param, raw)
    parts = _split_unescaped(raw, "$")
    if len(parts) != 2:
        raise _bad(name, f"{raw!r} is not code$value")
    first = _parse_value(name, "token", parts[0], None)
    second_type = param.components[1].type
    second = _parse_value(name, second_type, parts[1], None)
    assert isinstance(first, TokenValue) and not isinstance(
        second, (ReferenceValue, CompositeValue, ValueSetCodes, NearValue, ThreePartValue))
    return CompositeValue(first, second, second_type)


def _sort_keys(resource_type: str, raw: str) -> list[SortKey]:
    keys = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        desc = item.startswith("-")
        code = item[1:] if desc else item
        if code in ("_id", "_lastUpdated"):
            keys.append(SortKey(code, "token" if code == "_id" else "date", desc))
            continue
        param = _lookup(resource_type, code)
        if param.type == "composite":
            raise _bad("_sort", f"{code} is a composite parameter, which cannot sort")
        keys.append(SortKey(code, param.type, desc))
    return keys


def _include(resource_type: str, name: str, raw: str) -> Include:
    reverse = name.startswith("_revinclude")
    modifier = name.partition(":")[2]
    if modifier not in ("", "iterate", "recurse"):
        raise _Refusal(f"{name}: only the :iterate modifier is supported")
    iterate = modifier in ("iterate", "recurse")
    parts = raw.split(":")
    if raw == "*":
        return Include(resource_type, "*", None, iterate, reverse)
    if len(parts) not in (2, 3):
        raise _bad(name, f"{raw!r} is not Type:parameter[:TargetType]")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if source not in resource_types():
        raise _bad(name, f"{source!r} is not a resource type")
    if target is not None and target not in resource_types():
        raise _bad(name, f"{target!r} is not a resource type")
    if code != "*":
        param = _lookup(source, code)
        if param.type != "reference":
            raise _bad(name, f"{source}.{code} is not a reference parameter")
    if not iterate and not reverse and source != resource_type:
        raise _bad(name, f"{raw}: _include names {source}, not the searched "
                   f"{resource_type} (use :iterate to follow included resources)")
    return Include(source, code, target, iterate, reverse)


def parse_search(resource_type: str, pairs: list[tuple[str, str]], *,
                 strict: bool = False) -> SearchRequest:
    """The criteria and controls of a search on ``resource_type`` (see the module docstring)."""
    req = SearchRequest(resource_type)
    for name, raw in pairs:
        try:
            if name in RESULT_PARAMS or name.startswith(("_include", "_revinclude")):
                _control(req, name, raw)
            elif name == "_filter":
                from careplane.records.search_filter import parse_filter

                req.criteria.append(parse_filter(resource_type, raw))
            else:
                req.criteria.append(_criterion(resource_type, name, raw))
            if name != "_cursor":
                req.used.append((name, raw))
        except _Refusal as exc:
            if strict:
                raise FhirError.of(400, "not-supported", str(exc)) from None
            req.warnings.append(Issue("not-supported", f"ignored: {exc}", "warning"))
    return req


def _control(req: SearchRequest, name: str, raw: str) -> None:
    if name == "_count":
        try:
            count = int(raw)
        except ValueError:
            raise _bad(name, f"{raw!r} is not a whole number") from None
        if count < 0:
            raise _bad(name, "must not be negative")
        req.count = min(count, MAX_COUNT)
    elif name == "_sort":
        req.sort = _sort_keys(req.resource_type, raw)
    elif name.startswith(("_include", "_revinclude")):
        req.includes.append(_include(req.resource_type, name, raw))
    elif name == "_summary":
        if raw not in SUMMARY_MODES:
            raise _bad(name, f"one of {', '.join(sorted(SUMMARY_MODES))}")
        req.summary = None if raw == "false" else raw
    elif name == "_elements":
        req.elements = tuple(e.strip() for e in raw.split(",") if e.strip())
    elif name == "_total":
        if raw not in TOTAL_MODES:
            raise _bad(name, f"one of {', '.join(sorted(TOTAL_MODES))}")
        req.total = raw
    elif name == "_format":
        if raw not in ("json", "application/json", "application/fhir+json"):
            raise FhirError.of(406, "not-supported", "this server speaks FHIR JSON only")
    elif name == "_cursor":
        req.cursor = raw
    # _pretty, _contained, _containedType: accepted, no effect on a JSON server


def parse_system_search(pairs: list[tuple[str, str]], *, strict: bool = False
                        ) -> tuple[tuple[str, ...], list[SearchRequest]]:
    """A search across types (``GET /fhir?_type=A,B&...``): the types, and one request each.

    Without ``_type`` there is one request, parsed against the parameters every resource has
    (``search_parameters("Resource")``). With it, a criterion must be a parameter of each
    listed type (FHIR's rule for a multi-type search); one that is not is refused (strict)
    or dropped for all types with a warning (lenient). ``_include``/``_revinclude`` name
    their source type, which must be one of the listed types. Result controls (``_count``,
    ``_sort``, ``_total``...) and the includes are carried by the first request.
    """
    types: list[str] = []
    rest: list[tuple[str, str]] = []
    includes: list[tuple[str, str]] = []
    for name, raw in pairs:
        if name == "_type":
            for item in raw.split(","):
                item = item.strip()
                if item not in resource_types():
                    raise _bad("_type", f"{item!r} is not an R4 resource type")
                if item not in types:
                    types.append(item)
        elif name.startswith(("_include", "_revinclude")):
            includes.append((name, raw))
        else:
            rest.append((name, raw))
    if not types:
        requests = [parse_search("Resource", rest, strict=strict)]
    else:
        kept, warnings = [], []
        for name, raw in rest:
            refused = None
            for t in types:
                try:
                    parse_search(t, [(name, raw)], strict=True)
                except FhirError as exc:
                    if exc.issues and exc.issues[0].code == "not-supported":
                        refused = exc.issues[0].diagnostics
                        break
                    raise
            if refused is None:
                kept.append((name, raw))
            elif strict:
                raise FhirError.of(400, "not-supported", refused)
            else:
                warnings.append(Issue("not-supported", f"ignored: {refused}", "warning"))
        requests = [parse_search(t, kept, strict=True) for t in types]
        requests[0].warnings[:0] = warnings
        requests[0].used[:0] = [("_type", ",".join(types))]
    first = requests[0]
    for name, raw in includes:
        source = raw.split(":")[0]
        reverse = name.startswith("_revinclude")
        if types and not reverse and source not in types and ":iterate" not in name:
            raise _bad(name, f"{raw}: {source} is not one of the searched types (_type)")
        try:
            first.includes.append(_include(source if not reverse else first.resource_type,
                                           name, raw))
        except _Refusal as exc:
            if strict:
                raise FhirError.of(400, "not-supported", str(exc)) from None
            first.warnings.append(Issue("not-supported", f"ignored: {exc}", "warning"))
            continue
        first.used.append((name, raw))
    for key in first.sort:
        if key.name not in ("_id", "_lastUpdated") and len(types) != 1:
            raise _bad("_sort", "a search across types sorts by _id or _lastUpdated only")
    return tuple(types), requests
