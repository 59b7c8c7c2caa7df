"""``Patient/[id]/$everything``: the patient's record in one Bundle.

The record is the Patient, every resource in its Patient compartment (the spec's
CompartmentDefinition, already resolved into ``fhir_idx_compartment`` at write time), and the
resources those refer to (practitioners, organisations, medications, locations), all held to
the caller's organisation less what patients' consents refuse the caller (a patient whose
consent refuses the caller a search of their record is answered 403: break-the-glass opens
single reads, not the whole record; a refused type or security label leaves those resources
out). It costs four statements whatever the record's size; ``_type``, ``_since`` and
``_count`` narrow it, and a keyset cursor pages it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import and_, false, select
from sqlalchemy.orm import Session

from careplane.records import store
from careplane.records.access import reach_of
from careplane.records.errors import FhirError
from careplane.records.models import INDEX_TABLES, idx_compartment, resource, resource_version
from careplane.records.search import MAX_INCLUDED
from careplane.records.search_params import MAX_COUNT
from careplane.records.search_sql import Scope, visible
from careplane.records.spec import resource_types
from careplane.records.values import date_range
from careplane.security import Principal

__all__ = ["everything"]

DEFAULT_PAGE = 500


def everything(session: Session, principal: Principal, patient_id: str,
               params: list[tuple[str, str]], *, base: str) -> dict[str, Any]:
    patient = store.read(session, principal, "Patient", patient_id)  # authorises, 404/410
    types: set[str] | None = None
    since: datetime | None = None
    count = DEFAULT_PAGE
    after = 0
    used: list[tuple[str, str]] = []
    for name, value in params:
        if name == "_type":
            types = {t.strip() for t in value.split(",") if t.strip()}
            unknown = types - resource_types()
            if unknown:
                raise FhirError.of(400, "invalid", f"_type: not resource types: "
                                   f"{', '.join(sorted(unknown))}")
        elif name == "_since":
            try:
                since = date_range(value).low
            except ValueError as exc:
                raise FhirError.of(400, "invalid", f"_since: {exc}") from None
        elif name == "_count":
            if not value.isdigit() or int(value) < 1:
                raise FhirError.of(400, "invalid", "_count must be a positive whole number")
            count = min(int(value), MAX_COUNT)
        elif name == "_cursor":
            if not value.isdigit():
                raise FhirError.of(400, "invalid", "_cursor is not a cursor this server issued")
            after = int(value)
            continue
        used.append((name, value))
    reach = reach_of(session, principal, other_orgs=False)
    if patient_id in reach.own_opening("Patient").hidden_patients:
        raise FhirError.of(403, "forbidden", "the patient's consent refuses you a search of "
                           "this record (break-the-glass opens single reads only)")
    scope = Scope(principal.org_id, base, reach, session.get_bind().dialect.name)
    shown = tuple(sorted(types if types is not None else resource_types()))
    r = resource
    v = resource_version
    members = select(idx_compartment.c.resource_pk).where(
        idx_compartment.c.compartment == "Patient", idx_compartment.c.target_id == patient_id)
    stmt = (select(r.c.pk, r.c.resource_type, r.c.id, v.c.content)
            .join(v, and_(v.c.resource_pk == r.c.pk, v.c.version == r.c.version))
            .where(r.c.pk.in_(members), visible(r, scope, shown),
                   r.c.deleted == false(), r.c.pk > after,
                   ~and_(r.c.resource_type == "Patient", r.c.id == patient_id)))
    if types is not None:
        stmt = stmt.where(r.c.resource_type.in_(types))
    if since is not None:
        stmt = stmt.where(r.c.last_updated >= since)
    rows = session.execute(stmt.order_by(r.c.pk).limit(count + 1)).all()
    more = len(rows) > count
    rows = rows[:count]
    found: list[tuple[str, str, dict[str, Any]]] = []
    if after == 0 and (types is None or "Patient" in types):
        found.append(("Patient", patient_id, patient.content or {}))
    found += [(row.resource_type, row.id, row.content) for row in rows]
    seen = {(t, i) for t, i, _ in found}
    pks = [row.pk for row in rows]
    if pks:
        t = INDEX_TABLES["reference"]
        r2 = resource.alias()
        refs = (select(r2.c.resource_type, r2.c.id, v.c.content)
                .join(v, and_(v.c.resource_pk == r2.c.pk, v.c.version == r2.c.version))
                .join(t, and_(t.c.target_type == r2.c.resource_type,
                              t.c.target_id == r2.c.id))
                .where(t.c.resource_pk.in_(pks), visible(r2, scope, shown),
                       r2.c.deleted == false())
                .limit(MAX_INCLUDED))
        if types is not None:
            refs = refs.where(r2.c.resource_type.in_(types))
        for row in session.execute(refs):
            if (row.resource_type, row.id) not in seen:
                seen.add((row.resource_type, row.id))
                found.append((row.resource_type, row.id, row.content))
    path = f"Patient/{patient_id}/$everything"
    links = [{"relation": "self", "url": f"{base}/{path}"
              + (f"?{urlencode(used)}" if used else "")}]
    if more:
        links.append({"relation": "next",
                      "url": f"{base}/{path}?" + urlencode([*used, ("_cursor", str(rows[-1].pk))])})
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"fullUrl": f"{base}/{t}/{i}", "resource": c,
                       "search": {"mode": "match"}} for t, i, c in found]}
