"""records: a larger statistics sample for the token index's key columns

Revision ID: 0105
Revises: 0104

The planner learns how many rows ``resource_type = X AND param = Y AND code = Z`` selects
from the most common value combinations of migration 0103's statistics, which keep 100 of
them by default. A records store has thousands of combinations, and the hundred commonest
are Observation codes and categories, so a Patient's ``gender = female`` (one token row in a
thousand, still thousands of rows) was estimated at one row: at 2,500 synthetic patients the
planner then drove ``Patient?gender=female&birthdate=lt1945`` from every woman's row instead
of the few birth dates before 1945 (37 ms instead of 6 ms). A thousand combinations cover
every resource type's common codes; ANALYZE samples more rows for it (300 per unit of the
target), which autovacuum does in the background. SQLite has no such statistics.
"""

from alembic import op


revision = '0105'
down_revision = '0104'
branch_labels = None
depends_on = None

_TARGET = 1000


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER STATISTICS st_fhir_idx_token_key SET STATISTICS {_TARGET}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER STATISTICS st_fhir_idx_token_key SET STATISTICS -1")
