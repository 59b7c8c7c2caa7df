"""records: search indexes that cover the resource key

Revision ID: 0104
Revises: 0103

A search criterion is ``pk IN (SELECT resource_pk FROM fhir_idx_<type> WHERE resource_type = X
AND param = Y AND <value test>)``. The lookup indexes ended at the value columns, so every
matching index entry cost a visit to the table row to learn its ``resource_pk`` (and, for
dates, the other end of the range); at 10,000 patients a common code or a patient's
Observations are thousands of such visits. These indexes carry what the test and the join
need, so PostgreSQL answers the criterion from the index alone (an index-only scan once
VACUUM has marked the pages visible), and where the value is an equality (a token's code, a
reference's target) the entries come out in ``resource_pk`` order: a page of matches in key
order is then a merge of such ranges that stops after the page instead of sorting every
match.

Each replaces the index it extends (same leading columns), so writes keep the same number of
indexes. PostgreSQL keeps the extra columns in INCLUDE where they are only read; SQLite, which
has no INCLUDE, gets them as trailing key columns (it uses covering indexes just the same).
"""

from alembic import op


revision = '0104'
down_revision = '0103'
branch_labels = None
depends_on = None

# (table, old index and its columns, new index, key columns, included columns)
_INDEXES = (
    ("fhir_idx_token",
     "ix_fhir_idx_token_resource_type_param_code_system",
     ("resource_type", "param", "code", "system"),
     "ix_fhir_idx_token_lookup", ("resource_type", "param", "code", "resource_pk"),
     ("system",)),
    ("fhir_idx_reference",
     "ix_fhir_idx_reference_resource_type_param_target_id",
     ("resource_type", "param", "target_id"),
     "ix_fhir_idx_reference_lookup", ("resource_type", "param", "target_id", "resource_pk"),
     ("target_type",)),
    ("fhir_idx_string",
     "ix_fhir_idx_string_resource_type_param_value", ("resource_type", "param", "value"),
     "ix_fhir_idx_string_lookup", ("resource_type", "param", "value"), ("resource_pk",)),
    ("fhir_idx_date",
     "ix_fhir_idx_date_resource_type_param_low", ("resource_type", "param", "low"),
     "ix_fhir_idx_date_low_lookup", ("resource_type", "param", "low"),
     ("high", "resource_pk")),
    ("fhir_idx_date",
     "ix_fhir_idx_date_resource_type_param_high", ("resource_type", "param", "high"),
     "ix_fhir_idx_date_high_lookup", ("resource_type", "param", "high"),
     ("low", "resource_pk")),
    ("fhir_idx_compartment",
     "ix_fhir_idx_compartment_target", ("compartment", "target_id", "resource_type"),
     "ix_fhir_idx_compartment_lookup",
     ("compartment", "target_id", "resource_type", "resource_pk"), ()),
)


def _create(table: str, name: str, key: tuple[str, ...], include: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        extra = f" INCLUDE ({', '.join(include)})" if include else ""
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(key)}){extra}")
    else:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
                   f"({', '.join(key + include)})")


def upgrade() -> None:
    for table, old, _, new, key, include in _INDEXES:
        _create(table, new, key, include)
        op.execute(f"DROP INDEX IF EXISTS {old}")


def downgrade() -> None:
    for table, old, old_key, new, _, _ in reversed(_INDEXES):
        _create(table, old, old_key, ())
        op.execute(f"DROP INDEX IF EXISTS {new}")
