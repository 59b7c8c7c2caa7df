"""records: the index of reference urls holds only the references that have one

Revision ID: 0109
Revises: 0108

A reference index row has a url only for an absolute or canonical reference; the relative
references that make up nearly all of a clinical store (``Patient/123``) are found by their
target. The url index still took an entry for each of them, one index write of a dozen per
Observation. It now covers the rows with a url, which are the only ones a url search
(``url = ...``) can match.
"""

from alembic import op


revision = '0109'
down_revision = '0108'
branch_labels = None
depends_on = None

_NAME = "ix_fhir_idx_reference_resource_type_param_url"
_COLUMNS = "fhir_idx_reference (resource_type, param, url)"


def upgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
    op.execute(f"CREATE INDEX {_NAME} ON {_COLUMNS} WHERE url IS NOT NULL")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {_NAME}")
    op.execute(f"CREATE INDEX {_NAME} ON {_COLUMNS}")
