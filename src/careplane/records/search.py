"""Run a FHIR search and answer with a searchset Bundle.

A search costs a fixed number of SQL statements whatever it finds: one for the page of
matches (resources and their current JSON together, and without ``_total`` their number up
to a bound: see :func:`_page`), one for the total when asked, and one per
``_include``/``_revinclude`` (per round for ``:iterate``, at most three rounds), after the
few that find the grants and consents concerning the caller, and one per chained parameter
that decides how its matches are found (see :func:`_walked_chains`). Every statement is held to the
caller's organisation, less the patients (or their labelled resources) whose consent refuses
the caller, so neither matches, includes, totals nor the paging links can reveal another
organisation's resources or a refused patient's.

Paging links are stable: without ``_sort`` the order is the row key and the next page starts
after the last key seen (a keyset), so resources created or deleted meanwhile never shift a
page; with ``_sort`` the page carries an offset under a total order that ends with the row
key. The cursor is opaque to clients and carries no authority: it is re-checked against the
same organisation filter as the first page.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import (
    ColumnElement,
    FromClause,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from careplane.records.access import Action, Reach, check, reach_of, target
from careplane.records.errors import FhirError, operation_outcome
from careplane.records.models import INDEX_TABLES, idx_compartment, resource, resource_version
from careplane.records.search_params import Criterion, Include, SearchRequest
from careplane.records.search_sql import (
    ANY_TYPE,
    Scope,
    chain_references,
    criterion_clause,
    live,
    param_is,
    sort_columns,
    typed_by,
    visible,
    walk_candidates,
)
from careplane.records.spec import (
    COMPARTMENTS,
    compartment_params,
    resource_types,
    search_parameters,
)
from careplane.records.summary import shape
from careplane.records.value_sets import resolve_value_sets
from careplane.security import Principal

__all__ = ["Found", "SearchResult", "conditions_of", "first_matches", "run_search",
           "run_system_search", "searchset"]

MAX_INCLUDED = 1000
ITERATE_ROUNDS = 3
#: PostgreSQL cancels a search statement that runs longer (a safety net: a search must never
#: hold the database for minutes, whatever plan it gets).
SEARCH_TIMEOUT_MS = 30_000
#: Without ``_total``, matches are counted up to this many (see :func:`_page`): ten pages
#: of the default size. Counting costs about as much per match as finding the page does, so
#: a search whose matches are sparse among its candidates pays for the bound, not for the
#: page: at 10,000 synthetic patients, the last year's blood-pressure panels took 63 ms in
#: process with a bound of 1,000 and 15 ms with 200.
COUNT_BOUND = 200
#: The planner's price of a page read out of order, for search statements (PostgreSQL's
#: default, 4, prices a spinning disk). A search reads index tables that stay in memory (or
#: on SSD), where probing a few thousand index entries costs far less than reading a whole
#: table in order; at the default the planner counted HbA1c > 8 by scanning every
#: Observation row instead of probing the HbA1c ones. 1.1 is the usual setting for SSDs.
RANDOM_PAGE_COST = 1.1
#: A chain is tested row by row in key order (see :func:`search_sql._chain`) rather than
#: found from its targets when that is cheaper: a walk reads about ``rows / refs`` rows per
#: match it needs (``rows`` in the store, ``refs`` the references to the chain's targets),
#: where finding the matches from the targets checks all ``refs`` of them, so it walks when
#: ``refs² >= CHAIN_WALK_ROW_COST * wanted * rows``. This is what reading a row in key order
#: costs against checking one match found from the targets (both in memory: 1.7 and 2.8 µs
#: at 10,000 synthetic patients), with room for matches bunched in key order. There,
#: Observations whose subject's name starts with "mar" (401 patients, 57,694 Observations
#: among 1.6M rows) took 184 ms found from their patients and 19 ms walked.
CHAIN_WALK_ROW_COST = 1.0
#: The decision counts the references only as far as settles it: up to ``rows /
#: CHAIN_WALK_SPLIT`` or ``CHAIN_WALK_ROW_COST * wanted * CHAIN_WALK_SPLIT``, whichever is
#: more (either is at least the square root of their product, the references that make the
#: walk the cheaper). 64 makes the two meet near a million rows.
CHAIN_WALK_SPLIT = 64
#: A search whose criteria are all met by many rows of its type walks the type's live rows
#: in key order (index ``ix_fhir_resource_live_type``) and tests each, stopping after the
#: page, rather than finding every match from the value indexes (see :func:`_walks`). It
#: walks when the matches are at least ``sqrt(WALK_ROW_COST * wanted / rows)`` of the
#: type's ``rows`` (``wanted``: the rows the page statement reads): a walk reads ``wanted /
#: share`` rows, where finding the matches checks each of the ``share * rows`` of them.
#: ``WALK_ROW_COST`` is what reading a row in key order costs against checking a match found
#: from an index (its resource row and the other criteria): 2.4-6 µs against 17-21 µs at
#: 100,000 synthetic patients. There, the 10,205 born in the 1950s took 280-340 ms found
#: from the date index (18,405 born before 1960 to check) and 12 ms walked, and the 2,688
#: women born before 1945 105-125 ms against 19-39 ms.
WALK_ROW_COST = 0.25
#: The most candidates the walk decision counts per criterion: types with more rows than
#: ``WALK_COUNT_LIMIT² / (WALK_ROW_COST * wanted)`` (5.3 million for a first page) are
#: never walked.
WALK_COUNT_LIMIT = 16_384
#: The matches the walk decision expects to find where walking begins to pay, among the
#: type's first rows in key order; finding fewer, the search does not walk. Fewer would
#: be a noisier estimate: with 8, the women born before 1945 (2.7% of the patients, the
#: threshold 2.2%) were found in 6 of the first 357 patients.
WALK_SAMPLE_MATCHES = 32
#: The most rows of the type the walk decision tries for a search of several criteria: at
#: 100,000 patients it tries 1,427.
WALK_SAMPLE_LIMIT = 2_048


@dataclass(frozen=True, slots=True)
class Found:
    pk: int
    resource_type: str
    id: str
    content: dict[str, Any]
    mode: str = "match"


@dataclass
class SearchResult:
    matches: list[Found]
    included: list[Found]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None = None
    warnings: list[Any] = field(default_factory=list)


def _encode(cursor: dict[str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode().rstrip("=")


def _decode(token: str) -> dict[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        data = None
    if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 0
                                             for v in data.values()):
        raise FhirError.of(400, "invalid", "_cursor is not a cursor this server issued")
    return data


def _with_content(r: FromClause) -> Any:
    return (select(r.c.pk, r.c.resource_type, r.c.id, resource_version.c.content)
            .join(resource_version, and_(resource_version.c.resource_pk == r.c.pk,
                                         resource_version.c.version == r.c.version)))


def compartment_clause(r: FromClause, resource_type: str, compartment: tuple[str, str]
                       ) -> ColumnElement[bool]:
    ctype, cid = compartment
    if ctype not in COMPARTMENTS:
        raise FhirError.of(400, "not-supported", f"{ctype} is not a compartment")
    if ctype != resource_type and not compartment_params(ctype, resource_type):
        raise FhirError.of(400, "not-supported",
                           f"{resource_type} resources are never in a {ctype} compartment")
    members = select(idx_compartment.c.resource_pk).where(
        idx_compartment.c.compartment == ctype, idx_compartment.c.target_id == cid,
        idx_compartment.c.resource_type == resource_type)
    return r.c.pk.in_(members)


def run_search(session: Session, principal: Principal, req: SearchRequest, *,
               base: str = "", compartment: tuple[str, str] | None = None,
               cross_org: bool = False, consent: bool | None = None,
               timeout_ms: int = SEARCH_TIMEOUT_MS) -> SearchResult:
    """Authorise, then find one page of ``req`` (and its includes) in the caller's org.

    A principal that speaks for one patient (role ``patient``, or a SMART app launched for a
    patient) searches that patient's compartment, and the access decision is asked for it.
    With ``cross_org`` (a client's search, not a conditional write) the search also reaches
    what the policy opens of other organisations to the caller (:func:`access.reach_of`).
    With ``consent`` (by default as ``cross_org``: what a caller is shown, as the web pages'
    lists) the caller's own organisation's patients whose consent refuses the caller are
    left out; a conditional write's match leaves it to the write's own check, so a refused
    record is answered 403 rather than silently duplicated.
    """
    scope, where = _criteria(session, principal, req, base=base, compartment=compartment,
                             cross_org=cross_org, consent=consent, timeout_ms=timeout_ms)
    return _page(session, scope, req, req.resource_type, where)


def conditions_of(session: Session, principal: Principal, req: SearchRequest
                  ) -> list[ColumnElement[bool]]:
    """Authorise ``req`` as :func:`run_search` does (in the caller's organisation, audited)
    and return the conditions a resource row meets when it matches, for
    :func:`first_matches`."""
    return _criteria(session, principal, req)[1]


def first_matches(session: Session, searches: list[list[ColumnElement[bool]]], *,
                  limit: int = 2) -> list[list[Found]]:
    """The first ``limit`` matches (in key order) of each of ``searches`` (each the
    conditions of :func:`conditions_of`), found by one statement: what the conditions of a
    transaction's writes need to know (none, one, or more than one).

    A transaction bundle names its organisation and practitioners by condition in every
    bundle; one statement for all of them spares a round trip and a statement's overhead
    per condition."""
    if not searches:
        return []
    r = resource
    parts = [select(literal(i).label("q"), r.c.pk.label("pk")).where(*where)
             .order_by(r.c.pk).limit(limit).subquery().select()
             for i, where in enumerate(searches)]
    keys = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery("condition_keys")
    stmt = _with_content(r).add_columns(keys.c.q).join(keys, keys.c.pk == r.c.pk) \
        .order_by(keys.c.q, r.c.pk)
    found: list[list[Found]] = [[] for _ in searches]
    for row in session.execute(stmt):
        found[row.q].append(Found(row.pk, row.resource_type, row.id, row.content))
    return found


def _criteria(session: Session, principal: Principal, req: SearchRequest, *,
              base: str = "", compartment: tuple[str, str] | None = None,
              cross_org: bool = False, consent: bool | None = None,
              timeout_ms: int = SEARCH_TIMEOUT_MS) -> tuple[Scope, list[ColumnElement[bool]]]:
    """Authorise ``req`` (see :func:`run_search`) and turn it into the conditions a
    resource row meets when it matches."""
    rtype = req.resource_type
    if compartment is None and principal.patient_id is not None and (
            rtype == "Patient" or compartment_params("Patient", rtype)):
        # A patient (or an app launched for one) searches within their own compartment.
        compartment = ("Patient", principal.patient_id)
    patient = compartment[1] if compartment and compartment[0] == "Patient" else None
    consent = cross_org if consent is None else consent
    reach = reach_of(session, principal, other_orgs=cross_org) if cross_org or consent \
        else None
    detail: dict[str, Any] = {"query": [f"{k}={v}" for k, v in req.used][:20]}
    if reach is not None and not reach.empty:
        detail["reach"] = _reach_detail(reach, (rtype,))
    check(session, principal, Action.search, target(rtype, principal.org_id, patient_id=patient),
          detail=detail)
    _time_limit(session, timeout_ms)
    scope = Scope(principal.org_id, base, reach, session.get_bind().dialect.name)
    r = resource
    criteria = resolve_value_sets(session, scope, req.criteria)
    walking = _walked_chains(session, req, rtype, criteria, scope)
    if not walking and compartment is None:
        walking = _walks(session, req, rtype, criteria, scope)
    # a criterion over index rows (or the compartment's rows) holds the row to its type; a
    # walk tests the type before the chain, which spares the chain's test on other types
    typed = compartment is None and (bool(walking) or not typed_by(criteria))
    where = [live(r, rtype, scope, typed=typed)]
    where += [criterion_clause(r, rtype, c, scope, walk=i in walking)
              for i, c in enumerate(criteria)]
    if compartment is not None:
        where.append(compartment_clause(r, rtype, compartment))
    return scope, where


def run_system_search(session: Session, principal: Principal, types: tuple[str, ...],
                      requests: list[SearchRequest], *, base: str = "",
                      timeout_ms: int = SEARCH_TIMEOUT_MS) -> SearchResult:
    """One page of a search across resource types (``GET /fhir?_type=...``).

    ``types`` empty means every type; then ``requests`` holds one request parsed against the
    parameters common to all resources (``_id``, ``_lastUpdated``, ``_tag``, ``_security``,
    ``_profile``, ``_source``). Otherwise it holds one request per type, parsed against that
    type's parameters, and a resource matches when it is of one of the types and meets its
    type's criteria. The search is authorised (and audited) per type; a patient's own search
    stays in their compartment; other organisations are reached as in :func:`run_search`.
    """
    reach = reach_of(session, principal)
    kinds = types or ("Resource",)
    patient = principal.patient_id
    for rtype in kinds:
        detail: dict[str, Any] = {"query": [f"{k}={v}" for k, v in requests[0].used][:20],
                                  "system": True}
        if not reach.empty:
            detail["reach"] = _reach_detail(reach, types or tuple(sorted(resource_types())))
        check(session, principal, Action.search,
              target(rtype, principal.org_id, patient_id=patient), detail=detail)
    _time_limit(session, timeout_ms)
    scope = Scope(principal.org_id, base, reach, session.get_bind().dialect.name)
    r = resource
    where: list[ColumnElement[bool]] = []
    if types:
        branches = []
        for rtype, req in zip(types, requests, strict=True):
            criteria = resolve_value_sets(session, scope, req.criteria)
            branches.append(and_(live(r, rtype, scope),
                                 *(criterion_clause(r, rtype, c, scope) for c in criteria)))
        where.append(or_(*branches))
    else:
        every = tuple(sorted(resource_types()))
        where += [visible(r, scope, every), r.c.deleted == false()]
        criteria = resolve_value_sets(session, scope, requests[0].criteria)
        where += [criterion_clause(r, ANY_TYPE, c, scope) for c in criteria]
    if patient is not None:
        members = select(idx_compartment.c.resource_pk).where(
            idx_compartment.c.compartment == "Patient", idx_compartment.c.target_id == patient)
        where.append(r.c.pk.in_(members))
    return _page(session, scope, requests[0], ANY_TYPE, where)


def _walked_chains(session: Session, req: SearchRequest, rtype: str,
                   criteria: list[Criterion], scope: Scope) -> set[int]:
    """Which of ``criteria`` (by position) are chains that are cheaper walked than found
    from their targets (see :data:`CHAIN_WALK_ROW_COST`), asked with one statement per
    chain: the highest row key, and the references to the chain's targets, counted only as
    far as settles it.

    Only a page in key order walks: an exact total (or a ``_sort``) needs every match, which
    is found for less from the targets.
    """
    wanted = _rows_read(req)
    if wanted is None:
        return set()
    least = min(math.ceil(CHAIN_WALK_ROW_COST * wanted * CHAIN_WALK_SPLIT), 2**62)
    walking: set[int] = set()
    for i, crit in enumerate(criteria):
        if not crit.chains or crit.has is not None or crit.param is None \
                or crit.filter is not None:
            continue
        rows = select(func.coalesce(func.max(resource.c.pk), 0)).scalar_subquery()
        share = rows // CHAIN_WALK_SPLIT
        cap = case((share > least, share), else_=least) + 1
        some = chain_references(rtype, crit, scope).limit(cap).subquery()
        refs, top = session.execute(select(select(func.count()).select_from(some)
                                           .scalar_subquery(), rows)).one()
        if refs * refs >= CHAIN_WALK_ROW_COST * wanted * top:
            walking.add(i)
    return walking


def _rows_read(req: SearchRequest) -> int | None:
    """The rows the page statement reads (see :func:`_page`): the page and the next one's
    first, or the count's bound when it counts too; None when it needs every match (an
    exact total, a count alone, a ``_sort``), which no walk can stop early for."""
    if req.sort or req.total == "accurate" or req.summary == "count":
        return None
    return max(req.count + 1, COUNT_BOUND + 1) if req.total is None else req.count + 1


def _walks(session: Session, req: SearchRequest, rtype: str, criteria: list[Criterion],
           scope: Scope) -> set[int]:
    """Every one of ``criteria`` (by position) when the page is found for less by walking
    the type's live rows in key order and testing each (see :data:`WALK_ROW_COST`), none
    otherwise.

    On PostgreSQL, asked with two statements: the planner's estimate of the type's rows,
    then one that counts each criterion's candidates as far as settles it (the next
    only while those before are many enough) and, when all are and there are several, how
    many of the type's first rows in key order match them all. Their counts alone would
    walk where they match together far fewer rows than apart (HbA1c results, and
    quantities over 8).

    Only a page in key order walks, and only when every criterion can be tested on a row
    (``search_sql.walk_candidates``). The decision reads at most :data:`WALK_COUNT_LIMIT`
    candidates per criterion and :data:`WALK_SAMPLE_LIMIT` rows; a type too large to settle
    within them is not walked. SQLite has no estimate at hand, and counting the type's rows
    would cost what walking saves: there, a search walks only where ``WALK_ROW_COST`` is
    nought (as the tests set it).
    """
    wanted = _rows_read(req)
    if wanted is None or not criteria or (
            WALK_ROW_COST != 0 and session.get_bind().dialect.name != "postgresql"):
        return set()
    candidates = [found for c in criteria
                  if (found := walk_candidates(rtype, c, scope)) is not None]
    if len(candidates) < len(criteria):
        return set()
    everything = set(range(len(criteria)))
    if WALK_ROW_COST == 0:
        return everything
    rows = _estimate(session, resource, [live(resource, rtype, scope)])
    least = math.ceil(math.sqrt(WALK_ROW_COST * wanted * rows))
    if least > WALK_COUNT_LIMIT:
        return set()
    # the type's first rows in key order, as many as hold WALK_SAMPLE_MATCHES matches where
    # the walk begins to pay (where a share of least / rows of them match), or all of them
    size = math.ceil(WALK_SAMPLE_MATCHES * rows / least)
    needed = math.ceil(least * min(size, rows) / rows)
    settled: Any = literal(needed)  # one criterion: its count is its share
    if len(criteria) > 1:
        if size > WALK_SAMPLE_LIMIT:
            return set()
        first = resource.alias("walk_sample")
        sample = (select(first.c.pk, first.c.id).where(live(first, rtype, scope))
                  .order_by(first.c.pk).limit(size).subquery())
        settled = (select(func.count()).select_from(sample)
                   .where(*(criterion_clause(sample, rtype, c, scope, walk=True)
                            for c in criteria)).scalar_subquery())
    # the reference criteria first: they are the ones most often met by few rows
    order = sorted(range(len(criteria)), key=lambda i: criteria[i].type != "reference")
    for i in reversed(order):
        some = candidates[i].limit(least).subquery()
        many = select(func.count()).select_from(some).scalar_subquery() >= least
        settled = case((many, settled), else_=literal(0))
    matched = session.scalar(select(settled)) or 0
    return everything if matched >= needed else set()


def _time_limit(session: Session, timeout_ms: int) -> None:
    """On PostgreSQL, cancel any statement of this search that runs past ``timeout_ms``, plan
    its statements for index pages in memory (see :data:`RANDOM_PAGE_COST`), and never
    compile them (JIT): a search reads a page, and a plan that stops after it (a walked
    chain) is priced as if it read everything, which made PostgreSQL spend 360 ms compiling
    a 40 ms statement. All three are transaction-local: the pooled connection keeps its own
    settings afterwards. Set once per transaction (a transaction bundle's conditional creates
    search several times in one), or savepoint: rolling one back undoes what was set in it."""
    if session.get_bind().dialect.name != "postgresql":
        return
    done = (session.get_nested_transaction() or session.get_transaction(), timeout_ms)
    if session.info.get(_LIMITED) == done:
        return
    session.execute(text("SELECT set_config('statement_timeout', :ms, true), "
                         "set_config('random_page_cost', :cost, true), "
                         "set_config('jit', 'off', true)"),
                    {"ms": str(timeout_ms), "cost": str(RANDOM_PAGE_COST)})
    session.info[_LIMITED] = done


_LIMITED = "careplane.search.limited"


def _estimate(session: Session, r: FromClause, where: list[ColumnElement[bool]]) -> int:
    """``_total=estimate``: PostgreSQL's planner estimate of the matches (no rows are
    counted); elsewhere, where no estimate is at hand, the exact count."""
    stmt = select(r.c.pk).where(*where)
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    # expanding parameters (a consent's hidden patients, NOT IN [...]) rendered in place
    compiled = stmt.compile(dialect=bind.dialect, compile_kwargs={"render_postcompile": True})
    conn = session.connection()
    raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    plan: Any = json.loads(raw) if isinstance(raw, str) else raw
    return int(plan[0]["Plan"]["Plan Rows"])


def _count(session: Session, r: FromClause, where: list[ColumnElement[bool]],
           bound: int | None = None) -> int | None:
    """The number of matches; with ``bound``, None when there are more than that (the
    count stops there, so it costs at most ``bound`` matches however many there are)."""
    if bound is None:
        return session.scalar(select(func.count()).select_from(r).where(*where)) or 0
    some = select(r.c.pk).where(*where).limit(bound + 1).subquery()
    n = session.scalar(select(func.count()).select_from(some)) or 0
    return n if n <= bound else None


def _page(session: Session, scope: Scope, req: SearchRequest, rtype: str,
          where: list[ColumnElement[bool]]) -> SearchResult:
    """One page of matches (and the total the request asks for, and the includes).

    Without ``_total`` the total is given when it costs little: the statement that finds the
    page numbers at most :data:`COUNT_BOUND` matches (or the page, when further), and the
    total is their number when there are no more; beyond that the Bundle has no total (FHIR
    leaves it optional), as an exact count of a common code at scale costs more than the
    page. ``_total=accurate`` always counts them all, in a statement of its own.
    """
    r = resource
    total = None
    if req.summary == "count" or req.total == "accurate":
        total = _count(session, r, where)
    elif req.total == "estimate":
        total = _estimate(session, r, where)
    elif req.total is None and req.count == 0:
        total = _count(session, r, where, COUNT_BOUND)
    if req.summary == "count" or req.count == 0 or (total == 0 and req.total == "accurate"):
        return SearchResult([], [], total, None, warnings=req.warnings)
    cursor = _decode(req.cursor) if req.cursor else {}
    offset = cursor.get("o", 0) if req.sort else 0
    after = None if req.sort else cursor.get("k")
    # Without _total, the statement that finds the page also counts the matches up to the
    # bound (only from the first match: a later keyset page is counted apart), so that the
    # criteria are evaluated once for both.
    counting = req.total is None and after is None
    reach = offset + req.count + 1
    limit = max(reach, COUNT_BOUND + 1) if counting else reach
    order = sort_columns(r, rtype, req.sort) if req.sort else [r.c.pk]
    # The page's keys are chosen first, numbered in the search's order, and only those rows'
    # content is joined: otherwise the planner may fetch the JSON of every match before it
    # sorts and cuts the page.
    keys_q = select(r.c.pk, func.row_number().over(order_by=order).label("n")).where(*where)
    if after is not None:
        keys_q = keys_q.where(r.c.pk > after)
    keys = keys_q.order_by(*order).limit(limit).cte("page_keys")
    extra: list[Any] = []
    if counting:
        extra.append(select(func.count()).select_from(keys).scalar_subquery().label("seen"))
    stmt = (_with_content(r).add_columns(*extra).join(keys, keys.c.pk == r.c.pk)
            .where(keys.c.n > offset, keys.c.n <= reach).order_by(keys.c.n))
    rows = session.execute(stmt).all()
    more = len(rows) > req.count
    seen = rows[0].seen if counting and rows else None
    rows = rows[:req.count]
    matches = [Found(row.pk, row.resource_type, row.id, row.content) for row in rows]
    if req.total is None:
        if seen is not None:
            total = seen if seen < limit else None  # all of them seen, or more than the bound
        elif counting and offset == 0:
            total = 0
        else:
            total = _count(session, r, where, COUNT_BOUND)
    next_cursor = None
    prev_cursor = None
    if more:
        next_cursor = _encode({"o": offset + req.count} if req.sort else {"k": rows[-1].pk})
    if req.sort and offset > 0:
        prev_cursor = _encode({"o": max(0, offset - req.count)})
    included = _includes(session, scope, matches, req.includes) if req.includes else []
    return SearchResult(matches, included, total, next_cursor, prev_cursor, req.warnings)


def _reach_detail(reach: Reach, types: tuple[str, ...]) -> list[str]:
    """For the audit record: which other organisations' records the search could reach."""
    seen = {f"{o.org_id}/{o.patient_id or '*'} via {o.via}": None
            for rtype in types for o in reach.openings(rtype)}
    return list(seen)[:20]


