"""Keeping the search indexes right: rebuild them after the parameters change, refresh stats.

``reindex`` recomputes every current resource's index rows (and its compartments and Patient)
from its stored JSON, in batches that each commit on their own: the server keeps serving
throughout, each resource's rows are swapped within one transaction so a search sees either
the old rows or the new, never none, and an interrupted run simply starts again. It is what
``careplane records reindex`` runs after an upgrade changes the search parameters or how a
value is indexed.

``analyze`` refreshes the planner's statistics. PostgreSQL's autovacuum does this on its own
within about a minute of a large load, but a search issued in that minute against tables that
grew from empty can get a plan built for empty tables; loaders and benchmarks call it once
their data is in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, delete, select, text, update

from careplane.platform.db import Database
from careplane.records.indexer import index_resource
from careplane.records.models import (
    INDEX_TABLES,
    idx_compartment,
    metadata,
    resource,
    resource_version,
)
from careplane.records.store import bulk_insert

__all__ = ["ReindexResult", "analyze", "reindex"]


@dataclass(frozen=True)
class ReindexResult:
    resources: int
    rows: int
    failed: tuple[str, ...]  # Type/id of resources whose stored JSON no longer indexes


def reindex(db: Database, *, types: set[str] | None = None, batch: int = 500,
            progress: Callable[[int], None] | None = None) -> ReindexResult:
    """Rebuild the index rows of every current (not deleted) resource, ``batch`` at a time."""
    after = 0
    done = rows_written = 0
    failed: list[str] = []
    while True:
        with db.session() as session:
            stmt = (select(resource.c.pk, resource.c.resource_type, resource.c.id,
                           resource_version.c.content)
                    .join(resource_version,
                          and_(resource_version.c.resource_pk == resource.c.pk,
                               resource_version.c.version == resource.c.version))
                    .where(resource.c.pk > after, resource.c.deleted.is_(False))
                    .order_by(resource.c.pk).limit(batch))
            if types:
                stmt = stmt.where(resource.c.resource_type.in_(sorted(types)))
            found = session.execute(stmt).all()
            if not found:
                break
            after = found[-1].pk
            pks = [row.pk for row in found]
            new_rows: dict[str, list[dict[str, object]]] = {}
            compartments: list[dict[str, object]] = []
            patients: list[dict[str, object]] = []
            for row in found:
                try:
                    indexed = index_resource(row.content)
                except Exception:  # reported, and its old rows are kept
                    failed.append(f"{row.resource_type}/{row.id}")
                    pks.remove(row.pk)
                    continue
                for kind, kind_rows in indexed.rows.items():
                    new_rows.setdefault(kind, []).extend(
                        {**r, "resource_pk": row.pk} for r in kind_rows)
                compartments.extend({"resource_pk": row.pk, "resource_type": row.resource_type,
                                     "compartment": c, "target_id": t}
                                    for c, t in indexed.compartments)
                patients.append({"b_pk": row.pk, "b_patient_id": indexed.patient_id})
            for table in (*INDEX_TABLES.values(), idx_compartment):
                session.execute(delete(table).where(table.c.resource_pk.in_(pks)))
            for kind, kind_rows in new_rows.items():
                bulk_insert(session, INDEX_TABLES[kind], kind_rows)
                rows_written += len(kind_rows)
            bulk_insert(session, idx_compartment, compartments)
            if patients:
                session.execute(update(resource).where(resource.c.pk == bindparam("b_pk"))
                                .values(patient_id=bindparam("b_patient_id")), patients,
                                execution_options={"synchronize_session": False})
            done += len(pks)
        if progress is not None:
            progress(done)
    return ReindexResult(done, rows_written, tuple(failed))


def analyze(db: Database) -> None:
    """Refresh the query planner's statistics of the records tables."""
    names = [t.name for t in metadata.sorted_tables if t.name.startswith("fhir_")]
    with db.engine.begin() as conn:
        for name in names:
            conn.execute(text(f'ANALYZE "{name}"'))
