"""Batch and transaction Bundles posted to the FHIR base.

A *transaction* is all or nothing: its entries are processed in the order the spec sets
(DELETE, POST, PUT/PATCH, GET), every ``urn:uuid:`` full URL is given a real id before any
resource is written so that entries can refer to each other, conditional references
(``Patient?identifier=...``) are resolved to the one resource they match, and all writes are
persisted together in the request's one database transaction. If entry *n* fails, the
request fails with entry *n*'s status and an OperationOutcome naming it, and the database
transaction is rolled back: nothing of entries 1..n-1 remains, events included.

A *batch* processes each entry on its own, in a savepoint, and reports each entry's outcome
in the response; one failing entry leaves the others' work in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy import text
from sqlalchemy.orm import Session

from careplane.records import store
from careplane.records.access import SOURCE, Action, check, target
from careplane.records.errors import FhirError, Issue
from careplane.records.search import conditions_of, first_matches, run_search, searchset
from careplane.records.search_params import SearchRequest, parse_search
from careplane.records.spec import resource_types
from careplane.records.validation import check_id, validate_resource
from careplane.records.values import format_instant
from careplane.security import Principal
from careplane.security.guard import Refusal, authorize_all
from careplane.security.policy import Target

__all__ = ["process_bundle", "rewrite_references"]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class _Entry:
    index: int
    method: str
    rtype: str | None
    rid: str | None
    query: list[tuple[str, str]] | None
    vid: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    history: bool = False
    response: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None


def _entry_error(index: int, exc: FhirError) -> FhirError:
    def where(expr: str) -> str:
        if expr.startswith("Bundle.entry["):
            return expr
        rest = expr.split(".", 1)[1] if "." in expr else ""
        return f"Bundle.entry[{index}].resource" + (f".{rest}" if rest else "")

    issues = [Issue(i.code, f"Bundle.entry[{index}]: {i.diagnostics}", i.severity,
                    tuple(where(e) for e in i.expression)) for i in exc.issues]
    return FhirError(exc.status, issues, exc.headers)


def _parse_url(index: int, url: Any, base: str) -> tuple[str | None, str | None, str | None,
                                                         list[tuple[str, str]] | None, bool]:
    """(type, id, version, query, is_history) of an entry's request.url."""
    if not isinstance(url, str) or not url:
        raise FhirError.of(400, "required", "request.url is missing",
                           expression=f"Bundle.entry[{index}].request.url")
    if base and url.startswith(base + "/"):
        url = url[len(base) + 1:]
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    query = parse_qsl(parts.query, keep_blank_values=True) if parts.query else None
    if not path or path[0] not in resource_types():
        raise FhirError.of(400, "not-supported", f"request.url {url!r} does not name a "
                           "resource type", expression=f"Bundle.entry[{index}].request.url")
    rtype = path[0]
    rid = path[1] if len(path) > 1 else None
    if rid is not None:
        check_id(rid, f"Bundle.entry[{index}].request.url")
    vid = None
    history = False
    if len(path) > 2:
        if path[2] != "_history" or len(path) > 4:
            raise FhirError.of(400, "not-supported", f"request.url {url!r} is not supported "
                               "in a bundle", expression=f"Bundle.entry[{index}].request.url")
        history = True
        vid = path[3] if len(path) == 4 else None
    return rtype, rid, vid, query, history


def _entries(bundle: dict[str, Any], base: str) -> list[_Entry]:
    raw = bundle.get("entry") or []
    if not isinstance(raw, list):
        raise FhirError.of(400, "structure", "Bundle.entry must be an array")
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or not isinstance(e.get("request"), dict):
            raise FhirError.of(400, "required", "every entry needs a request",
                               expression=f"Bundle.entry[{i}].request")
        req = e["request"]
        method = str(req.get("method", "")).upper()
        if method not in _ORDER:
            raise FhirError.of(400, "not-supported", f"request.method {method!r} is not one of "
                               "GET, POST, PUT, PATCH, DELETE",
                               expression=f"Bundle.entry[{i}].request.method")
        rtype, rid, vid, query, history = _parse_url(i, req.get("url"), base)
        res = e.get("resource")
        if method in ("POST", "PUT") and not isinstance(res, dict):
            raise FhirError.of(400, "required", f"a {method} entry needs a resource",
                               expression=f"Bundle.entry[{i}].resource")
        if method == "PATCH":
            raise FhirError.of(400, "not-supported", "PATCH inside a bundle is not supported; "
                               "send it as its own request",
                               expression=f"Bundle.entry[{i}].request.method")
        if method == "POST" and (rid is not None or query):
            raise FhirError.of(400, "invalid", "a POST entry's url is the resource type only",
                               expression=f"Bundle.entry[{i}].request.url")
        if method in ("PUT", "DELETE") and rid is None and not query:
            raise FhirError.of(400, "invalid", f"a {method} entry needs an id or a condition",
                               expression=f"Bundle.entry[{i}].request.url")
        full = e.get("fullUrl")
        out.append(_Entry(i, method, rtype, rid, query, vid,
                          res if isinstance(res, dict) else None,
                          full if isinstance(full, str) else None,
                          req.get("ifNoneExist") if isinstance(req.get("ifNoneExist"), str)
                          else None,
                          req.get("ifMatch") if isinstance(req.get("ifMatch"), str) else None,
                          history))
    return out


