"""genomics: references, samples, files, runs and uploads

Revision ID: 0300
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401

revision = '0300'
down_revision = '0001'
branch_labels = ('genomics',)
depends_on = None


def upgrade() -> None:
    op.create_table('genomics_sample',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_genomics_sample')),
    sa.UniqueConstraint('org_id', 'name', name='uq_genomics_sample_name')
    )
    with op.batch_alter_table('genomics_sample', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_genomics_sample_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_genomics_sample_patient_id'), ['patient_id'], unique=False)

    op.create_table('genomics_upload',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('filename', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=True),
    sa.Column('sample_id', sa.String(length=32), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('file_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_genomics_upload'))
    )
    with op.batch_alter_table('genomics_upload', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_genomics_upload_org_id'), ['org_id'], unique=False)

    op.create_table('genomics_file',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('sample_id', sa.String(length=32), nullable=True),
    sa.Column('run_id', sa.String(length=32), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('filename', sa.String(length=300), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('compressed', sa.Boolean(), nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sample_id'], ['genomics_sample.id'], name=op.f('fk_genomics_file_sample_id_genomics_sample'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_genomics_file'))
    )
    with op.batch_alter_table('genomics_file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_genomics_file_org_id'), ['org_id'], unique=False)
        batch_op.create_index('ix_genomics_file_org_sample', ['org_id', 'sample_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_genomics_file_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_genomics_file_sha256'), ['sha256'], unique=False)

    op.create_table('genomics_reference',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('file_id', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('contigs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('length', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['genomics_file.id'], name=op.f('fk_genomics_reference_file_id_genomics_file')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_genomics_reference')),
    sa.UniqueConstraint('org_id', 'name', name='uq_genomics_reference_name')
    )
    with op.batch_alter_table('genomics_reference', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_genomics_reference_org_id'), ['org_id'], unique=False)

    op.create_table('genomics_run',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('sample_id', sa.String(length=32), nullable=False),
    sa.Column('reference_id', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('aligner', sa.String(length=32), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('inputs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('outputs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('qc', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_by', sa.String(length=32), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['reference_id'], ['genomics_reference.id'], name=op.f('fk_genomics_run_reference_id_genomics_reference')),
    sa.ForeignKeyConstraint(['sample_id'], ['genomics_sample.id'], name=op.f('fk_genomics_run_sample_id_genomics_sample')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_genomics_run'))
    )
    with op.batch_alter_table('genomics_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_genomics_run_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_genomics_run_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_genomics_run_sample_id'), ['sample_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('genomics_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_genomics_run_sample_id'))
        batch_op.drop_index(batch_op.f('ix_genomics_run_org_id'))
        batch_op.drop_index(batch_op.f('ix_genomics_run_job_id'))

    op.drop_table('genomics_run')
    with op.batch_alter_table('genomics_reference', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_genomics_reference_org_id'))

    op.drop_table('genomics_reference')
    with op.batch_alter_table('genomics_file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_genomics_file_sha256'))
        batch_op.drop_index(batch_op.f('ix_genomics_file_run_id'))
        batch_op.drop_index('ix_genomics_file_org_sample')
        batch_op.drop_index(batch_op.f('ix_genomics_file_org_id'))

    op.drop_table('genomics_file')
    with op.batch_alter_table('genomics_upload', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_genomics_upload_org_id'))

    op.drop_table('genomics_upload')
    with op.batch_alter_table('genomics_sample', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_genomics_sample_patient_id'))
        batch_op.drop_index(batch_op.f('ix_genomics_sample_org_id'))

    op.drop_table('genomics_sample')
