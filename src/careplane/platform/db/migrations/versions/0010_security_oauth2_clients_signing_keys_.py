"""security: OAuth2 clients, signing keys, codes, refresh tokens, patient links, access grants

Revision ID: 0010
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401

revision = '0010'
down_revision = '0001'
branch_labels = ('security',)
depends_on = None


def upgrade() -> None:
    op.create_table('auth_signing_key',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('public_jwk', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('private_sealed', sa.Text(), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retire_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_auth_signing_key'))
    )
    with op.batch_alter_table('auth_signing_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_signing_key_expires_at'), ['expires_at'], unique=False)

    op.create_table('auth_client',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('service_user_id', sa.String(length=32), nullable=True),
    sa.Column('auth_method', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=True),
    sa.Column('jwks', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('redirect_uris', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('grant_types', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_auth_client_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['service_user_id'], ['user_account.id'], name=op.f('fk_auth_client_service_user_id_user_account'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_client'))
    )
    with op.batch_alter_table('auth_client', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_client_org_id'), ['org_id'], unique=False)

    op.create_table('auth_grant',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('grantor_org_id', sa.String(length=32), nullable=False),
    sa.Column('grantee_org_id', sa.String(length=32), nullable=True),
    sa.Column('grantee_user_id', sa.String(length=32), nullable=True),
    sa.Column('workspace_id', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('kinds', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('deidentified_only', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('valid_from', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('valid_until', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['grantee_org_id'], ['organisation.id'], name=op.f('fk_auth_grant_grantee_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['grantee_user_id'], ['user_account.id'], name=op.f('fk_auth_grant_grantee_user_id_user_account'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['grantor_org_id'], ['organisation.id'], name=op.f('fk_auth_grant_grantor_org_id_organisation'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_grant'))
    )
    with op.batch_alter_table('auth_grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_grant_grantee_org_id'), ['grantee_org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auth_grant_grantee_user_id'), ['grantee_user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auth_grant_grantor_org_id'), ['grantor_org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_auth_grant_workspace_id'), ['workspace_id'], unique=False)

    op.create_table('auth_user_patient',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_auth_user_patient_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_auth_user_patient_user_id_user_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_user_patient')),
    sa.UniqueConstraint('user_id', 'org_id', name=op.f('uq_auth_user_patient_user_id'))
    )
    with op.batch_alter_table('auth_user_patient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_user_patient_user_id'), ['user_id'], unique=False)

    op.create_table('auth_client_assertion',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['auth_client.id'], name=op.f('fk_auth_client_assertion_client_id_auth_client'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_client_assertion')),
    sa.UniqueConstraint('client_id', 'jti', name=op.f('uq_auth_client_assertion_client_id'))
    )
    with op.batch_alter_table('auth_client_assertion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_client_assertion_expires_at'), ['expires_at'], unique=False)

    op.create_table('auth_code',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('redirect_uri', sa.Text(), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('nonce', sa.String(length=255), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('family_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['auth_client.id'], name=op.f('fk_auth_code_client_id_auth_client'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_auth_code_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_auth_code_user_id_user_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_code')),
    sa.UniqueConstraint('code_hash', name=op.f('uq_auth_code_code_hash'))
    )
    op.create_table('auth_refresh_token',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('family_id', sa.String(length=32), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['auth_client.id'], name=op.f('fk_auth_refresh_token_client_id_auth_client'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_auth_refresh_token_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['user_account.id'], name=op.f('fk_auth_refresh_token_user_id_user_account'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_refresh_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_auth_refresh_token_token_hash'))
    )
    with op.batch_alter_table('auth_refresh_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_refresh_token_family_id'), ['family_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('auth_refresh_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_refresh_token_family_id'))

    op.drop_table('auth_refresh_token')
    op.drop_table('auth_code')
    with op.batch_alter_table('auth_client_assertion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_client_assertion_expires_at'))

    op.drop_table('auth_client_assertion')
    with op.batch_alter_table('auth_user_patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_user_patient_user_id'))

    op.drop_table('auth_user_patient')
    with op.batch_alter_table('auth_grant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_grant_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_auth_grant_grantor_org_id'))
        batch_op.drop_index(batch_op.f('ix_auth_grant_grantee_user_id'))
        batch_op.drop_index(batch_op.f('ix_auth_grant_grantee_org_id'))

    op.drop_table('auth_grant')
    with op.batch_alter_table('auth_client', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_client_org_id'))

    op.drop_table('auth_client')
    with op.batch_alter_table('auth_signing_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_signing_key_expires_at'))

    op.drop_table('auth_signing_key')
