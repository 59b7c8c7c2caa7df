"""``/fhir/AuditEvent``: the audit trail as FHIR R4 AuditEvents, read-only.

The trail stays where it is written (``audit_record``, hash-chained by
:mod:`careplane.security.audit`); each AuditEvent is a view of one record made by
:func:`careplane.security.audit_fhir.to_audit_event`, never stored as a FHIR resource. So the
type answers read, vread (version 1: a record never changes) and search, in the Patient
compartment too, and refuses every write with 405: the server alone writes its trail.

Who sees it: the access policy decides on the target ``audit:record`` of the caller's
organisation (administrators only, as for ``/api/audit`` and the admin page), and an
administrator sees the records of their own organisation: its members' actions and every
access to its data. Reading the trail is itself audited.

Search parameters: ``_id``, ``date`` (with the FHIR prefixes ``eq ne lt le gt ge sa eb`` at
any precision from a year to a second; repeat for a range), ``patient`` (``Patient/<id>`` or
the id), ``agent`` (the user's id or username, or ``<Type>/<id>``), ``agent-name``,
``altid``, ``action`` (C R U D E), ``outcome`` (0 4 8), ``entity`` (``<Type>/<id>``),
``_sort`` (``-date``, the default, or ``date``), ``_count`` (1 to 500, default 50),
``_total=accurate`` and the paging cursor of the ``next`` links. Comma-separated values mean
"any of". Anything else is refused with 400, naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request, Response
from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select
from starlette.concurrency import run_in_threadpool

from careplane.deps import PlatformDep
from careplane.records.errors import FhirError
from careplane.records.routes import FhirRoute, Negotiated, base_url, fhir_json
from careplane.security.audit import AuditRecord, flush_all
from careplane.security.audit_fhir import to_audit_event
from careplane.security.deps import PrincipalDep
from careplane.security.guard import authorize
from careplane.security.policy import Action, Target

__all__ = ["router"]

router = APIRouter(prefix="/fhir", route_class=FhirRoute, tags=["fhir"])

KIND = "audit:record"
DEFAULT_COUNT = 50
MAX_COUNT = 500
_ACTIONS = {"C": ("create",), "R": ("read",), "U": ("update",), "D": ("delete",),
            "E": ("search", "export", "execute")}
_OUTCOMES = {"0": "success", "4": "denied", "8": "failure"}
_DATE = re.compile(r"^(?P<prefix>eq|ne|lt|le|gt|ge|sa|eb)?(?P<value>[0-9]{4}(-[0-9]{2}"
                   r"(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
                   r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?)$")
_READ_ONLY = ("AuditEvent is read-only: the server writes its audit trail itself; read or "
              "search it with GET")


def _number(value: str) -> int | None:
    """A non-negative id-sized integer written in ASCII digits, else None."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


def _refused() -> FhirError:
    return FhirError.of(405, "not-supported", _READ_ONLY, headers={"Allow": "GET"})


def _bad(message: str, expression: str | None = None) -> FhirError:
    return FhirError.of(400, "invalid", message, expression=expression)


# -- search parameters ------------------------------------------------------------------------

def _date_range(text: str) -> tuple[str, datetime, datetime]:
    """(prefix, start, end) of a FHIR date search value: the instant range it denotes."""
    match = _DATE.match(text)
    if match is None:
        raise _bad(f"date={text!r} is not a FHIR date (e.g. ge2024-05-01 or "
                   "2024-05-01T10:00:00Z)", "date")
    prefix, value = match["prefix"] or "eq", match["value"]
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1, tzinfo=UTC)
            end = start.replace(year=start.year + 1)
        elif len(value) == 7:
            start = datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
            end = (start + timedelta(days=32)).replace(day=1)
        elif len(value) == 10:
            start = datetime.fromisoformat(value).replace(tzinfo=UTC)
            end = start + timedelta(days=1)
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            start = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            seconds = value[11:].count(":") == 2
            if "." in value:
                end = start + timedelta(microseconds=1)
            else:
                end = start + (timedelta(seconds=1) if seconds else timedelta(minutes=1))
    except (ValueError, OverflowError) as exc:
        raise _bad(f"date={text!r}: {exc}", "date") from None
    return prefix, start.astimezone(UTC), end.astimezone(UTC)


def _date_clause(text: str) -> ColumnElement[bool]:
    prefix, start, end = _date_range(text)
    at = AuditRecord.at
    return {"eq": and_(at >= start, at < end), "ne": not_(and_(at >= start, at < end)),
            "lt": at < start, "le": at < end, "gt": at >= end, "ge": at >= start,
            "sa": at >= end, "eb": at < start}[prefix]


def _values(raw: str, name: str) -> list[str]:
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise _bad(f"{name} needs a value", name)
    return values