def _targets(source: str, param: str) -> tuple[str, ...]:
    """The types a reference parameter (``*``: any of the type's) may point at."""
    params = search_parameters(source)
    chosen = [p for p in params.values() if p.type == "reference"] if param == "*" \
        else [params[param]] if param in params else []
    types = {t for p in chosen for t in (p.target or ("Resource",))}
    if "Resource" in types or "Any" in types:
        return tuple(sorted(resource_types()))
    return tuple(sorted(t for t in types if t in resource_types()))


def _fetch_forward(session: Session, scope: Scope, sources: list[Found], inc: Include
                   ) -> list[Found]:
    pks = [f.pk for f in sources if f.resource_type == inc.source]
    if not pks:
        return []
    t = INDEX_TABLES["reference"]
    r2 = resource.alias()
    types = (inc.target,) if inc.target else _targets(inc.source, inc.param)
    conds = [t.c.resource_pk.in_(pks), t.c.resource_type == inc.source,
             visible(r2, scope, types), r2.c.deleted == false()]
    if inc.param != "*":
        conds.append(param_is(t, inc.source, inc.param))
    if inc.target:
        conds.append(r2.c.resource_type == inc.target)
    stmt = (_with_content(r2)
            .join(t, and_(t.c.target_type == r2.c.resource_type, t.c.target_id == r2.c.id))
            .where(*conds).limit(MAX_INCLUDED))
    return [Found(row.pk, row.resource_type, row.id, row.content, "include")
            for row in session.execute(stmt)]


