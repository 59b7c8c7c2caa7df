"""security: consent denials found by organisation

Every search by a member of an organisation asks for that organisation's live consent
denials (which patients a search must leave out); without this index that is a scan of every
provision of every organisation.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_consent_provision_org_id_decision', 'consent_provision',
                    ['org_id', 'decision', 'patient_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_consent_provision_org_id_decision', table_name='consent_provision')
