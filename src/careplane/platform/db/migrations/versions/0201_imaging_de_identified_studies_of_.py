"""imaging: de-identified studies of research projects

Revision ID: 0201
Revises: 0200
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401


revision = '0201'
down_revision = '0200'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('dicom_study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('research_project', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_dicom_study_research_project'), ['research_project'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('dicom_study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_study_research_project'))
        batch_op.drop_column('research_project')

