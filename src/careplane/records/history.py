"""``_history`` of one resource, of a type, or of everything the caller's organisation holds.

History is append-only, so its pages are made stable by pinning the first page's moment:
later pages count an offset among versions no newer than that moment, and what is written
meanwhile appears in the next history request instead of shifting the current one. Deleted
versions are listed without a resource, as the spec asks, with ``request.method = DELETE``.
A type's or the system's history leaves out the patients (and labelled resources) whose
consent refuses the caller a search, as a search does.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session

from careplane.records.access import Action, check, reach_of, target
from careplane.records.errors import FhirError
from careplane.records.models import resource, resource_version
from careplane.records.search_params import DEFAULT_COUNT, MAX_COUNT
from careplane.records.search_sql import Scope, visible
from careplane.records.spec import resource_types
from careplane.records.store import current_row, now
from careplane.records.values import date_range, format_instant
from careplane.security import Principal

__all__ = ["history"]

_STATUS = {"POST": "201", "PUT": "200", "PATCH": "200", "DELETE": "204"}


def _cursor(token: str) -> tuple[int, datetime]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["o"]), datetime.fromisoformat(data["t"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise FhirError.of(400, "invalid", "_cursor is not a cursor this server issued") from None


def _token(offset: int, pinned: datetime) -> str:
    raw = json.dumps({"o": offset, "t": pinned.isoformat()}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def history(session: Session, principal: Principal, params: list[tuple[str, str]], *,
            base: str, resource_type: str | None = None, rid: str | None = None
            ) -> dict[str, Any]:
    """A history Bundle; ``resource_type``/``rid`` narrow it to a type or one resource."""
    count = DEFAULT_COUNT
    since: datetime | None = None
    cursor: str | None = None
    used: list[tuple[str, str]] = []
    for name, value in params:
        if name == "_count":
            if not value.isdigit():
                raise FhirError.of(400, "invalid", "_count must be a whole number")
            count = min(int(value), MAX_COUNT)
        elif name == "_since":
            try:
                since = date_range(value).low
            except ValueError as exc:
                raise FhirError.of(400, "invalid", f"_since: {exc}") from None
        elif name == "_cursor":
            cursor = value
            continue
        used.append((name, value))
    v = resource_version
    stmt = select(v.c.resource_type, resource.c.id, v.c.version, v.c.last_updated,
                  v.c.method, v.c.deleted, v.c.content).join(resource,
                                                              resource.c.pk == v.c.resource_pk)
    if rid is not None and resource_type is not None:
        current = current_row(session, resource_type, rid)
        if current is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
        check(session, principal, Action.read,
              target(resource_type, current.org_id, rid, current.patient_id))
        stmt = stmt.where(v.c.resource_pk == current.pk)
        path = f"{resource_type}/{rid}/_history"
    else:
        check(session, principal, Action.search,
              target(resource_type or "Resource", principal.org_id))
        # the organisation's history, less what patients' consents refuse the caller
        scope = Scope(principal.org_id, base, reach_of(session, principal, other_orgs=False),
                      session.get_bind().dialect.name)
        types = (resource_type,) if resource_type else tuple(sorted(resource_types()))
        stmt = stmt.where(v.c.org_id == principal.org_id, visible(resource, scope, types))
        if resource_type is not None:
            stmt = stmt.where(v.c.resource_type == resource_type)
        path = f"{resource_type}/_history" if resource_type else "_history"
    offset, pinned = _cursor(cursor) if cursor else (0, now())
    stmt = stmt.where(v.c.last_updated <= pinned)
    if since is not None:
        stmt = stmt.where(v.c.last_updated >= since)
    stmt = stmt.order_by(v.c.last_updated.desc(), v.c.resource_pk.desc(), v.c.version.desc())
    rows = session.execute(stmt.offset(offset).limit(count + 1)).all()
    more = len(rows) > count
    rows = rows[:count]

    def link(relation: str, at: int | None) -> dict[str, str]:
        query = urlencode(used + ([("_cursor", _token(at, pinned))] if at is not None else []))
        return {"relation": relation, "url": f"{base}/{path}" + (f"?{query}" if query else "")}

    links = [link("self", offset if cursor else None)]
    if more:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    entries = []
    for row in rows:
        url = f"{row.resource_type}/{row.id}"
        entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
        if not row.deleted:
            entry["resource"] = row.content
        entry["request"] = {"method": row.method,
                            "url": row.resource_type if row.method == "POST" else url}
        entry["response"] = {"status": _STATUS.get(row.method, "200"),
                             "etag": f'W/"{row.version}"',
                             "lastModified": format_instant(row.last_updated)}
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle
