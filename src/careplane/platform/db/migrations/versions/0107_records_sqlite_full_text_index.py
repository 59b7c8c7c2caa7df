"""records: a full-text index for _content and _text on SQLite

Revision ID: 0107
Revises: 0106

On SQLite, ``_content`` and ``_text`` looked for each word inside every string of every
current version, a scan of the whole store per search. An FTS5 table now holds, per
resource (its rowid is the resource's key), the words of the current version's string
values and those of its narrative, kept by a trigger on ``fhir_resource_version`` in the
transaction that writes the version: a new version replaces the words of the one before, a
deletion removes them. FTS5's unicode61 tokenizer folds case and keeps accents, as the
'simple' configuration of PostgreSQL's GIN indexes (migration 0102) does, so both databases
match the same whole words. PostgreSQL has nothing to do here.
"""

from alembic import op


revision = '0107'
down_revision = '0106'
branch_labels = None
depends_on = None

# The words of a version ``{v}``'s string values, and its narrative: NEW in the trigger, v in
# the backfill.
_WORDS_OF = """{v}.resource_pk,
       (SELECT group_concat(value, ' ') FROM json_tree({v}.content) WHERE type = 'text'),
       json_extract({v}.content, '$.text.div')"""
_TRIGGER = f"""
CREATE TRIGGER fhir_resource_words_of_version AFTER INSERT ON fhir_resource_version
WHEN NEW.version = (SELECT version FROM fhir_resource WHERE pk = NEW.resource_pk)
BEGIN
    DELETE FROM fhir_resource_words WHERE rowid = NEW.resource_pk;
    INSERT INTO fhir_resource_words (rowid, content, narrative)
    SELECT {_WORDS_OF.format(v="NEW")}
    WHERE NEW.content IS NOT NULL AND NOT NEW.deleted;
END
"""  # noqa: S608 - fixed text, no caller's input
_BACKFILL = f"""
INSERT INTO fhir_resource_words (rowid, content, narrative)
SELECT {_WORDS_OF.format(v="v")}
FROM fhir_resource_version AS v
JOIN fhir_resource AS r ON r.pk = v.resource_pk AND r.version = v.version
WHERE v.content IS NOT NULL AND NOT v.deleted
"""  # noqa: S608 - fixed text, no caller's input


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("CREATE VIRTUAL TABLE fhir_resource_words USING fts5("
               "content, narrative, tokenize = 'unicode61 remove_diacritics 0')")
    op.execute(_TRIGGER)
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS fhir_resource_words_of_version")
    op.execute("DROP TABLE IF EXISTS fhir_resource_words")
