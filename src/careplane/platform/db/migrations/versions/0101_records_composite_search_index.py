"""records: composite search index

Revision ID: 0101
Revises: 0100
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401


revision = '0101'
down_revision = '0100'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fhir_idx_composite',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('a_system', sa.String(length=255), nullable=True),
    sa.Column('a_code', sa.String(length=255), nullable=True),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('low', sa.Float(), nullable=True),
    sa.Column('high', sa.Float(), nullable=True),
    sa.Column('canonical_low', sa.Float(), nullable=True),
    sa.Column('canonical_high', sa.Float(), nullable=True),
    sa.Column('canonical_code', sa.String(length=255), nullable=True),
    sa.Column('date_low', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('date_high', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('value', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=True),
    sa.Column('exact', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_composite_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_composite', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_composite_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_composite_resource_type_param_a_code', ['resource_type', 'param', 'a_code'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fhir_idx_composite', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_composite_resource_type_param_a_code')
        batch_op.drop_index('ix_fhir_idx_composite_resource')

    op.drop_table('fhir_idx_composite')
