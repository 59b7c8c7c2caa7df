"""records: index rows without a foreign-key check per row

Revision ID: 0106
Revises: 0105

Every search-index row (``fhir_idx_*``, about twenty per resource) carried a foreign key to
``fhir_resource``, so each one inserted cost PostgreSQL a look-up of the resource row (a
trigger per row, taking a share lock on it): about a quarter of the database's work for a
transaction bundle. The index rows are derived data: only the store writes them, in the
same transaction and statement batch as the resource row whose key it has just drawn, and
``careplane records reindex`` rebuilds them from the versions. Resources are never deleted
as rows (a deletion is a version), so the cascade had nothing to do. The foreign key from
``fhir_resource_version`` (the records themselves) stays. SQLite keeps its declarations
(changing them there means rebuilding every table).
"""

from alembic import op


revision = '0106'
down_revision = '0105'
branch_labels = None
depends_on = None

_TABLES = ("fhir_idx_string", "fhir_idx_token", "fhir_idx_date", "fhir_idx_reference",
           "fhir_idx_quantity", "fhir_idx_number", "fhir_idx_uri", "fhir_idx_composite",
           "fhir_idx_compartment")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "
                   f"fk_{table}_resource_pk_fhir_resource")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_resource_pk_fhir_resource "
                   "FOREIGN KEY (resource_pk) REFERENCES fhir_resource (pk) ON DELETE CASCADE")
