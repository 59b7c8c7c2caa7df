"""Search criteria as SQL over the index tables, the same on SQLite and PostgreSQL.

Each criterion becomes one condition on the searched resource row: ``pk IN (SELECT
resource_pk FROM fhir_idx_<type> WHERE param = ... AND <value test>)``, with the values of one
parameter OR'd inside the subquery and repeated parameters AND'd outside. The value tests
follow the FHIR search page: dates and numbers compare as ranges (``eq`` means the search
range contains the value's range, ``gt`` that the value's range reaches beyond the search
range), strings match folded prefixes, tokens ``system|code``. Chains and ``_has`` nest the
same construction one level down, and every nested resource is held to the caller's
organisation too, so a chain can never reveal whether another organisation's data matched.

Prefix matching is written as a range (``value >= 'smi' AND value < 'smi\\U0010ffff'``)
rather than ``LIKE``, so both databases use the b-tree; on PostgreSQL the folded columns use
the "C" collation (see models), which makes that range exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    FromClause,
    Select,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    true,
)

from careplane.records.access import Opening, Reach
from careplane.records.indexer import stored_under
from careplane.records.models import INDEX_TABLES, WORDS, resource, resource_version
from careplane.records.search_params import (
    CompositeValue,
    Criterion,
    DateValue,
    FilterExpr,
    NearValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    ThreePartValue,
    TokenValue,
    ValueSetCodes,
    three_part,
)
from careplane.records.ucum import UCUM_SYSTEM, canonical
from careplane.records.values import DATE_MAX, DATE_MIN, cut, fold

__all__ = ["ANY_TYPE", "CONTENT_INDEXES", "Scope", "chain_references", "criterion_clause",
           "live", "param_is", "sort_columns", "typed_by", "visible", "walk_candidates"]

_TOP = "\U0010ffff"
#: The resource type a system-wide search (``GET /fhir?...`` without ``_type``) is built for:
#: index rows of every type are searched.
ANY_TYPE = "Resource"


@dataclass(frozen=True, slots=True)
class Scope:
    """What every condition is held to: the caller's organisation, this server's base, and
    what the policy opens of other organisations and refuses in the caller's own
    (``reach``: grants and consents)."""

    org_id: str
    base: str = ""
    reach: Reach | None = None
    dialect: str = "sqlite"


def _opening(r: FromClause, opening: Opening) -> ColumnElement[bool]:
    conds: list[ColumnElement[bool]] = [r.c.org_id == opening.org_id]
    if opening.patient_id is not None:
        conds.append(r.c.patient_id == opening.patient_id)
    if opening.hidden_patients:
        conds.append(or_(r.c.patient_id.is_(None),
                         r.c.patient_id.not_in(sorted(opening.hidden_patients))))
    if opening.hidden_labels:
        t = INDEX_TABLES["token"]
        for patient, label in opening.hidden_labels:
            labelled = select(t.c.resource_pk).where(t.c.param == "_security",
                                                     t.c.code == cut(label))
            conds.append(not_(and_(func.coalesce(r.c.patient_id, "") == patient,
                                   r.c.pk.in_(labelled))))
    return and_(*conds)


def _own(r: FromClause, scope: Scope, types: tuple[str, ...]) -> ColumnElement[bool]:
    """The caller's organisation's rows, less those of patients whose consent refuses the
    caller a search (and their resources carrying a refused label), per type."""
    if scope.reach is None or not scope.reach.own:
        return r.c.org_id == scope.org_id
    by_opening: dict[Opening, list[str]] = {}
    for t in types:
        by_opening.setdefault(scope.reach.own_opening(t), []).append(t)
    if len(by_opening) == 1:
        return _opening(r, next(iter(by_opening)))
    return or_(*(and_(r.c.resource_type.in_(ts), _opening(r, o))
                 for o, ts in by_opening.items()))


def visible(r: FromClause, scope: Scope, types: Iterable[str]) -> ColumnElement[bool]:
    """Rows the caller may find: their organisation's (less what a patient's consent
    refuses them), and for each of ``types`` what the policy opens elsewhere (a granted or
    consenting patient's records)."""
    types = tuple(types)
    own = _own(r, scope, types)
    if scope.reach is None or scope.reach.empty:
        return own
    extra = [and_(r.c.resource_type == t, _opening(r, o))
             for t in types for o in scope.reach.openings(t)]
    return or_(own, *extra) if extra else own


def live(r: FromClause, resource_type: str, scope: Scope, *, typed: bool = True
         ) -> ColumnElement[bool]:
    """Rows of ``resource_type`` the caller may find (see :func:`visible`), not deleted.

    ``typed=False`` leaves out the test of the row's type, for a caller whose other
    conditions already hold the row to index rows of that type (:func:`typed_by`): the test
    is then redundant, and PostgreSQL, which cannot know that, would count it again and
    expect a Patient search to find a hundredth of its real matches (the share of Patients
    among all resources), which turns good plans into bad ones at scale.
    """
    conds = [visible(r, scope, (resource_type,)), r.c.deleted == false()]
    return and_(r.c.resource_type == resource_type, *conds) if typed else and_(*conds)


def typed_by(criteria: Iterable[Criterion]) -> bool:
    """Whether one of ``criteria`` alone holds a resource row to its searched type: a match
    of index rows (which carry the type), not a negation, ``:missing``, ``_id`` or
    ``_lastUpdated`` (tested on the row itself), full text or a ``_filter`` expression."""
    return any(c.filter is None and c.has is None and c.param is not None
               and c.type not in ("near", "fulltext") and c.missing is None
               and c.modifier not in ("not", "not-in") for c in criteria)


def _prefix_match(column: Any, text: str) -> ColumnElement[bool]:
    start = cut(text)
    return and_(column >= start, column < start + _TOP)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- value tests per type -------------------------------------------------------------------

def _string(t: FromClause, crit: Criterion, value: str) -> ColumnElement[bool]:
    folded = fold(value)
    if crit.modifier == "exact":
        return and_(t.c.value == folded, t.c.exact == value)
    if crit.modifier == "contains":
        return t.c.value.like(f"%{_escape_like(folded)}%", escape="\\")
    if crit.modifier == "filter-eq":  # _filter's eq: the whole value, folded
        return t.c.value == cut(folded)
    if crit.modifier == "filter-ew":
        return t.c.value.like(f"%{_escape_like(folded)}", escape="\\")
    return _prefix_match(t.c.value, folded)


def _token(t: FromClause, crit: Criterion, value: Any) -> ColumnElement[bool]:
    if crit.modifier == "text":
        return _prefix_match(t.c.text, fold(str(value)))
    if isinstance(value, ValueSetCodes):
        return _in_value_set(t, value)
    assert isinstance(value, TokenValue)
    return _token_test(t.c.system, t.c.code, value)


def _in_value_set(t: FromClause, vs: ValueSetCodes) -> ColumnElement[bool]:
    """A token in an expanded ValueSet: one of its codes, or any code of a whole system
    it includes (less the codes it excludes)."""
    by_system: dict[str | None, list[str]] = {}
    for system, code in vs.codes:
        by_system.setdefault(system, []).append(cut(code))
    tests: list[ColumnElement[bool]] = []
    for system, codes in by_system.items():
        test = t.c.code.in_(sorted(set(codes)))
        tests.append(test if system is None else and_(t.c.system == cut(system), test))
    for system in vs.systems:
        excluded = sorted({cut(c) for s, c in vs.excluded if s == system})
        tests.append(and_(t.c.system == cut(system), t.c.code.is_not(None),
                          t.c.code.not_in(excluded)) if excluded
                     else and_(t.c.system == cut(system), t.c.code.is_not(None)))
    return or_(*tests) if tests else false()


def _token_test(system: Any, code: Any, value: TokenValue) -> ColumnElement[bool]:
    conds: list[ColumnElement[bool]] = []
    if value.system == "":
        conds.append(system.is_(None))
    elif value.system is not None:
        conds.append(system == cut(value.system))
    if value.code is not None:
        conds.append(code == cut(value.code))
    return and_(*conds) if conds else true()


def date_test(low: Any, high: Any, value: DateValue) -> ColumnElement[bool]:
    """The prefix's test of a stored range [low, high) against the search value's range."""
    s = value.range
    eq = and_(low >= s.low, high <= s.high)
    match value.prefix:
        case "eq":
            return eq
        case "ne":
            return not_(eq)
        case "gt":
            return high > s.high
        case "lt":
            return low < s.low
        case "ge":
            return or_(high > s.high, eq)
        case "le":
            return or_(low < s.low, eq)
        case "sa":
            return low >= s.high
        case "eb":
            return high <= s.low
        case _:  # ap: within a tenth of the distance from now, at least a day
            now = datetime.now(UTC)
            distance = max(abs(now - s.low), abs(now - s.high))
            slack = max(distance / 10, timedelta(days=1))
            lo = s.low - slack if s.low - DATE_MIN > slack else DATE_MIN
            hi = s.high + slack if DATE_MAX - s.high > slack else DATE_MAX
            return and_(low < hi, high > lo)


def instant_test(column: Any, value: DateValue) -> ColumnElement[bool]:
    """The same tests for an instant stored as one column (``_lastUpdated``)."""
    s = value.range
    match value.prefix:
        case "eq":
            return and_(column >= s.low, column < s.high)
        case "ne":
            return not_(and_(column >= s.low, column < s.high))
        case "gt" | "sa":
            return column >= s.high
        case "lt" | "eb":
            return column < s.low
        case "ge":
            return column >= s.low
        case "le":
            return column < s.high
        case _:
            return date_test(column, column, value)


def number_test(low: Any, high: Any, value: NumberValue) -> ColumnElement[bool]:
    v = value.value
    eq = and_(low >= value.low, high < value.high)
    match value.prefix:
        case "eq":
            return eq
        case "ne":
            return not_(eq)
        case "gt":
            return high > v
        case "lt":
            return low < v
        case "ge":
            return high >= v
        case "le":
            return low <= v
        case "sa":
            return low > v
        case "eb":
            return high < v
        case _:
            slack = abs(v) / 10
            return and_(low <= v + slack, high >= v - slack)


def _scaled(value: NumberValue, factor: float) -> NumberValue:
    lo, hi = sorted((value.low * factor, value.high * factor))
    return NumberValue(value.prefix, value.value * factor, lo, hi)


def _quantity(t: FromClause, value: QuantityValue) -> ColumnElement[bool]:
    if value.code is not None and value.system in (UCUM_SYSTEM, None):
        factor, canon = canonical(value.code)
        if canon != value.code.strip() or value.system == UCUM_SYSTEM:
            by_canon = and_(t.c.canonical_code == cut(canon),
                            number_test(t.c.canonical_low, t.c.canonical_high,
                                        _scaled(value.number, factor)))
            if value.system == UCUM_SYSTEM:
                return by_canon
            by_code = and_(t.c.code == cut(value.code),
                           number_test(t.c.low, t.c.high, value.number))
            return or_(by_canon, by_code)
    conds = [number_test(t.c.low, t.c.high, value.number)]
    if value.code is not None:
        conds.append(t.c.code == cut(value.code))
    if value.system is not None:
        conds.append(t.c.system == cut(value.system))
    return and_(*conds)


def _reference(t: FromClause, value: ReferenceValue, scope: Scope) -> ColumnElement[bool]:
    if value.url is not None:
        local = scope.base and value.url.startswith(scope.base.rstrip("/") + "/")
        if local and value.type and value.id:
            return or_(t.c.url == value.url,
                       and_(t.c.target_type == value.type, t.c.target_id == value.id))
        return t.c.url == value.url
    conds: list[ColumnElement[bool]] = [t.c.target_id == value.id]
    if value.type is not None:
        conds.append(t.c.target_type == value.type)
    return and_(*conds)


def _uri(t: FromClause, crit: Criterion, value: str) -> ColumnElement[bool]:
    if crit.modifier == "below":
        return _prefix_match(t.c.value, value)
    if crit.modifier == "above":
        return literal(cut(value)).like(t.c.value + "%")
    return t.c.value == cut(value)


def _composite(t: FromClause, value: CompositeValue) -> ColumnElement[bool]:
    """Both parts on the same index row: the token in a_*, the second in its type's columns."""
    first = value.first
    conds: list[ColumnElement[bool]] = []
    if first.system == "":
        conds.append(t.c.a_system.is_(None))
    elif first.system is not None:
        conds.append(t.c.a_system == cut(first.system))
    if first.code is not None:
        conds.append(t.c.a_code == cut(first.code))
    second = value.second
    if value.second_type == "token":
        assert isinstance(second, TokenValue)
        conds.append(_token_test(t.c.system, t.c.code, second))
    elif value.second_type == "quantity":
        assert isinstance(second, QuantityValue)
        conds.append(_quantity(t, second))
    elif value.second_type == "number":
        assert isinstance(second, NumberValue)
        conds.append(number_test(t.c.low, t.c.high, second))
    elif value.second_type == "date":
        assert isinstance(second, DateValue)
        conds.append(date_test(t.c.date_low, t.c.date_high, second))
    else:
        conds.append(_prefix_match(t.c.value, fold(str(second))))
    return and_(*conds)


def _value_test(t: FromClause, crit: Criterion, value: Any, scope: Scope
                ) -> ColumnElement[bool]:
    match crit.type:
        case "composite":
            return _composite(t, value)
        case "string":
            return _string(t, crit, value)
        case "token":
            return _token(t, crit, value)
        case "date":
            return date_test(t.c.low, t.c.high, value)
        case "number":
            return number_test(t.c.low, t.c.high, value)
        case "quantity":
            return _quantity(t, value)
        case "reference":
            return _reference(t, value, scope)
        case "uri":
            return _uri(t, crit, value)
    raise ValueError(f"no test for {crit.type}")


# -- criteria -------------------------------------------------------------------------------

def _rows(resource_type: str, code: str, ptype: str, *, typed: bool = True
          ) -> tuple[FromClause, Select[Any]]:
    t = INDEX_TABLES[ptype]
    if resource_type == ANY_TYPE:
        return t, select(t.c.resource_pk).where(t.c.param == code)
    if not typed:
        return t, select(t.c.resource_pk).where(param_is(t, resource_type, code))
    return t, select(t.c.resource_pk).where(t.c.resource_type == resource_type,
                                            param_is(t, resource_type, code))


def param_is(t: FromClause, resource_type: str, code: str) -> ColumnElement[bool]:
    """The index rows of parameter ``code`` (or of its parts, see indexer.stored_under)."""
    stored, target = stored_under(resource_type, code)
    test = t.c.param == stored[0] if len(stored) == 1 else t.c.param.in_(stored)
    return test if target is None else and_(test, t.c.target_type == target)


def index_matches(resource_type: str, crit: Criterion, scope: Scope, *, typed: bool = True
                  ) -> tuple[FromClause, Select[Any]] | None:
    """The index rows (their ``resource_pk``) whose resources match ``crit``, for a criterion
    that is met by having such a row: a parameter's values, not a negation, ``:missing``,
    chain, composite of three parts, full text, ``_filter`` or a test of the row itself.
    None for the others.

    ``typed=False`` leaves out the index rows' type, for a test of one resource's own rows
    (a walk's): they carry its type, and without it PostgreSQL cannot take the value's index
    for the test, which it would, expecting few rows where the statistics of all types
    together mislead it (at 10,000 patients, those born before 1960 looked like one, and
    were 1,670, read again for each Patient walked)."""
    if (crit.filter is not None or crit.has is not None or crit.param is None
            or crit.chains or crit.missing is not None or crit.type in ("near", "fulltext", "list")
            or crit.modifier in ("not", "not-in")):
        return None
    code = crit.param.code
    if crit.modifier in ("of-type", "identifier"):
        # kept as token rows under their own name (see indexer.OF_TYPE, BY_IDENTIFIER)
        t, rows = _rows(resource_type, f"{code}:{crit.modifier}", "token", typed=typed)
        return t, rows.where(or_(*(_token_test(t.c.system, t.c.code, v)
                                   for v in crit.values if isinstance(v, TokenValue))))
    if crit.type == "composite" and three_part(crit.param):
        return None
    t, rows = _rows(resource_type, code, crit.type, typed=typed)
    return t, rows.where(or_(*(_value_test(t, crit, v, scope) for v in crit.values)))


def walk_candidates(resource_type: str, crit: Criterion, scope: Scope) -> Select[Any] | None:
    """The index rows that bound how many rows of ``resource_type`` match ``crit``, for a
    criterion that a walk of the type's rows can test (see :func:`criterion_clause`): its
    own matches, or for ``_has`` those of its criterion on the referring type. None when it
    cannot be walked."""
    if crit.has is not None:
        (_, inner), = crit.chains
        if resource_type == ANY_TYPE or inner.has is not None:
            return None
        found = index_matches(crit.has[0], inner, scope)
    else:
        found = index_matches(resource_type, crit, scope)
    return None if found is None else found[1]


def criterion_clause(r: FromClause, resource_type: str, crit: Criterion, scope: Scope, *,
                     walk: bool = False) -> ColumnElement[bool]:
    """The condition a resource row ``r`` of ``resource_type`` meets when it matches ``crit``.

    ``walk``: as a test of each row (a correlated EXISTS, which PostgreSQL does not flatten
    into a join because of its OFFSET) rather than the set of matching rows, for a search
    that walks its rows in key order and stops after the page (see :func:`_chain` and
    ``search._walks``)."""
    if crit.filter is not None:
        return _filter(r, resource_type, crit.filter, scope)
    if crit.type == "near":
        return or_(*(_near(r, v) for v in crit.values if isinstance(v, NearValue)))
    if crit.type == "fulltext":
        return _fulltext(r, resource_type, crit, scope)
    if crit.has is not None:
        return _reverse_chain(r, resource_type, crit, scope, walk=walk)
    if crit.type == "list":
        return _in_list(r, resource_type, crit, scope)
    if crit.param is None:
        return _on_row(r, crit)
    code = crit.param.code
    if crit.chains:
        return _chain(r, resource_type, crit, scope, walk=walk)
    found = index_matches(resource_type, crit, scope, typed=not walk)
    if found is not None:
        t, matching = found
        return _per_row(matching, t.c.resource_pk == r.c.pk) if walk \
            else r.c.pk.in_(matching)
    if crit.type == "composite" and three_part(crit.param):
        return _three_part(r, resource_type, crit, scope)
    t, rows = _rows(resource_type, code, crit.type)
    if crit.missing is not None:
        return r.c.pk.not_in(rows) if crit.missing else r.c.pk.in_(rows)
    matching = rows.where(or_(*(_value_test(t, crit, v, scope) for v in crit.values)))
    return r.c.pk.not_in(matching)  # :not, :not-in


def _filter(r: FromClause, resource_type: str, expr: FilterExpr, scope: Scope
            ) -> ColumnElement[bool]:
    parts = [_filter(r, resource_type, p, scope) if isinstance(p, FilterExpr)
             else criterion_clause(r, resource_type, p, scope) for p in expr.parts]
    if expr.op == "not":
        return not_(parts[0])
    return and_(*parts) if expr.op == "and" else or_(*parts)


_EARTH_KM = 6371.0088
_KM_PER_DEGREE = 111.2


def _near(r: FromClause, value: NearValue) -> ColumnElement[bool]:
    """Location.position within ``value.km`` of the point, by the haversine formula.

    There is no spatial index: the test reads the current version's position (a bounding box
    on latitude first), which suits the few thousand Locations an organisation keeps.
    """
    v = resource_version.alias()
    lat = v.c.content[("position", "latitude")].as_float()
    lon = v.c.content[("position", "longitude")].as_float()
    rad = func.radians
    dlat = rad(lat - value.latitude) / 2
    dlon = rad(lon - value.longitude) / 2
    sin_dlat, sin_dlon = func.sin(dlat), func.sin(dlon)
    a = sin_dlat * sin_dlat + func.cos(rad(lat)) * func.cos(rad(value.latitude)) \
        * sin_dlon * sin_dlon
    # min(1, a) keeps asin's argument in range where rounding nudges it past one
    distance = 2 * _EARTH_KM * func.asin(func.sqrt(case((a > 1, 1.0), else_=a)))
    box = value.km / _KM_PER_DEGREE + 0.01
    near = select(v.c.resource_pk).where(
        v.c.resource_pk == r.c.pk, v.c.version == r.c.version,
        lat.between(value.latitude - box, value.latitude + box), lon.is_not(None),
        distance <= value.km)
    return r.c.pk.in_(near)


#: The words PostgreSQL indexes for _content and _text (migration 0102 builds GIN indexes on
#: exactly these expressions of fhir_resource_version; keep them identical).
_CONTENT_VECTOR = "jsonb_to_tsvector('simple'::regconfig, {v}content, '[\"string\"]'::jsonb)"
_TEXT_VECTOR = "to_tsvector('simple'::regconfig, COALESCE({v}content -> 'text' ->> 'div', ''))"
#: Those indexes by name, with their expressions (for tools that drop or rebuild them).
CONTENT_INDEXES = {
    "ix_fhir_resource_version_content_words": _CONTENT_VECTOR.format(v=""),
    "ix_fhir_resource_version_text_words": _TEXT_VECTOR.format(v=""),
}
_WORDS = re.compile(r"\w+")


def _fulltext(r: FromClause, resource_type: str, crit: Criterion, scope: Scope
              ) -> ColumnElement[bool]:
    """``_content`` (every string of the resource) or ``_text`` (its narrative) contains
    the words of one of the values.

    PostgreSQL matches whole words (``plainto_tsquery``) through the GIN indexes of
    migration 0102, over the current version's row; SQLite matches whole words too, through
    the FTS5 index of current versions of migration 0107 (case folded, accents kept, as
    PostgreSQL's 'simple' configuration does).
    """
    content = crit.name == "_content"
    words = [tuple(m.group(0) for m in _WORDS.finditer(str(value))) for value in crit.values]
    words = [w for w in words if w]
    if not words:
        return false()
    if scope.dialect == "postgresql":
        v = resource_version.alias("fts_v")
        r2 = resource.alias("fts_r")
        current = select(v.c.resource_pk).join(r2, and_(r2.c.pk == v.c.resource_pk,
                                                        r2.c.version == v.c.version))
        if resource_type != ANY_TYPE:
            current = current.where(r2.c.resource_type == resource_type)
        shape = _CONTENT_VECTOR if content else _TEXT_VECTOR
        vector: ColumnElement[Any] = literal_column(shape.format(v="fts_v."))
        simple: ColumnElement[Any] = literal_column("'simple'::regconfig")
        test = or_(*(vector.op("@@")(func.plainto_tsquery(simple, " ".join(w)))
                     for w in words))
        return r.c.pk.in_(current.where(test))
    # FTS5's query language: each word a quoted string (the words are \w+, no quotes in
    # them), the words of one value all present, the values OR'd, within the one column
    query = " OR ".join("(" + " ".join(f'"{word}"' for word in w) + ")" for w in words)
    found: Select[Any] = select(literal_column("rowid")).select_from(table(WORDS)).where(
        literal_column(WORDS).op("MATCH")(
            f"{'content' if content else 'narrative'} : ({query})"))
    return r.c.pk.in_(found)


def _three_part(r: FromClause, resource_type: str, crit: Criterion, scope: Scope
                ) -> ColumnElement[bool]:
    """A three-part composite (``chromosome$start$end``): the token through its own
    parameter's index, the two numbers on one and the same item of the composite's element
    in the current version's JSON (an array's items, or the element itself)."""
    param = crit.param
    assert param is not None and param.expression is not None
    first, second, third = param.components
    t, rows = _rows(resource_type, first.code, "token")
    if crit.missing is not None:
        return r.c.pk.not_in(rows) if crit.missing else r.c.pk.in_(rows)
    path = param.expression.split(".")[1:]
    v = resource_version.alias("tp_v")
    if scope.dialect == "postgresql":
        element = v.c.content[tuple(path)]
        items = func.jsonb_array_elements(case(
            (func.jsonb_typeof(element) == "array", element),
            else_=func.jsonb_build_array(element))).table_valued("value").alias("tp_i")

        def field(name: str) -> ColumnElement[Any]:
            return cast(items.c.value.op("->>")(literal(name)), Float)
    else:
        where = "$." + ".".join(path)
        element = func.json_extract(v.c.content, where)
        items = func.json_each(case(
            (func.json_type(v.c.content, where) == "array", element),
            else_=func.json_array(func.json(element)))).table_valued("value").alias("tp_i")

        def field(name: str) -> ColumnElement[Any]:
            return cast(func.json_extract(items.c.value, f"$.{name}"), Float)

    branches = []
    for value in crit.values:
        if not isinstance(value, ThreePartValue):
            continue
        a, b = field(second.expression), field(third.expression)
        same_item = exists(select(literal(1)).select_from(items).where(
            number_test(a, a, value.second), number_test(b, b, value.third)))
        in_json = select(v.c.resource_pk).where(v.c.resource_pk == r.c.pk,
                                                v.c.version == r.c.version, same_item)
        token = rows.where(_token_test(t.c.system, t.c.code, value.first))
        branches.append(and_(r.c.pk.in_(token), r.c.pk.in_(in_json)))
    return or_(*branches) if branches else false()


def _on_row(r: FromClause, crit: Criterion) -> ColumnElement[bool]:
    if crit.missing is not None:
        return false() if crit.missing else true()
    if crit.name.startswith("_id"):
        ids = [v.code for v in crit.values if isinstance(v, TokenValue) and v.code]
        test = r.c.id.in_(ids)
        return not_(test) if crit.modifier == "not" else test
    return or_(*(instant_test(r.c.last_updated, v) for v in crit.values
                 if isinstance(v, DateValue)))


def chain_references(resource_type: str, crit: Criterion, scope: Scope) -> Select[Any]:
    """The reference index rows by which resources of ``resource_type`` meet the chained
    ``crit``: theirs that point at a resource the caller may see and that meets the chain's
    inner criterion."""
    assert crit.param is not None
    t, rows = _rows(resource_type, crit.param.code, "reference")
    return rows.where(or_(*_chain_branches(t, crit, scope)))


def _chain_branches(t: FromClause, crit: Criterion, scope: Scope, *, hashed: bool = False
                    ) -> list[ColumnElement[bool]]:
    branches = []
    for target_type, inner in crit.chains:
        r2 = resource.alias()
        ids = select(r2.c.id).where(live(r2, target_type, scope, typed=not typed_by([inner])),
                                    criterion_clause(r2, target_type, inner, scope))
        within = t.c.target_id.in_(ids)
        # ``IS TRUE`` (the same test in a WHERE) keeps PostgreSQL from turning the IN into
        # a join that it would redo for every row tested: the targets are hashed once.
        branches.append(and_(t.c.target_type == target_type,
                             within.is_(true()) if hashed else within))
    return branches


def _chain(r: FromClause, resource_type: str, crit: Criterion, scope: Scope, *,
           walk: bool = False) -> ColumnElement[bool]:
    """A chained criterion; with ``walk``, as a test of each candidate row rather than the
    set of matching rows.

    The set (``pk IN (references to the targets)``) suits a chain whose targets are
    referred to by few resources: they are found from the targets. When many are (a name
    prefix shared by 400 patients, who are the subject of 58,000 Observations), finding
    them all, and checking each one's organisation, costs far more than the page needs;
    the test (a correlated EXISTS over the row's own references, which PostgreSQL does not
    flatten into a join because of its OFFSET) lets the search walk its rows in key order
    and stop after the page, probing a hashed set of the targets for each.
    """
    if not walk:
        return r.c.pk.in_(chain_references(resource_type, crit, scope))
    assert crit.param is not None
    t, rows = _rows(resource_type, crit.param.code, "reference")
    return _per_row(rows, t.c.resource_pk == r.c.pk,
                    or_(*_chain_branches(t, crit, scope, hashed=True)))


def _per_row(query: Select[Any], *conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """``query`` narrowed by ``conditions`` (which name the row) as a test of one row: a
    correlated EXISTS, which PostgreSQL does not flatten into a join because of its OFFSET,
    so that a search walking its rows in key order probes it for each and stops after the
    page."""
    return exists(query.with_only_columns(literal(1), maintain_column_froms=True)
                  .where(*conditions).offset(0))


def _reverse_chain(r: FromClause, resource_type: str, crit: Criterion, scope: Scope, *,
                   walk: bool = False) -> ColumnElement[bool]:
    assert crit.has is not None
    source, ref_code = crit.has
    (_, inner), = crit.chains
    t = INDEX_TABLES["reference"]
    r2 = resource.alias()
    ids = (select(t.c.target_id)
           .join(r2, r2.c.pk == t.c.resource_pk)
           .where(t.c.resource_type == source, param_is(t, source, ref_code),
                  t.c.target_type == resource_type, live(r2, source, scope, typed=False),
                  criterion_clause(r2, source, inner, scope)))
    return _per_row(ids, t.c.target_id == r.c.id) if walk else r.c.id.in_(ids)


def _in_list(r: FromClause, resource_type: str, crit: Criterion, scope: Scope
             ) -> ColumnElement[bool]:
    """``_list=id``: the resources a List the caller may see names in its entries
    (``List.entry.item``, indexed as the List's ``item`` references)."""
    t = INDEX_TABLES["reference"]
    lists = resource.alias("lst")
    named = (select(t.c.target_id)
             .join(lists, lists.c.pk == t.c.resource_pk)
             .where(t.c.resource_type == "List", t.c.param == "item",
                    lists.c.id.in_([str(v) for v in crit.values]),
                    live(lists, "List", scope)))
    if resource_type != ANY_TYPE:
        named = named.where(t.c.target_type == resource_type)
        return r.c.id.in_(named)
    return r.c.id.in_(named.where(t.c.target_type == r.c.resource_type))


# -- sorting --------------------------------------------------------------------------------

_SORT_COLUMN = {"string": "value", "token": "code", "uri": "value", "reference": "target_id"}


def sort_columns(r: FromClause, resource_type: str, keys: list[SortKey]) -> list[Any]:
    """ORDER BY terms for ``_sort``: the lowest value of the parameter ascending, the highest
    descending (FHIR leaves multi-valued sorting to the server), resources without a value
    last, and the row key as the final tie-break so that pages never overlap."""
    terms: list[Any] = []
    for key in keys:
        if key.name == "_id":
            col: Any = r.c.id
        elif key.name == "_lastUpdated":
            col = r.c.last_updated
        else:
            t = INDEX_TABLES[key.type]
            if key.type in ("date", "number", "quantity"):
                name = "high" if key.descending else "low"
            else:
                name = _SORT_COLUMN[key.type]
            agg = func.max if key.descending else func.min
            col = (select(agg(t.c[name])).where(t.c.resource_pk == r.c.pk,
                                                 param_is(t, resource_type, key.name))
                   .scalar_subquery())
        terms.append(col.desc().nulls_last() if key.descending else col.asc().nulls_last())
    terms.append(r.c.pk.asc())
    return terms