def _ref_id(value: str, wanted: str | None = None) -> str:
    """The id of ``<Type>/<id>`` (or of a plain id); the type must be ``wanted`` if given."""
    value = value.rsplit("/_history/", 1)[0]
    if "/" in value:
        rtype, _, rid = value.rstrip("/").rpartition("/")
        rtype = rtype.rsplit("/", 1)[-1]
        if wanted and rtype != wanted:
            raise _bad(f"{value!r} is not a {wanted} reference")
        return rid
    return value


@dataclass
class _Query:
    clauses: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    ascending: bool = False
    cursor: int | None = None
    total: bool = False
    kept: list[tuple[str, str]] = field(default_factory=list)  # for the self/next links


def _parse(pairs: list[tuple[str, str]]) -> _Query:
    q = _Query()
    for name, raw in pairs:
        kept = True
        if name == "_id":
            ids = [n for n in map(_number, _values(raw, name)) if n is not None]
            q.clauses.append(AuditRecord.id.in_(ids) if ids else AuditRecord.id.is_(None))
        elif name == "date":
            q.clauses.append(_date_clause(raw.strip()))
        elif name in ("patient", "subject"):
            q.clauses.append(AuditRecord.patient_id.in_(
                [_ref_id(v, "Patient") for v in _values(raw, name)]))
        elif name == "agent":
            anyone = [_ref_id(v) for v in _values(raw, name)]
            q.clauses.append(or_(AuditRecord.actor_id.in_(anyone),
                                 AuditRecord.actor_name.in_(anyone)))
        elif name == "agent-name":
            q.clauses.append(AuditRecord.actor_name.in_(_values(raw, name)))
        elif name == "altid":
            q.clauses.append(AuditRecord.actor_id.in_(_values(raw, name)))
        elif name == "action":
            codes = _values(raw, name)
            unknown = [c for c in codes if c not in _ACTIONS]
            if unknown:
                raise _bad(f"action {unknown[0]!r} is not one of C, R, U, D, E", name)
            q.clauses.append(AuditRecord.action.in_([a for c in codes for a in _ACTIONS[c]]))
        elif name == "outcome":
            codes = _values(raw, name)
            unknown = [c for c in codes if c not in _OUTCOMES]
            if unknown:
                raise _bad(f"outcome {unknown[0]!r} is not one of 0, 4, 8", name)
            q.clauses.append(AuditRecord.outcome.in_([_OUTCOMES[c] for c in codes]))
        elif name == "entity":
            either = []
            for value in _values(raw, name):
                rtype, _, rid = value.rstrip("/").rpartition("/")
                if not rtype or not rid:
                    raise _bad(f"entity={value!r} must be a reference <Type>/<id>", name)
                either.append(and_(AuditRecord.target_kind == f"records:{rtype}",
                                   AuditRecord.target_id == rid))
            q.clauses.append(or_(*either))
        elif name == "_count":
            count = _number(raw)
            if count is None or not 1 <= count <= MAX_COUNT:
                raise _bad(f"_count must be a whole number from 1 to {MAX_COUNT}", name)
            q.count = count
        elif name == "_sort":
            if raw not in ("date", "-date", "_id", "-_id"):
                raise _bad("AuditEvent searches sort by date only (_sort=date or -date)", name)
            q.ascending = not raw.startswith("-")
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise _bad("_total is one of none, estimate, accurate", name)
            q.total = raw == "accurate"
        elif name == "_cursor":
            q.cursor = _number(raw)
            if q.cursor is None:
                raise _bad("_cursor is the paging position of a next link", name)
            kept = False
        elif name in ("_format",):
            kept = False
        else:
            raise _bad(f"AuditEvent cannot be searched by {name!r}; the parameters are _id, "
                       "date, patient, agent, agent-name, altid, action, outcome, entity, "
                       "_sort, _count and _total", name)
        if kept:
            q.kept.append((name, raw))
    return q


def _visible(org_id: str) -> ColumnElement[bool]:
    """An organisation's part of the trail: its members' actions and accesses to its data."""
    return or_(AuditRecord.org_id == org_id, AuditRecord.target_org_id == org_id)