def _fetch_reverse(session: Session, scope: Scope, targets: list[Found], inc: Include
                   ) -> list[Found]:
    by_type: dict[str, list[str]] = {}
    for f in targets:
        by_type.setdefault(f.resource_type, []).append(f.id)
    if inc.target:
        by_type = {k: v for k, v in by_type.items() if k == inc.target}
    if not by_type:
        return []
    t = INDEX_TABLES["reference"]
    r2 = resource.alias()
    conds = [t.c.resource_type == inc.source, live(r2, inc.source, scope),
             or_(*(and_(t.c.target_type == k, t.c.target_id.in_(v))
                   for k, v in by_type.items()))]
    if inc.param != "*":
        conds.append(param_is(t, inc.source, inc.param))
    stmt = (_with_content(r2).join(t, t.c.resource_pk == r2.c.pk)
            .where(*conds).limit(MAX_INCLUDED))
    return [Found(row.pk, row.resource_type, row.id, row.content, "include")
            for row in session.execute(stmt)]


def _includes(session: Session, scope: Scope, matches: list[Found], includes: list[Include]
              ) -> list[Found]:
    seen = {f.pk for f in matches}
    out: list[Found] = []

    def add(found: list[Found]) -> list[Found]:
        fresh = []
        for f in found:
            if f.pk not in seen:
                seen.add(f.pk)
                fresh.append(f)
        out.extend(fresh)
        return fresh

    def apply(incs: list[Include], sources: list[Found]) -> list[Found]:
        fresh: list[Found] = []
        for inc in incs:
            fetch = _fetch_reverse if inc.reverse else _fetch_forward
            fresh += add(fetch(session, scope, sources, inc))
        return fresh

    latest = apply(includes, matches)
    iterating = [i for i in includes if i.iterate]
    rounds = 1
    while latest and iterating and rounds < ITERATE_ROUNDS:
        latest = apply(iterating, latest)
        rounds += 1
    return out


