"""records: planner statistics across the index tables' key columns

Revision ID: 0103
Revises: 0102

A search criterion is ``resource_type = X AND param = Y AND code = Z`` on an index table, and
those columns are strongly dependent (``clinical-status = active`` only occurs on Condition).
Without statistics across them PostgreSQL multiplies their selectivities and expects one row
where there are thousands, then drives a patient's search from the common criterion instead
of the patient's few rows (measured at 1,000 synthetic patients: 59 ms instead of 0.1 ms for
``Condition?patient=...&clinical-status=active``). Extended statistics (most common value
combinations, functional dependencies, distinct counts) give the planner the real figures;
they cost nothing on writes, only a little more work in ANALYZE. SQLite has no equivalent.
"""

from alembic import op


revision = '0103'
down_revision = '0102'
branch_labels = None
depends_on = None

# (statistics name, table, columns, kinds)
_STATISTICS = (
    ("st_fhir_idx_token_key", "fhir_idx_token", "resource_type, param, code, system",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_reference_key", "fhir_idx_reference", "resource_type, param, target_id",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_string_key", "fhir_idx_string", "resource_type, param, value",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_uri_key", "fhir_idx_uri", "resource_type, param, value",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_date_key", "fhir_idx_date", "resource_type, param",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_quantity_key", "fhir_idx_quantity", "resource_type, param, code",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_number_key", "fhir_idx_number", "resource_type, param",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_composite_key", "fhir_idx_composite", "resource_type, param, a_code",
     "ndistinct, dependencies, mcv"),
    ("st_fhir_idx_compartment_key", "fhir_idx_compartment",
     "compartment, target_id, resource_type", "ndistinct, dependencies"),
    ("st_fhir_resource_scope", "fhir_resource", "resource_type, org_id, deleted",
     "ndistinct, dependencies, mcv"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, columns, kinds in _STATISTICS:
        op.execute(f"CREATE STATISTICS IF NOT EXISTS {name} ({kinds}) ON {columns} "
                   f"FROM {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, *_ in reversed(_STATISTICS):
        op.execute(f"DROP STATISTICS IF EXISTS {name}")
