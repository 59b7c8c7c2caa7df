"""The FHIR store: create, read, version-read, update and delete, with history kept.

Each write is prepared in memory (validated, given its id, version and ``meta``, indexed) and
then persisted with a fixed number of statements however many resources it carries: the
logical rows, the new versions, the removal of the old index rows and the insertion of the new
ones each go to the database as one (executemany) statement. A transaction bundle persists
its whole set of writes the same way. Every write also publishes ``records.<Type>.changed``
in the same transaction, for real-time subscribers.

Every function takes the caller's :class:`Principal` and authorises through
``careplane.records.access`` before it returns or changes anything; a resource belongs to the
organisation of whoever created it, and keeps it across updates.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import orjson
from sqlalchemy import (
    JSON,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    text,
    true,
)
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from careplane.platform.db import MISSING, driver_rows, new_id, recall, remember, utcnow
from careplane.platform.events import CHANNEL, EventRecord, mark_published, publish
from careplane.records.access import Action, check, target
from careplane.records.errors import FhirError
from careplane.records.indexer import COLUMNS, COMPARTMENT_COLUMNS, IndexRows, index_resource
from careplane.records.models import (
    INDEX_TABLES,
    idx_compartment,
    resource,
    resource_version,
)
from careplane.records.validation import check_id, validate_resource
from careplane.records.values import format_instant
from careplane.security import Principal
from careplane.security.consent import RULE_COLUMNS, remember_rules, rule_of, with_rules
from careplane.security.identity import TOKEN_COLUMNS, holder_of, remember_token, token_query

__all__ = [
    "WRITE_HOOKS",
    "StoredResource",
    "Write",
    "WriteHook",
    "WriteRefused",
    "check_if_match",
    "create",
    "current_row",
    "current_rows",
    "delete_resource",
    "new_id",
    "on_write",
    "patch",
    "persist",
    "prepare_create",
    "prepare_delete",
    "prepare_update",
    "read",
    "read_ahead",
    "topic",
    "update",
    "vread",
]


def topic(resource_type: str) -> str:
    """The event topic published on every change of a ``resource_type`` resource."""
    return f"records.{resource_type}.changed"


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as stored (``content`` is None for a deletion)."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    org_id: str
    patient_id: str | None
    content: dict[str, Any] | None
    method: str = "GET"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version}"


@dataclass
class Write:
    """A change ready to persist: the new version, its index rows, and the row it replaces."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: str
    org_id: str
    content: dict[str, Any] | None
    index: IndexRows | None
    patient_id: str | None
    pk: int | None = None  # the existing logical row, None for a new resource

    @property
    def created(self) -> bool:
        return self.pk is None

    def stored(self) -> StoredResource:
        return StoredResource(self.resource_type, self.id, self.version, self.last_updated,
                              self.content is None, self.org_id, self.patient_id, self.content,
                              self.method)