def _link(base: str, path: str, used: list[tuple[str, str]], cursor: str | None) -> str:
    params = list(used) + ([("_cursor", cursor)] if cursor else [])
    query = urlencode(params)
    return (f"{base}/{path}" if path else base) + (f"?{query}" if query else "")


def searchset(result: SearchResult, req: SearchRequest, *, base: str, path: str
              ) -> dict[str, Any]:
    """The searchset Bundle of ``result``: links, total, matches, includes, an outcome."""
    links = [{"relation": "self", "url": _link(base, path, req.used, req.cursor)}]
    if req.cursor:
        links.append({"relation": "first", "url": _link(base, path, req.used, None)})
    if result.previous_cursor is not None:
        links.append({"relation": "previous",
                      "url": _link(base, path, req.used, result.previous_cursor)})
    if result.next_cursor is not None:
        links.append({"relation": "next", "url": _link(base, path, req.used,
                                                       result.next_cursor)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    entries = []
    for f in result.matches + result.included:
        content = shape(f.content, req.summary, req.elements) if f.mode == "match" \
            else f.content
        entries.append({"fullUrl": f"{base}/{f.resource_type}/{f.id}", "resource": content,
                        "search": {"mode": f.mode}})
    if result.warnings:
        entries.append({"resource": operation_outcome(result.warnings),
                        "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle
