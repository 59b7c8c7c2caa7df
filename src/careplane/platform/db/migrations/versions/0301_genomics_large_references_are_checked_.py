"""genomics: large references are checked and indexed in a job

Revision ID: 0301
Revises: 0300
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401


revision = '0301'
down_revision = '0300'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('genomics_reference', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='ready', nullable=False))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('job_id', sa.String(length=32), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('genomics_reference', schema=None) as batch_op:
        batch_op.drop_column('job_id')
        batch_op.drop_column('error')
        batch_op.drop_column('status')

