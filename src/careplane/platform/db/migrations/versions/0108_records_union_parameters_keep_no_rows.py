"""records: an Observation's combo- parameters are searched on their parts' rows

Revision ID: 0108
Revises: 0107

R4 defines six Observation parameters as the union of two others of the same type
(``combo-code`` is ``code`` or ``component-code``, ``combo-value-quantity`` is
``value-quantity`` or ``component-value-quantity``, ...). Their index rows repeated their
parts' rows: a quarter of an Observation's index rows, written and kept for nothing. The
server now searches them on the rows of their parts (``SearchParam.parts``), writes none of
their own, and this migration removes those already stored. Downgrading writes them back
from the parts' rows.
"""

from alembic import op


revision = '0108'
down_revision = '0107'
branch_labels = None
depends_on = None

# The value columns of each index table concerned.
_TOKEN = ("system", "code", "text")
_QUANTITY = ("low", "high", "system", "code", "canonical_low", "canonical_high",
             "canonical_code")
_COMPOSITE = ("a_system", "a_code", "system", "code", "low", "high", "canonical_low",
              "canonical_high", "canonical_code", "date_low", "date_high", "value", "exact")

# (index table, union parameter, its parts, the table's value columns)
_UNIONS = (
    ("fhir_idx_token", "combo-code", ("code", "component-code"), _TOKEN),
    ("fhir_idx_token", "combo-data-absent-reason",
     ("data-absent-reason", "component-data-absent-reason"), _TOKEN),
    ("fhir_idx_token", "combo-value-concept", ("value-concept", "component-value-concept"),
     _TOKEN),
    ("fhir_idx_quantity", "combo-value-quantity",
     ("value-quantity", "component-value-quantity"), _QUANTITY),
    ("fhir_idx_composite", "combo-code-value-concept",
     ("code-value-concept", "component-code-value-concept"), _COMPOSITE),
    ("fhir_idx_composite", "combo-code-value-quantity",
     ("code-value-quantity", "component-code-value-quantity"), _COMPOSITE),
)


def upgrade() -> None:
    for table, union, _, _ in _UNIONS:
        op.execute(f"DELETE FROM {table} "  # noqa: S608 - the names are the ones above
                   f"WHERE resource_type = 'Observation' AND param = '{union}'")


def downgrade() -> None:
    for table, union, parts, columns in _UNIONS:
        values = ", ".join(columns)
        names = ", ".join(f"'{p}'" for p in parts)
        op.execute(f"INSERT INTO {table} (resource_pk, resource_type, param, {values}) "  # noqa: S608
                   f"SELECT DISTINCT resource_pk, resource_type, '{union}', {values} "
                   f"FROM {table} WHERE resource_type = 'Observation' AND param IN ({names})")
