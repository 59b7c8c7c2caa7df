"""security: break-the-glass reviews

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_break_glass_review',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('audit_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reviewer_id', sa.String(length=32), nullable=False),
    sa.Column('reviewer_name', sa.String(length=150), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('reviewed_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['audit_id'], ['audit_record.id'], name=op.f('fk_audit_break_glass_review_audit_id_audit_record'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_break_glass_review')),
    sa.UniqueConstraint('audit_id', name=op.f('uq_audit_break_glass_review_audit_id'))
    )


def downgrade() -> None:
    op.drop_table('audit_break_glass_review')