def now() -> datetime:
    """The current instant, at the millisecond precision that ``meta.lastUpdated`` carries."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _stamp(body: dict[str, Any], rid: str, version: int, when: datetime) -> dict[str, Any]:
    content = dict(body)
    content["id"] = rid
    meta = dict(content["meta"]) if isinstance(content.get("meta"), dict) else {}
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(when)
    content["meta"] = meta
    return content


# -- reading --------------------------------------------------------------------------------

_CURRENT_COLUMNS = (resource.c.pk, resource.c.resource_type, resource.c.id, resource.c.org_id,
                    resource.c.version, resource.c.last_updated, resource.c.deleted,
                    resource.c.patient_id, resource_version.c.content)


# Built once: a read runs these on every request (building a statement and its cache key
# costs more than the indexed lookup itself).
_CURRENT = (select(*_CURRENT_COLUMNS)
            .join(resource_version, and_(resource_version.c.resource_pk == resource.c.pk,
                                         resource_version.c.version == resource.c.version))
            .where(resource.c.resource_type == bindparam("rtype"),
                   resource.c.id == bindparam("rid")))
_CURRENT_LOCKED = _CURRENT.with_for_update(of=resource)
_VERSION = (select(resource.c.org_id, resource.c.patient_id, resource_version.c.version,
                   resource_version.c.last_updated, resource_version.c.deleted,
                   resource_version.c.content, resource_version.c.method)
            .join(resource_version, resource_version.c.resource_pk == resource.c.pk)
            .where(resource.c.resource_type == bindparam("rtype"),
                   resource.c.id == bindparam("rid"),
                   resource_version.c.version == bindparam("version")))


def current_row(session: Session, resource_type: str, rid: str, *,
                lock: bool = False) -> Any:
    """The logical row and current content of ``resource_type/rid`` (any organisation);
    none when :func:`read_ahead` read it already."""
    if not lock:
        ahead = recall(session, ("current", resource_type, rid))
        if ahead is not MISSING:
            return ahead
        rows = driver_rows(session, _CURRENT, {"rtype": resource_type, "rid": rid})
        return _Current(*rows[0]) if rows else None
    return session.execute(_CURRENT_LOCKED,
                           {"rtype": resource_type, "rid": rid}).first()


class _Current(NamedTuple):
    """A current row as the read path gives it (the columns of :data:`_CURRENT_COLUMNS`)."""

    pk: int
    resource_type: str
    id: str
    org_id: str | None
    version: int
    last_updated: datetime
    deleted: bool
    patient_id: str | None
    content: dict[str, Any]


def _ahead_query(by: Literal["hash", "id"]) -> Select[Any]:
    token = token_query(by).subquery("tok")
    current = _CURRENT.subquery("cur")
    joined = with_rules(token.outerjoin(current, true()), current.c.patient_id,
                        current.c.org_id)
    return select(*token.c, *current.c, *RULE_COLUMNS).select_from(joined)


# Built once, as _CURRENT: one per way of finding the token. No token row, no rows at all:
# nothing of the resource is fetched for a token that is not there.
_AHEAD = {by: _ahead_query(by) for by in ("hash", "id")}
_WIDTH = len(_CURRENT_COLUMNS)


def read_ahead(session: Session, resource_type: str, rid: str,
               token: tuple[Literal["hash", "id"], str]) -> None:
    """Fetch in one statement what a read of ``resource_type/rid`` will look up: the caller's
    token row (``token``, from :func:`security.deps.token_key`), the resource's current row
    and its patient's consent provisions, and leave them in the read session for those
    lookups (:mod:`careplane.platform.db`'s ``remember``). On PostgreSQL this makes an
    authenticated read one round trip instead of three. Nothing is decided here."""
    by, key = token
    rows = driver_rows(session, _AHEAD[by], {"rtype": resource_type, "rid": rid, "key": key})
    if not rows:  # no such token: the read ends in a 401, nothing else is needed
        remember_token(session, by, key, None)
        return
    remember_token(session, by, key, holder_of(rows[0]))
    at = TOKEN_COLUMNS
    if rows[0][at] is None:  # the resource does not exist
        remember(session, ("current", resource_type, rid), None)
        return
    current = _Current(*rows[0][at:at + _WIDTH])
    remember(session, ("current", resource_type, rid), current)
    if current.patient_id is not None and current.org_id is not None:
        rules = at + _WIDTH
        remember_rules(session, current.org_id, current.patient_id,
                       tuple(rule_of(r[rules:]) for r in rows if r[rules] is not None))


def current_rows(session: Session, keys: Sequence[tuple[str, str]], *, lock: bool = True
                 ) -> dict[tuple[str, str], Any]:
    """The current rows of many resources at once, by (type, id), locked for update."""
    by_type: dict[str, set[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, set()).add(rid)
    if not by_type:
        return {}
    stmt = (select(*_CURRENT_COLUMNS)
            .join(resource_version, and_(resource_version.c.resource_pk == resource.c.pk,
                                         resource_version.c.version == resource.c.version))
            .where(or_(*(and_(resource.c.resource_type == t, resource.c.id.in_(sorted(ids)))
                         for t, ids in by_type.items()))))
    if lock:
        stmt = stmt.with_for_update(of=resource)
    return {(row.resource_type, row.id): row for row in session.execute(stmt)}


def _stored(row: Row[Any]) -> StoredResource:
    return StoredResource(row.resource_type, row.id, row.version, row.last_updated,
                          row.deleted, row.org_id, row.patient_id, row.content)


def read(session: Session, principal: Principal, resource_type: str, rid: str
         ) -> StoredResource:
    """The current version; 404 if it never existed, 410 if it is deleted."""
    row = current_row(session, resource_type, rid)
    if row is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
    check(session, principal, Action.read,
          target(resource_type, row.org_id, rid, row.patient_id, row.content))
    if row.deleted:
        raise FhirError.of(410, "deleted", f"{resource_type}/{rid} was deleted",
                           headers={"ETag": f'W/"{row.version}"'})
    return _stored(row)


def vread(session: Session, principal: Principal, resource_type: str, rid: str,
          version: str) -> StoredResource:
    """One version of a resource, current or not."""
    if not version.isdigit() or len(version) > 9:  # beyond any version the column holds
        raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version!r}")
    row = session.execute(_VERSION, {"rtype": resource_type, "rid": rid,
                                     "version": int(version)}).first()
    if row is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{rid} has no version {version}")
    check(session, principal, Action.read,
          target(resource_type, row.org_id, rid, row.patient_id, row.content))
    if row.deleted:
        raise FhirError.of(410, "deleted",
                           f"version {version} of {resource_type}/{rid} is a deletion")
    return StoredResource(resource_type, rid, row.version, row.last_updated, row.deleted,
                          row.org_id, row.patient_id, row.content, row.method)


# -- preparing writes -----------------------------------------------------------------------

def prepare_create(principal: Principal, body: dict[str, Any], resource_type: str, *,
                   rid: str | None = None, method: str = "POST",
                   when: datetime | None = None) -> Write:
    """A validated, indexed first version (the body is not modified)."""
    rid = rid or new_id()
    moment = when or now()
    content = _stamp(body, rid, 1, moment)
    index = index_resource(content)
    return Write(resource_type, rid, 1, moment, method, principal.org_id, content, index,
                 index.patient_id)


def prepare_update(row: Row[Any], body: dict[str, Any], *, method: str = "PUT",
                   when: datetime | None = None) -> Write:
    moment = max(when or now(), row.last_updated)
    version = row.version + 1
    content = _stamp(body, row.id, version, moment)
    index = index_resource(content)
    return Write(row.resource_type, row.id, version, moment, method, row.org_id, content,
                 index, index.patient_id, pk=row.pk)


def prepare_delete(row: Row[Any], *, when: datetime | None = None) -> Write:
    moment = max(when or now(), row.last_updated)
    return Write(row.resource_type, row.id, row.version + 1, moment, "DELETE", row.org_id,
                 None, None, row.patient_id, pk=row.pk)


def check_if_match(if_match: str | None, version: int | None, what: str) -> None:
    if if_match is None:
        return
    wanted = if_match.strip()
    if wanted.startswith("W/"):
        wanted = wanted[2:]
    wanted = wanted.strip('"')
    if version is None or wanted != str(version):
        raise FhirError.of(412, "conflict", f"If-Match {if_match} does not match the current "
                           f"version of {what} ({'none' if version is None else version})")


def create(session: Session, principal: Principal, body: Any, *,
           resource_type: str | None = None, rid: str | None = None,
           method: str = "POST") -> StoredResource:
    """Validate, authorise and store a new resource (a server-assigned id unless ``rid``)."""
    rtype = validate_resource(body, resource_type)
    write = prepare_create(principal, body, rtype, rid=rid, method=method)
    check(session, principal, Action.create,
          target(rtype, principal.org_id, write.id, write.patient_id, write.content))
    persist(session, [write])
    return write.stored()


def update(session: Session, principal: Principal, resource_type: str, rid: str, body: Any,
           *, if_match: str | None = None) -> tuple[StoredResource, bool]:
    """Replace the current version (or create with this id); returns (stored, created)."""
    rtype = validate_resource(body, resource_type)
    check_id(rid)
    if body.get("id") != rid:
        raise FhirError.of(400, "invalid", f"the body's id ({body.get('id')!r}) must equal the "
                           f"id in the URL ({rid!r})", expression=f"{rtype}.id")
    row = current_row(session, rtype, rid, lock=True)
    if row is None:
        check_if_match(if_match, None, f"{rtype}/{rid}")
        return create(session, principal, body, resource_type=rtype, rid=rid,
                      method="PUT"), True
    write = prepare_update(row, body)
    check(session, principal, Action.update,
          target(rtype, row.org_id, rid, write.patient_id or row.patient_id, write.content))
    check_if_match(if_match, row.version, f"{rtype}/{rid}")
    persist(session, [write])
    return write.stored(), False


def delete_resource(session: Session, principal: Principal, resource_type: str, rid: str, *,
                    if_match: str | None = None) -> StoredResource | None:
    """Mark deleted (a new, empty version); None if it was deleted already."""
    row = current_row(session, resource_type, rid, lock=True)
    if row is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
    check(session, principal, Action.delete,
          target(resource_type, row.org_id, rid, row.patient_id, row.content))
    if row.deleted:
        return None
    check_if_match(if_match, row.version, f"{resource_type}/{rid}")
    write = prepare_delete(row)
    persist(session, [write])
    return write.stored()


def patch(session: Session, principal: Principal, resource_type: str, rid: str,
          operations: Any, *, if_match: str | None = None) -> StoredResource:
    """Apply a JSON Patch (a list of operations) or a FHIRPath Patch (a Parameters resource)
    to the current version and store the result as a new version."""
    from careplane.records.patch import apply_fhirpath_patch, apply_json_patch

    row = current_row(session, resource_type, rid, lock=True)
    if row is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{rid} is not known")
    check(session, principal, Action.update,
          target(resource_type, row.org_id, rid, row.patient_id, row.content))
    if row.deleted:
        raise FhirError.of(410, "deleted", f"{resource_type}/{rid} was deleted")
    check_if_match(if_match, row.version, f"{resource_type}/{rid}")
    body = apply_fhirpath_patch(row.content, operations) if isinstance(operations, dict) \
        else apply_json_patch(row.content, operations)
    validate_resource(body, resource_type)
    write = prepare_update(row, body, method="PATCH")
    persist(session, [write])
    return write.stored()


# -- persisting -----------------------------------------------------------------------------

#: Per resource type, what must happen with each write of that type in the same transaction
#: (a Consent becomes the policy's rules; an AuditEvent is refused). Registered by
#: ``records.mount``; a hook that raises (a FhirError) fails the whole write.
WriteHook = Callable[[Session, "Write"], None]
WRITE_HOOKS: dict[str, list[WriteHook]] = {}


@dataclass(eq=False)
class WriteRefused(FhirError):
    """A write hook's refusal, naming the write it refused (so a bundle names its entry)."""

    write: Write | None = None


def on_write(resource_type: str, hook: WriteHook) -> None:
    """Call ``hook(session, write)`` for every write of ``resource_type`` before it is kept."""
    WRITE_HOOKS.setdefault(resource_type, []).append(hook)


def persist(session: Session, writes: Sequence[Write]) -> None:
    """Store ``writes`` with a bounded number of statements, all in the caller's transaction."""
    if not writes:
        return
    if WRITE_HOOKS:
        for w in writes:
            for hook in WRITE_HOOKS.get(w.resource_type, ()):
                try:
                    hook(session, w)
                except FhirError as exc:
                    raise WriteRefused(exc.status, exc.issues, exc.headers, write=w) from None
    new = [w for w in writes if w.pk is None]
    fresh = {id(w) for w in new}
    if new:
        _insert_logical(session, new)
    old = [w for w in writes if id(w) not in fresh]
    if old:
        session.execute(
            sql_update(resource).where(resource.c.pk == bindparam("b_pk")).values(
                version=bindparam("b_version"), last_updated=bindparam("b_last_updated"),
                deleted=bindparam("b_deleted"), patient_id=bindparam("b_patient_id")),
            [{"b_pk": w.pk, "b_version": w.version, "b_last_updated": w.last_updated,
              "b_deleted": w.content is None, "b_patient_id": w.patient_id} for w in old],
            execution_options={"synchronize_session": False},
        )
        stale = [w.pk for w in old]
        for table in (*INDEX_TABLES.values(), idx_compartment):
            session.execute(delete(table).where(table.c.resource_pk.in_(stale)))
    insert_rows(session, resource_version, _VERSION_COLUMNS, [
        (w.pk, w.version, w.resource_type, w.org_id, w.last_updated, w.method,
         w.content is None, JsonText(w.content) if w.content is not None else None)
        for w in writes])
    rows: dict[str, list[tuple[Any, ...]]] = {}
    compartments: list[tuple[Any, ...]] = []
    for w in writes:
        if w.index is None:
            continue
        pk = w.pk
        for kind, kind_rows in w.index.tables.items():
            found = rows.get(kind)
            if found is None:
                found = rows[kind] = []
            found.extend([(pk, *r) for r in kind_rows])
        compartments.extend([(pk, w.resource_type, c, t) for c, t in w.index.compartments])
    for kind, kind_rows in rows.items():
        insert_rows(session, INDEX_TABLES[kind], ("resource_pk", *COLUMNS[kind]), kind_rows)
    insert_rows(session, idx_compartment, ("resource_pk", *COMPARTMENT_COLUMNS), compartments)
    events: list[tuple[str, dict[str, Any]]] = [
        (w.org_id, {"resourceType": w.resource_type, "id": w.id,
                    "versionId": str(w.version),
                    "lastUpdated": format_instant(w.last_updated),
                    "action": "deleted" if w.content is None
                    else ("created" if id(w) in fresh else "updated"),
                    "patient": w.patient_id}) for w in writes]
    if len(events) == 1:
        org_id, payload = events[0]
        publish(session, topic(str(payload["resourceType"])), payload, org_id=org_id)
    else:
        _publish_many(session, events)


_VERSION_COLUMNS = ("resource_pk", "version", "resource_type", "org_id", "last_updated",
                    "method", "deleted", "content")
_RESOURCE_COLUMNS = ("pk", "resource_type", "id", "org_id", "version", "last_updated",
                     "deleted", "patient_id")
_EVENT_COLUMNS = ("topic", "payload", "org_id", "created_at")


def _insert_logical(session: Session, new: list[Write]) -> None:
    """Insert the logical rows of new resources and number their writes (``pk``).

    On PostgreSQL the keys are drawn from the table's sequence in one statement and the rows
    streamed with COPY; elsewhere one INSERT ... RETURNING. Either way a duplicate id (two
    creates with the same id at once) is a 409.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        try:
            pks = session.execute(
                insert(resource).returning(resource.c.pk, sort_by_parameter_order=True),
                [{"resource_type": w.resource_type, "id": w.id, "org_id": w.org_id,
                  "version": w.version, "last_updated": w.last_updated,
                  "deleted": w.content is None, "patient_id": w.patient_id} for w in new],
            ).scalars().all()
        except IntegrityError:
            raise FhirError.of(409, "duplicate", "a resource with this id was created at the "
                               "same time; retry") from None
        for w, pk in zip(new, pks, strict=True):
            w.pk = pk
        return
    from psycopg.errors import UniqueViolation

    raw = _raw(session)
    with raw.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('fhir_resource', 'pk')) "
                       "FROM generate_series(1, %s)", (len(new),))
        for w, (pk,) in zip(new, cursor.fetchall(), strict=True):
            w.pk = pk
    try:
        insert_rows(session, resource, _RESOURCE_COLUMNS, [
            (w.pk, w.resource_type, w.id, w.org_id, w.version, w.last_updated,
             w.content is None, w.patient_id) for w in new])
    except UniqueViolation:
        raise FhirError.of(409, "duplicate", "a resource with this id was created at the "
                           "same time; retry") from None


def _publish_many(session: Session, events: list[tuple[str, dict[str, Any]]]) -> None:
    """What ``publish`` does for one event, for many: outbox rows written in this
    transaction (one statement) and a single NOTIFY, which only wakes the subscribers'
    readers (they read the outbox after their cursor, so one wake-up delivers them all)."""
    moment = utcnow()
    insert_rows(session, EventRecord.__table__, _EVENT_COLUMNS, [
        (topic(payload["resourceType"]), JsonText(payload), org_id, moment)
        for org_id, payload in events])
    mark_published(session)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :id)"),
                        {"channel": CHANNEL, "id": "batch"})


class JsonText:
    """A JSON column's value in :func:`insert_rows`: serialised once, by orjson, when the
    row is written (the standard library only for what orjson refuses, an integer beyond
    64 bits)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def text(self) -> str:
        return _json_text(self.value)


def _raw(session: Session) -> Any:
    raw = session.connection().connection.driver_connection
    assert raw is not None
    return raw


def insert_rows(session: Session, table: Table | FromClause, columns: Sequence[str],
                rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (tuples in the order of ``columns``) into ``table`` in one round trip,
    in the session's transaction.

    On PostgreSQL the rows are streamed with ``COPY ... FROM STDIN`` on the driver's own
    connection (one statement, no per-row parse, bind and execute, and no SQLAlchemy
    statement to build); elsewhere they go as one executemany. JSON values come wrapped in
    :class:`JsonText`.
    """
    if not rows:
        return
    assert isinstance(table, Table)
    connection = session.connection()
    json_at = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, JSON)]
    names = ", ".join(f'"{name}"' for name in columns)
    dialect = connection.dialect
    if dialect.name != "postgresql":
        if dialect.paramstyle != "qmark":
            session.execute(insert(table), [
                {name: (value.value if isinstance(value, JsonText) else value)
                 for name, value in zip(columns, row, strict=True)} for row in rows])
            return
        # SQLite: one executemany on the driver, each value converted by its column's own
        # type (what an INSERT built by SQLAlchemy would do, without building one per call)
        processors = _processors(table, tuple(columns), dialect)
        marks = ", ".join("?" for _ in columns)
        connection.exec_driver_sql(  # the names are the table's own, never a caller's
            f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})',  # noqa: S608
            [tuple((value if convert is None
                    else convert(value.value if isinstance(value, JsonText) else value))
                   for convert, value in zip(processors, row, strict=True)) for row in rows])
        return
    raw = _raw(session)
    with raw.cursor() as cursor, cursor.copy(
            f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
        write = copy.write_row
        if not json_at:
            for row in rows:
                write(row)
            return
        for row in rows:
            values = list(row)
            for i in json_at:
                if isinstance(values[i], JsonText):
                    values[i] = values[i].text()
            write(values)


_PROCESSORS: dict[tuple[str, tuple[str, ...], str], list[Any]] = {}


def _processors(table: Table, columns: tuple[str, ...], dialect: Any) -> list[Any]:
    """Each column's bind conversion on ``dialect`` (None where the value goes as it is)."""
    key = (table.name, columns, dialect.name)
    found = _PROCESSORS.get(key)
    if found is None:
        found = _PROCESSORS[key] = [
            table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in columns]
    return found


def bulk_insert(session: Session, table: Table | FromClause, rows: Sequence[dict[str, Any]]
                ) -> None:
    """Insert ``rows`` (dicts by column name) into ``table`` in one round trip, as
    :func:`insert_rows` does. Columns a row leaves out are NULL, except a serial primary
    key, which the database numbers."""
    if not rows:
        return
    assert isinstance(table, Table)
    columns = [c.name for c in table.columns
               if not (c.primary_key and c.autoincrement is True)]
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    insert_rows(session, table, columns, [
        tuple((JsonText(row[name]) if name in json_columns and row.get(name) is not None
               else row.get(name)) for name in columns) for row in rows])


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson does not take (an integer beyond 64 bits)
        return json.dumps(value)


def copy_body(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy, for callers that rewrite references in a body they do not own."""
    return copy.deepcopy(body)