def _search(request: Request, platform: PlatformDep, principal: PrincipalDep,
            pairs: list[tuple[str, str]]) -> Response:
    q = _parse(pairs)
    base = base_url(request)
    flush_all()  # reads recorded moments ago are part of what is searched
    with platform.session() as session:
        authorize(session, principal, Action.search, Target(KIND, principal.org_id),
                  source="fhir", detail={"type": "AuditEvent",
                                         "query": urlencode(q.kept)[:500]})
        query: Select[AuditRecord] = select(AuditRecord).where(
            _visible(principal.org_id), *q.clauses)
        total = session.scalar(select(func.count()).select_from(query.subquery())) \
            if q.total else None
        if q.cursor is not None:
            query = query.where(AuditRecord.id > q.cursor if q.ascending
                                else AuditRecord.id < q.cursor)
        order = AuditRecord.id.asc() if q.ascending else AuditRecord.id.desc()
        rows = list(session.scalars(query.order_by(order).limit(q.count + 1)))
        more = len(rows) > q.count
        rows = rows[:q.count]
        entries = [{"fullUrl": f"{base}/AuditEvent/{row.id}", "resource": to_audit_event(row),
                    "search": {"mode": "match"}} for row in rows]
    path = request.url.path.removeprefix("/fhir")
    links = [{"relation": "self", "url": f"{base}{path}?{urlencode(q.kept)}".rstrip("?")}]
    if more:
        links.append({"relation": "next", "url": f"{base}{path}?"
                      f"{urlencode([*q.kept, ('_cursor', str(rows[-1].id))])}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links,
                              "entry": entries}
    if total is not None:
        bundle["total"] = total
    return fhir_json(bundle)


def _pairs(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(request.url.query, keep_blank_values=True)


# -- routes -----------------------------------------------------------------------------------

@router.get("/AuditEvent", dependencies=[Negotiated])
def search_audit_events(request: Request, platform: PlatformDep,
                        principal: PrincipalDep) -> Response:
    """Search this organisation's audit trail (administrators only), newest first."""
    return _search(request, platform, principal, _pairs(request))


@router.post("/AuditEvent/_search", dependencies=[Negotiated])
async def search_audit_events_post(request: Request, platform: PlatformDep,
                                   principal: PrincipalDep) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise FhirError.of(415, "not-supported", "_search takes a form-encoded body")
    form = parse_qsl((await request.body()).decode("utf-8", "replace"),
                     keep_blank_values=True)
    return await run_in_threadpool(_search, request, platform, principal,
                                   _pairs(request) + form)


@router.get("/Patient/{pid}/AuditEvent", dependencies=[Negotiated])
def patient_audit_events(pid: str, request: Request, platform: PlatformDep,
                         principal: PrincipalDep) -> Response:
    """The Patient compartment: every access to this patient's records."""
    return _search(request, platform, principal, [("patient", pid), *_pairs(request)])


def _one(platform: PlatformDep, principal: PrincipalDep, rid: str) -> dict[str, Any]:
    flush_all()
    with platform.session() as session:
        authorize(session, principal, Action.read, Target(KIND, principal.org_id, id=rid),
                  source="fhir", detail={"type": "AuditEvent"})
        number = _number(rid)
        row = session.get(AuditRecord, number) if number is not None else None
        if row is None or principal.org_id not in (row.org_id, row.target_org_id):
            raise FhirError.of(404, "not-found", f"AuditEvent/{rid} is not known")
        return to_audit_event(row)


def _event_response(request: Request, event: dict[str, Any]) -> Response:
    version = 'W/"1"'
    if (request.headers.get("if-none-match") or "").strip() == version:
        return Response(status_code=304, headers={"ETag": version})
    return fhir_json({**event, "meta": {**event["meta"], "versionId": "1",
                                        "lastUpdated": event["recorded"]}},
                     headers={"ETag": version,
                              "Content-Location": f"{base_url(request)}/AuditEvent/"
                                                  f"{event['id']}/_history/1"})


@router.get("/AuditEvent/_history", dependencies=[Negotiated])
@router.get("/AuditEvent/{rid}/_history", dependencies=[Negotiated])
def audit_event_history(request: Request, principal: PrincipalDep) -> Response:
    raise FhirError.of(405, "not-supported", "AuditEvents are never changed, so they have no "
                       "history; search /fhir/AuditEvent by date instead",
                       headers={"Allow": "GET"})


@router.get("/AuditEvent/{rid}", dependencies=[Negotiated])
def read_audit_event(rid: str, request: Request, platform: PlatformDep,
                     principal: PrincipalDep) -> Response:
    return _event_response(request, _one(platform, principal, rid))


@router.get("/AuditEvent/{rid}/_history/{vid}", dependencies=[Negotiated])
def vread_audit_event(rid: str, vid: str, request: Request, platform: PlatformDep,
                      principal: PrincipalDep) -> Response:
    event = _one(platform, principal, rid)
    if vid != "1":
        raise FhirError.of(404, "not-found", f"AuditEvent/{rid} has only version 1")
    return _event_response(request, event)


@router.post("/AuditEvent", dependencies=[Negotiated])
@router.put("/AuditEvent", dependencies=[Negotiated])
@router.delete("/AuditEvent", dependencies=[Negotiated])
@router.patch("/AuditEvent", dependencies=[Negotiated])
@router.put("/AuditEvent/{rid}", dependencies=[Negotiated])
@router.patch("/AuditEvent/{rid}", dependencies=[Negotiated])
@router.delete("/AuditEvent/{rid}", dependencies=[Negotiated])
def write_audit_event(request: Request, principal: PrincipalDep) -> Response:
    raise _refused()
