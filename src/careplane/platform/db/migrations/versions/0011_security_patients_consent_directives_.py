"""security: patients' consent directives and provisions

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consent_directive',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('source_ref', sa.String(length=100), nullable=True),
    sa.Column('warnings', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_consent_directive_org_id_organisation'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_directive')),
    sa.UniqueConstraint('org_id', 'source_ref', name=op.f('uq_consent_directive_org_id'))
    )
    with op.batch_alter_table('consent_directive', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consent_directive_patient_id'), ['patient_id'], unique=False)

    op.create_table('consent_provision',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('consent_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('actor_user_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actor_org_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actor_roles', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('purposes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('data_classes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('start', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['consent_id'], ['consent_directive.id'], name=op.f('fk_consent_provision_consent_id_consent_directive'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_provision'))
    )
    with op.batch_alter_table('consent_provision', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consent_provision_consent_id'), ['consent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_consent_provision_patient_id'), ['patient_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('consent_provision', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consent_provision_patient_id'))
        batch_op.drop_index(batch_op.f('ix_consent_provision_consent_id'))

    op.drop_table('consent_provision')
    with op.batch_alter_table('consent_directive', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consent_directive_patient_id'))

    op.drop_table('consent_directive')
