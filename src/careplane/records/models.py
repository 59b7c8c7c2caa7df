"""The FHIR store's tables: resources, every version of each, and typed search indexes.

``fhir_resource`` holds one row per logical resource (type + id) with a pointer to its current
version, its owning organisation and the Patient it belongs to; ``fhir_resource_version``
keeps every version's JSON (JSONB on PostgreSQL), deletions included, so vread and history
never depend on the indexes. The ``fhir_idx_*`` tables hold the current version's search
values, one table per search-parameter type, each shaped for the comparisons its type needs
(dates and quantities as ranges, strings normalised for prefix matching). They are rewritten
in the same transaction as the version they describe, so a search never sees an index that
disagrees with the resource it returns.

The tables are Core tables rather than ORM classes: the write path inserts many index rows
per resource and the search path builds its SQL directly, and neither wants an identity map.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from careplane.platform.db import Base, JSONType, UTCDateTime

__all__ = [
    "INDEX_TABLES",
    "WORDS",
    "idx_compartment",
    "idx_composite",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_reference",
    "idx_string",
    "idx_token",
    "idx_uri",
    "resource",
    "resource_version",
]

#: The longest string kept in an indexed (b-tree) column; longer values are cut, never refused.
INDEXED_CHARS = 255

_PK = BigInteger().with_variant(Integer, "sqlite")
# Folded text searched by prefix ranges: byte order ("C") on PostgreSQL, as SQLite's BINARY.
_FOLDED = String(255).with_variant(String(255, collation="C"), "postgresql")
metadata = Base.metadata

#: SQLite's full-text index of the current versions (migration 0107): an FTS5 virtual table,
#: which no model can declare.
WORDS = "fhir_resource_words"
metadata.info.setdefault("unmodelled", set()).add(WORDS)

resource = Table(
    "fhir_resource",
    metadata,
    Column("pk", _PK, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("org_id", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("patient_id", String(64)),
    UniqueConstraint("resource_type", "id"),
    Index("ix_fhir_resource_org_type_updated", "org_id", "resource_type", "last_updated"),
    Index("ix_fhir_resource_patient", "patient_id"),
)
# The live rows of a type in key order, which a search walks when its criteria are met by
# many of them (migration 0111, records.search._walks).
Index("ix_fhir_resource_live_type", resource.c.resource_type, resource.c.org_id, resource.c.pk,
      postgresql_where=~resource.c.deleted, sqlite_where=~resource.c.deleted)

resource_version = Table(
    "fhir_resource_version",
    metadata,
    Column("resource_pk", _PK, ForeignKey("fhir_resource.pk", ondelete="CASCADE"),
           primary_key=True),
    Column("version", Integer, primary_key=True),
    # Denormalised from fhir_resource so that type and system history are one index range scan.
    Column("resource_type", String(64), nullable=False),
    Column("org_id", String(32), nullable=False),
    Column("last_updated", UTCDateTime, nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", JSONType),
    Index("ix_fhir_resource_version_history", "org_id", "resource_type", "last_updated"),
    Index("ix_fhir_resource_version_updated", "org_id", "last_updated"),
)


def _index_table(name: str, *columns: Column[object], indexes: tuple[tuple[str, ...], ...],
                 lookups: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> Table:
    """An index table: which resource, for which parameter, and the type's own columns.

    ``lookups`` are the covering indexes of migration 0104, by name suffix: on SQLite all
    their columns are key columns, as declared here; on PostgreSQL the ones after
    ``resource_pk`` (or after the value, for strings and dates) are INCLUDE columns."""
    table = Table(
        name,
        metadata,
        Column("resource_pk", _PK, ForeignKey("fhir_resource.pk", ondelete="CASCADE"),
               nullable=False),
        Column("resource_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(f"ix_{name}_resource", "resource_pk"),
    )
    for cols in indexes:
        Index(f"ix_{name}_{'_'.join(cols)}", *(table.c[c] for c in cols))
    for suffix, cols in lookups:
        Index(f"ix_{name}_{suffix}", *(table.c[c] for c in cols))
    return table


idx_string = _index_table(
    "fhir_idx_string",
    Column("value", _FOLDED, nullable=False),  # case- and accent-folded
    Column("exact", Text, nullable=False),                   # as written
    indexes=(),
    lookups=(("lookup", ("resource_type", "param", "value", "resource_pk")),),
)

idx_token = _index_table(
    "fhir_idx_token",
    Column("system", String(INDEXED_CHARS)),
    Column("code", String(INDEXED_CHARS)),
    Column("text", _FOLDED),  # folded display/text, for :text
    indexes=(),
    lookups=(("lookup", ("resource_type", "param", "code", "resource_pk", "system")),),
)

idx_date = _index_table(
    "fhir_idx_date",
    Column("low", UTCDateTime, nullable=False),   # inclusive
    Column("high", UTCDateTime, nullable=False),  # exclusive
    indexes=(),
    lookups=(("low_lookup", ("resource_type", "param", "low", "high", "resource_pk")),
             ("high_lookup", ("resource_type", "param", "high", "low", "resource_pk"))),
)

idx_reference = _index_table(
    "fhir_idx_reference",
    Column("target_type", String(64)),
    Column("target_id", String(64)),
    Column("url", String(INDEXED_CHARS)),  # absolute or canonical references, as written
    indexes=(("target_type", "target_id"),),
    lookups=(("lookup", ("resource_type", "param", "target_id", "resource_pk",
                         "target_type")),),
)
# Only absolute and canonical references have a url (a few in a hundred): the others are
# found by target, and this index leaves them out (migration 0109).
Index("ix_fhir_idx_reference_resource_type_param_url", idx_reference.c.resource_type,
      idx_reference.c.param, idx_reference.c.url,
      postgresql_where=idx_reference.c.url.is_not(None),
      sqlite_where=idx_reference.c.url.is_not(None))

idx_quantity = _index_table(
    "fhir_idx_quantity",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("system", String(INDEXED_CHARS)),
    Column("code", String(INDEXED_CHARS)),
    # The same value in the unit's base form (mg -> g, mmol/L -> mol/m3), when it is UCUM.
    Column("canonical_low", Float),
    Column("canonical_high", Float),
    Column("canonical_code", String(INDEXED_CHARS)),
    indexes=(("resource_type", "param", "low"), ("resource_type", "param", "canonical_low")),
)

idx_number = _index_table(
    "fhir_idx_number",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("resource_type", "param", "low"),),
)

idx_uri = _index_table(
    "fhir_idx_uri",
    Column("value", _FOLDED, nullable=False),
    indexes=(("resource_type", "param", "value"),),
)

idx_composite = _index_table(
    "fhir_idx_composite",
    # the first component, a token (code in code-value-quantity)
    Column("a_system", String(INDEXED_CHARS)),
    Column("a_code", String(INDEXED_CHARS)),
    # the second component, in the columns of its own type
    Column("system", String(INDEXED_CHARS)),
    Column("code", String(INDEXED_CHARS)),
    Column("low", Float),
    Column("high", Float),
    Column("canonical_low", Float),
    Column("canonical_high", Float),
    Column("canonical_code", String(INDEXED_CHARS)),
    Column("date_low", UTCDateTime),
    Column("date_high", UTCDateTime),
    Column("value", _FOLDED),
    Column("exact", Text),
    indexes=(("resource_type", "param", "a_code"),),
)

idx_compartment = Table(
    "fhir_idx_compartment",
    metadata,
    Column("resource_pk", _PK, ForeignKey("fhir_resource.pk", ondelete="CASCADE"),
           nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("compartment", String(32), nullable=False),  # Patient, Encounter, ...
    Column("target_id", String(64), nullable=False),
    Index("ix_fhir_idx_compartment_resource", "resource_pk"),
    Index("ix_fhir_idx_compartment_lookup", "compartment", "target_id", "resource_type",
          "resource_pk"),
)

#: The index table of each search-parameter type that careplane indexes.
INDEX_TABLES: dict[str, Table] = {
    "composite": idx_composite,
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "reference": idx_reference,
    "quantity": idx_quantity,
    "number": idx_number,
    "uri": idx_uri,
}
