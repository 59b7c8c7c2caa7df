"""records: FHIR resources, versions and search indexes

Revision ID: 0100
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401

revision = '0100'
down_revision = '0001'
branch_labels = ('records',)
depends_on = None


def upgrade() -> None:
    op.create_table('fhir_resource',
    sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('last_updated', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_resource')),
    sa.UniqueConstraint('resource_type', 'id', name=op.f('uq_fhir_resource_resource_type'))
    )
    with op.batch_alter_table('fhir_resource', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_resource_org_type_updated', ['org_id', 'resource_type', 'last_updated'], unique=False)
        batch_op.create_index('ix_fhir_resource_patient', ['patient_id'], unique=False)

    op.create_table('fhir_idx_compartment',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('compartment', sa.String(length=32), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_compartment_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_compartment', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_compartment_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_compartment_target', ['compartment', 'target_id', 'resource_type'], unique=False)

    op.create_table('fhir_idx_date',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('high', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_date_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_date', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_date_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_date_resource_type_param_high', ['resource_type', 'param', 'high'], unique=False)
        batch_op.create_index('ix_fhir_idx_date_resource_type_param_low', ['resource_type', 'param', 'low'], unique=False)

    op.create_table('fhir_idx_number',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_number_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_number', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_number_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_number_resource_type_param_low', ['resource_type', 'param', 'low'], unique=False)

    op.create_table('fhir_idx_quantity',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('canonical_low', sa.Float(), nullable=True),
    sa.Column('canonical_high', sa.Float(), nullable=True),
    sa.Column('canonical_code', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_quantity_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_quantity', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_quantity_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_quantity_resource_type_param_canonical_low', ['resource_type', 'param', 'canonical_low'], unique=False)
        batch_op.create_index('ix_fhir_idx_quantity_resource_type_param_low', ['resource_type', 'param', 'low'], unique=False)

    op.create_table('fhir_idx_reference',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('url', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_reference_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_reference', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_reference_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_reference_resource_type_param_target_id', ['resource_type', 'param', 'target_id'], unique=False)
        batch_op.create_index('ix_fhir_idx_reference_resource_type_param_url', ['resource_type', 'param', 'url'], unique=False)
        batch_op.create_index('ix_fhir_idx_reference_target_type_target_id', ['target_type', 'target_id'], unique=False)

    op.create_table('fhir_idx_string',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.Column('exact', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_string_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_string', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_string_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_string_resource_type_param_value', ['resource_type', 'param', 'value'], unique=False)

    op.create_table('fhir_idx_token',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('text', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_token_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_token', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_token_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_token_resource_type_param_code_system', ['resource_type', 'param', 'code', 'system'], unique=False)

    op.create_table('fhir_idx_uri',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_idx_uri_resource_pk_fhir_resource'), ondelete='CASCADE')
    )
    with op.batch_alter_table('fhir_idx_uri', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_uri_resource', ['resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_uri_resource_type_param_value', ['resource_type', 'param', 'value'], unique=False)

    op.create_table('fhir_resource_version',
    sa.Column('resource_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('last_updated', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resource.pk'], name=op.f('fk_fhir_resource_version_resource_pk_fhir_resource'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('resource_pk', 'version', name=op.f('pk_fhir_resource_version'))
    )
    with op.batch_alter_table('fhir_resource_version', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_resource_version_history', ['org_id', 'resource_type', 'last_updated'], unique=False)
        batch_op.create_index('ix_fhir_resource_version_updated', ['org_id', 'last_updated'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fhir_resource_version', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_resource_version_updated')
        batch_op.drop_index('ix_fhir_resource_version_history')

    op.drop_table('fhir_resource_version')
    with op.batch_alter_table('fhir_idx_uri', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_uri_resource_type_param_value')
        batch_op.drop_index('ix_fhir_idx_uri_resource')

    op.drop_table('fhir_idx_uri')
    with op.batch_alter_table('fhir_idx_token', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_token_resource_type_param_code_system')
        batch_op.drop_index('ix_fhir_idx_token_resource')

    op.drop_table('fhir_idx_token')
    with op.batch_alter_table('fhir_idx_string', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_string_resource_type_param_value')
        batch_op.drop_index('ix_fhir_idx_string_resource')

    op.drop_table('fhir_idx_string')
    with op.batch_alter_table('fhir_idx_reference', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_reference_target_type_target_id')
        batch_op.drop_index('ix_fhir_idx_reference_resource_type_param_url')
        batch_op.drop_index('ix_fhir_idx_reference_resource_type_param_target_id')
        batch_op.drop_index('ix_fhir_idx_reference_resource')

    op.drop_table('fhir_idx_reference')
    with op.batch_alter_table('fhir_idx_quantity', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_quantity_resource_type_param_low')
        batch_op.drop_index('ix_fhir_idx_quantity_resource_type_param_canonical_low')
        batch_op.drop_index('ix_fhir_idx_quantity_resource')

    op.drop_table('fhir_idx_quantity')
    with op.batch_alter_table('fhir_idx_number', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_number_resource_type_param_low')
        batch_op.drop_index('ix_fhir_idx_number_resource')

    op.drop_table('fhir_idx_number')
    with op.batch_alter_table('fhir_idx_date', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_date_resource_type_param_low')
        batch_op.drop_index('ix_fhir_idx_date_resource_type_param_high')
        batch_op.drop_index('ix_fhir_idx_date_resource')

    op.drop_table('fhir_idx_date')
    with op.batch_alter_table('fhir_idx_compartment', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_idx_compartment_target')
        batch_op.drop_index('ix_fhir_idx_compartment_resource')

    op.drop_table('fhir_idx_compartment')
    with op.batch_alter_table('fhir_resource', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_resource_patient')
        batch_op.drop_index('ix_fhir_resource_org_type_updated')

    op.drop_table('fhir_resource')