def rewrite_references(node: Any, resolve: Callable[[str], str | None]) -> Any:
    """A copy of ``node`` with each ``reference`` string replaced where ``resolve`` says.

    A Bundle carried as a resource (a document, a message) keeps its references untouched:
    they point at its own entries, not at the transaction's.
    """
    if isinstance(node, dict):
        if node.get("resourceType") == "Bundle":
            return node
        return _rewrite_dict(node, resolve)
    return node


def _rewrite(node: Any, resolve: Callable[[str], str | None]) -> Any:
    if isinstance(node, dict):
        if node.get("resourceType") == "Bundle":
            return node
        return _rewrite_dict(node, resolve)
    if isinstance(node, list):
        return [_rewrite(v, resolve) for v in node]
    return node


def _rewrite_dict(node: dict[str, Any], resolve: Callable[[str], str | None]
                  ) -> dict[str, Any]:
    out = {}
    for k, v in node.items():
        if k == "reference" and isinstance(v, str):
            new = resolve(v)
            out[k] = new if new is not None else v
        else:
            out[k] = _rewrite(v, resolve)
    return out


def _condition(rtype: str, query: list[tuple[str, str]]) -> SearchRequest:
    """A condition as a search of the first matches (strict: no guessing)."""
    if not query:
        raise FhirError.of(400, "invalid", "a condition needs at least one search parameter")
    return parse_search(rtype, [*query, ("_count", "2"), ("_total", "none")], strict=True)


