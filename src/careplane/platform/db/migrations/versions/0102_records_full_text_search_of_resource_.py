"""records: full-text search of resource content and narrative

Revision ID: 0102
Revises: 0101
"""

from alembic import op


revision = '0102'
down_revision = '0101'
branch_labels = None
depends_on = None


# _content and _text search on PostgreSQL: GIN indexes over the words of each version's
# string values and of its narrative (HTML tags are not words to the default parser). They are
# maintained by PostgreSQL in the transaction that writes the version. The expressions must stay
# exactly those of careplane.records.search_sql (_content_vector, _text_vector). SQLite has no
# such index: its _text/_content is a LIKE over the JSON.
_INDEXES = {
    "ix_fhir_resource_version_content_words":
        "jsonb_to_tsvector('simple'::regconfig, content, '[\"string\"]'::jsonb)",
    "ix_fhir_resource_version_text_words":
        "to_tsvector('simple'::regconfig, COALESCE(content -> 'text' ->> 'div', ''))",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, expression in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON fhir_resource_version "
                   f"USING gin (({expression}))")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
