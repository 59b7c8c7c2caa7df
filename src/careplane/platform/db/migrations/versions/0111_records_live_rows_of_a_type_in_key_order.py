"""records: the live rows of each type and organisation, in key order

Revision ID: 0111
Revises: 0110

A search whose criteria are each met by many rows of its type (Patients born before 1960,
among 100,000) finds its first page faster by walking the type's rows in key order and
testing each than by finding every match from the value indexes and sorting them: the page
needs the first two hundred matches, not all eighteen thousand. The walk reads this index;
the search decides when to walk (``records.search``).
"""

from alembic import op


revision = '0111'
down_revision = '0110'
branch_labels = None
depends_on = None

_NAME = "ix_fhir_resource_live_type"


def upgrade() -> None:
    op.execute(f"CREATE INDEX IF NOT EXISTS {_NAME} "
               "ON fhir_resource (resource_type, org_id, pk) WHERE NOT deleted")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