def _matching(session: Session, principal: Principal, rtype: str,
              query: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """(id, content) of the caller's resources matching a condition."""
    result = run_search(session, principal, _condition(rtype, query))
    return [(f.id, f.content) for f in result.matches]


def _conditional_reference(session: Session, principal: Principal, ref: str) -> str | None:
    rtype, _, query = ref.partition("?")
    if not query or rtype not in resource_types():
        return None
    found = _matching(session, principal, rtype, parse_qsl(query, keep_blank_values=True))
    if len(found) != 1:
        raise FhirError.of(412, "multiple-matches" if found else "not-found",
                           f"the conditional reference {ref!r} matches {len(found)} "
                           "resources; it must match exactly one")
    return f"{rtype}/{found[0][0]}"


def _response(entry: _Entry, stored: store.StoredResource, status: int, base: str,
              ) -> None:
    entry.response = {"status": _STATUS_TEXT.get(status, str(status)),
                      "etag": stored.etag, "lastModified": format_instant(stored.last_updated)}
    if status == 201 or entry.method in ("PUT", "POST"):
        entry.response["location"] = f"{base}/{stored.location}"
    if stored.content is not None:
        entry.result = stored.content


def _get(session: Session, principal: Principal, entry: _Entry, base: str) -> None:
    assert entry.rtype is not None
    if entry.rid is None or (entry.history and entry.vid is None):
        if entry.history:
            raise FhirError.of(400, "not-supported", "_history inside a bundle is not supported")
        req = parse_search(entry.rtype, entry.query or [])
        result = run_search(session, principal, req, base=base, cross_org=True)
        entry.result = searchset(result, req, base=base, path=entry.rtype)
        entry.response = {"status": "200 OK"}
        return
    if entry.vid is not None:
        stored = store.vread(session, principal, entry.rtype, entry.rid, entry.vid)
    else:
        stored = store.read(session, principal, entry.rtype, entry.rid)
    _response(entry, stored, 200, base)


def _transaction(session: Session, principal: Principal, entries: list[_Entry], base: str
                 ) -> None:
    ids: dict[str, str] = {}          # fullUrl -> Type/id
    skipped: set[int] = set()         # conditional creates that matched an existing resource
    matches = _conditions(session, principal, entries)
    for e in entries:                 # conditional creates first: they may give ids
        if e.method == "POST" and e.if_none_exist is not None:
            assert e.rtype is not None
            found = matches[e.index]
            if found:
                skipped.add(e.index)
                e.rid = found[0][0]
                if e.full_url:
                    ids[e.full_url] = f"{e.rtype}/{e.rid}"
                stored = store.read(session, principal, e.rtype, e.rid)
                _response(e, stored, 200, base)
    for e in entries:
        if e.method in ("PUT", "DELETE") and e.rid is None and e.query:
            found = matches[e.index]
            if found:
                e.rid = found[0][0]
            elif e.method == "PUT":
                e.rid = (e.resource or {}).get("id") or store.new_id()
        if e.method == "POST" and e.index not in skipped:
            e.rid = store.new_id()
        if e.full_url and e.rid and e.method in ("POST", "PUT"):
            ids.setdefault(e.full_url, f"{e.rtype}/{e.rid}")

    resolved: dict[str, str | None] = {}

    def resolve(ref: str) -> str | None:
        if ref in ids:
            return ids[ref]
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            raise FhirError.of(400, "not-found", f"{ref} is not the fullUrl of any entry")
        if "?" in ref and "/" not in ref.split("?", 1)[0]:
            if ref not in resolved:
                resolved[ref] = _conditional_reference(session, principal, ref)
            return resolved[ref]
        return None

    changing = [e for e in entries if e.method in ("PUT", "DELETE") and e.rid is not None]
    rows = store.current_rows(session, [(e.rtype or "", e.rid or "") for e in changing])
    touched: dict[tuple[str, str], int] = {}
    pending: list[_Pending] = []
    moment = store.now()  # one instant for the whole transaction: its lastUpdated
    for e in sorted(entries, key=lambda x: (_ORDER[x.method], x.index)):
        if e.index in skipped or e.method in ("GET", "HEAD"):
            continue
        assert e.rtype is not None
        try:
            if e.rid is None:  # conditional delete that matched nothing
                e.response = {"status": "204 No Content"}
                continue
            key = (e.rtype, e.rid)
            if key in touched:
                raise FhirError.of(400, "invalid", f"{e.rtype}/{e.rid} is changed by entry "
                                   f"{touched[key]} already; a transaction may touch a "
                                   "resource once")
            touched[key] = e.index
            item = _prepare(principal, e, resolve, rows.get(key), moment)
            if item.write is None:
                e.response = {"status": "204 No Content"}
            pending.append(item)
        except FhirError as exc:
            raise _entry_error(e.index, exc) from None
    _authorise_groups(session, principal, pending)
    for item in pending:
        try:
            store.check_if_match(item.entry.if_match, item.version,
                                 f"{item.entry.rtype}/{item.entry.rid}")
        except FhirError as exc:
            raise _entry_error(item.entry.index, exc) from None
    writes = [item.write for item in pending if item.write is not None]
    try:
        store.persist(session, writes)
    except store.WriteRefused as exc:
        entry = next(item.entry for item in pending if item.write is exc.write)
        raise _entry_error(entry.index, exc) from None
    for item in pending:
        if item.write is None:
            continue
        e, write = item.entry, item.write
        _response(e, write.stored(), item.status, base)
        if write.content is None:
            e.response = {"status": "204 No Content", "etag": write.stored().etag}
    for e in entries:
        if e.method in ("GET", "HEAD"):
            try:
                _get(session, principal, e, base)
            except FhirError as exc:
                raise _entry_error(e.index, exc) from None


#: The first key of the advisory locks that serialise conditional writes (PostgreSQL).
_CONDITION_LOCKS = 7350100


def _conditions(session: Session, principal: Principal, entries: list[_Entry]
                ) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """What each conditional create, update and delete matches, by entry (never more than
    one: that is a 412 naming the entry).

    Safe when transactions arrive at once: two that both create ``Organization?identifier=x``
    if it does not exist would otherwise both find nothing and both create it (and every
    later condition would match two). On PostgreSQL a condition that found nothing, and so
    will create, takes a transaction-level advisory lock (all such locks in one statement,
    in sorted order, so that transactions sharing several cannot deadlock) and is searched
    again: a concurrent transaction creating the same resource holds that lock until it
    commits, and the search after it finds what it created. A condition that matched needs
    no lock, so transactions that only refer to existing resources never wait on each other.
    SQLite needs nothing: its transactions hold the database's write lock from the start.
    """
    creates = [e for e in entries if e.method == "POST" and e.if_none_exist is not None]
    changes = [e for e in entries
               if e.method in ("PUT", "DELETE") and e.rid is None and e.query]
    conditional = [*creates, *changes]
    found = dict(zip([e.index for e in conditional],
                     _condition_matches(session, principal, conditional), strict=True))
    creating = [e for e in conditional if not found[e.index] and e.method != "DELETE"]
    if creating and session.get_bind().dialect.name == "postgresql":
        session.execute(text(
            "SELECT pg_advisory_xact_lock(:space, hashtext(c)) "
            "FROM unnest(CAST(:conditions AS text[])) AS t(c)"),
            {"space": _CONDITION_LOCKS,
             "conditions": sorted({_condition_text(e) for e in creating})})
        found.update(zip([e.index for e in creating],
                         _condition_matches(session, principal, creating), strict=True))
    return found


def _condition_text(e: _Entry) -> str:
    query = (e.if_none_exist or "").lstrip("?") if e.method == "POST" \
        else urlencode(e.query or [])
    return f"{e.rtype}?{query}"


def _condition_matches(session: Session, principal: Principal, entries: list[_Entry]
                       ) -> list[list[tuple[str, dict[str, Any]]]]:
    """(id, content) of what each entry's condition matches, all found by one statement;
    more than one match refuses the entry (412)."""
    searches = []
    for e in entries:
        assert e.rtype is not None
        query = parse_qsl((e.if_none_exist or "").lstrip("?"), keep_blank_values=True) \
            if e.method == "POST" else (e.query or [])
        try:
            searches.append(conditions_of(session, principal, _condition(e.rtype, query)))
        except FhirError as exc:
            raise _entry_error(e.index, exc) from None
    found = first_matches(session, searches)
    for e, matches in zip(entries, found, strict=True):
        if len(matches) > 1:
            what = "ifNoneExist" if e.method == "POST" else "the condition"
            raise _entry_error(e.index, FhirError.of(
                412, "multiple-matches", f"{what} matches {len(matches)} resources"))
    return [[(f.id, f.content) for f in matches] for matches in found]


@dataclass
class _Pending:
    """One transaction entry's write, with what authorising it needs."""

    entry: _Entry
    write: store.Write | None
    status: int
    action: Action
    target: Target
    version: int | None  # the current version, for If-Match


def _prepare(principal: Principal, e: _Entry, resolve: Callable[[str], str | None],
             row: Any, when: datetime | None = None) -> _Pending:
    """The write of one entry (not yet authorised), given its current row if it has one."""
    assert e.rtype is not None and e.rid is not None
    if e.method == "DELETE":
        if row is None or row.deleted:
            what = target(e.rtype, row.org_id if row else principal.org_id, e.rid,
                          row.patient_id if row else None, row.content if row else None)
            return _Pending(e, None, 204, Action.delete, what, row.version if row else None)
        return _Pending(e, store.prepare_delete(row, when=when), 204, Action.delete,
                        target(e.rtype, row.org_id, e.rid, row.patient_id, row.content),
                        row.version)
    body = rewrite_references(e.resource, resolve)
    if e.method == "POST":
        body.pop("id", None)
        rtype = validate_resource(body, e.rtype)
        write = store.prepare_create(principal, body, rtype, rid=e.rid, when=when)
        return _Pending(e, write, 201, Action.create,
                        target(rtype, principal.org_id, write.id, write.patient_id,
                               write.content), None)
    body["id"] = body.get("id") or e.rid
    if body["id"] != e.rid:
        raise FhirError.of(400, "invalid", f"the resource id {body['id']!r} differs from the "
                           f"url's {e.rid!r}")
    rtype = validate_resource(body, e.rtype)
    if row is None:
        write = store.prepare_create(principal, body, rtype, rid=e.rid, method="PUT",
                                     when=when)
        return _Pending(e, write, 201, Action.create,
                        target(rtype, principal.org_id, write.id, write.patient_id,
                               write.content), None)
    write = store.prepare_update(row, body, when=when)
    return _Pending(e, write, 200, Action.update,
                    target(rtype, row.org_id, e.rid, write.patient_id or row.patient_id,
                           write.content), row.version)


def _authorise_groups(session: Session, principal: Principal, pending: list[_Pending]
                      ) -> None:
    """One access decision per kind of access in the transaction, audited with every id.

    Entries that differ only in their id (same action, type, organisation, patient and
    security labels) get the same answer from the policy, so a patient's record of 150
    resources costs a handful of decisions instead of 150. Each decision's audit record lists
    the ids it covers; a single resource is audited under its own id as usual. The decisions
    are asked together (``authorize_all``): the patient's consents are read once and the
    records appended in one go.
    """
    groups: dict[tuple[Any, ...], list[_Pending]] = {}
    for item in pending:
        t = item.target
        groups.setdefault((item.action, t.kind, t.org_id, t.patient_id, t.labels), []
                          ).append(item)
    requests: list[tuple[Action, Target, dict[str, Any] | None]] = []
    firsts: list[_Pending] = []
    for (action, _kind, _org, _patient, _labels), items in groups.items():
        first = items[0]
        firsts.append(first)
        if len(items) == 1:
            requests.append((action, first.target, None))
        else:
            ids = [i.target.id for i in items]
            requests.append((action, replace(first.target, id=None),
                             {"ids": ids[:1000], "count": len(ids), "via": "transaction"}))
    try:
        authorize_all(session, principal, requests, source=SOURCE)
    except Refusal as exc:
        raise _entry_error(firsts[exc.index].entry.index,
                           FhirError.of(exc.status_code, "forbidden", str(exc.detail))
                           ) from None


def _batch(session: Session, principal: Principal, entries: list[_Entry], base: str) -> None:
    for e in entries:
        try:
            with session.begin_nested():
                if e.method in ("GET", "HEAD"):
                    _get(session, principal, e, base)
                    continue
                if e.method == "POST" and e.if_none_exist is not None:
                    assert e.rtype is not None
                    found = _matching(session, principal, e.rtype,
                                      parse_qsl(e.if_none_exist.lstrip("?"),
                                                keep_blank_values=True))
                    if len(found) > 1:
                        raise FhirError.of(412, "multiple-matches",
                                           f"ifNoneExist matches {len(found)} resources")
                    if found:
                        stored = store.read(session, principal, e.rtype, found[0][0])
                        _response(e, stored, 200, base)
                        continue
                if e.method in ("PUT", "DELETE") and e.rid is None:
                    assert e.rtype is not None and e.query is not None
                    found = _matching(session, principal, e.rtype, e.query)
                    if len(found) > 1:
                        raise FhirError.of(412, "multiple-matches",
                                           f"the condition matches {len(found)} resources")
                    e.rid = found[0][0] if found else (
                        ((e.resource or {}).get("id") or store.new_id())
                        if e.method == "PUT" else None)
                if e.method == "POST":
                    e.rid = store.new_id()
                if e.rid is None:
                    e.response = {"status": "204 No Content"}
                    continue
                assert e.rtype is not None
                row = store.current_row(session, e.rtype, e.rid, lock=True) \
                    if e.method in ("PUT", "DELETE") else None
                item = _prepare(principal, e, lambda ref: _conditional_reference(
                    session, principal, ref) if "?" in ref else None, row)
                if item.write is None and row is None:
                    e.response = {"status": "204 No Content"}
                    continue
                check(session, principal, item.action, item.target)
                store.check_if_match(e.if_match, item.version, f"{e.rtype}/{e.rid}")
                if item.write is None:
                    e.response = {"status": "204 No Content"}
                    continue
                store.persist(session, [item.write])
                _response(e, item.write.stored(), item.status, base)
                if item.write.content is None:
                    e.response = {"status": "204 No Content"}
        except FhirError as exc:
            e.response = {"status": str(exc.status), "outcome": exc.outcome()}
            e.result = None


def process_bundle(session: Session, principal: Principal, bundle: Any, *, base: str,
                   max_entries: int, minimal: bool = False) -> dict[str, Any]:
    """Run a batch or transaction Bundle and return its response Bundle.

    ``minimal`` (``Prefer: return=minimal``) leaves the written resources out of the
    response: each entry still carries its status, location and ETag.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError.of(400, "invalid", "POST to the base takes a batch or transaction "
                           "Bundle; to store another resource, POST it to its type")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError.of(400, "invalid", f"Bundle.type is {kind!r}; the base accepts "
                           "'batch' or 'transaction' (POST other bundles to /Bundle)",
                           expression="Bundle.type")
    raw = bundle.get("entry") or []
    if isinstance(raw, list) and len(raw) > max_entries:
        raise FhirError.of(413, "too-costly", f"the bundle has {len(raw)} entries; this "
                           f"server accepts at most {max_entries}")
    entries = _entries(bundle, base)
    if kind == "transaction":
        _transaction(session, principal, entries, base)
    else:
        _batch(session, principal, entries, base)
    out = []
    for e in entries:
        item: dict[str, Any] = {}
        if e.result is not None and not (minimal and e.method != "GET"):
            if e.rtype and e.rid and e.method != "GET":
                item["fullUrl"] = f"{base}/{e.rtype}/{e.rid}"
            item["resource"] = e.result
        item["response"] = e.response
        out.append(item)
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": out}
