"""imaging: DICOM index of patients, studies, series, instances; DICOM peers

Revision ID: 0200
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql  # noqa: F401

import careplane.platform.db as cdb  # noqa: F401


revision = '0200'
down_revision = '0001'
branch_labels = ('imaging',)
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_patient',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('patient_name_key', sa.String(length=330), nullable=False),
    sa.Column('birth_date', sa.String(length=8), nullable=False),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('num_studies', sa.Integer(), nullable=False),
    sa.Column('fhir_patient_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_dicom_patient_org_id_organisation'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_patient')),
    sa.UniqueConstraint('org_id', 'patient_id', 'issuer_of_patient_id', name='uq_dicom_patient_org_id')
    )
    with op.batch_alter_table('dicom_patient', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_patient_org_name', ['org_id', 'patient_name_key'], unique=False)

    op.create_table('dicom_remote_ae',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_dicom_remote_ae_org_id_organisation'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_remote_ae')),
    sa.UniqueConstraint('ae_title', name='uq_dicom_remote_ae_ae_title')
    )
    with op.batch_alter_table('dicom_remote_ae', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_remote_ae_org_id'), ['org_id'], unique=False)

    op.create_table('dicom_study',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('patient_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_id', sa.String(length=16), nullable=False),
    sa.Column('study_description', sa.String(length=64), nullable=False),
    sa.Column('referring_physician_name', sa.String(length=324), nullable=False),
    sa.Column('referring_physician_key', sa.String(length=330), nullable=False),
    sa.Column('timezone_offset', sa.String(length=5), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('patient_name_key', sa.String(length=330), nullable=False),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=False),
    sa.Column('patient_sex', sa.String(length=16), nullable=False),
    sa.Column('modalities', sa.String(length=200), nullable=False),
    sa.Column('num_series', sa.Integer(), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('fhir_imaging_study_id', sa.String(length=64), nullable=True),
    sa.Column('fhir_synced_at', cdb.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_dicom_study_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_pk'], ['dicom_patient.id'], name=op.f('fk_dicom_study_patient_pk_dicom_patient'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_study')),
    sa.UniqueConstraint('org_id', 'study_instance_uid', name='uq_dicom_study_org_id')
    )
    with op.batch_alter_table('dicom_study', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_study_org_accession', ['org_id', 'accession_number'], unique=False)
        batch_op.create_index('ix_dicom_study_org_date', ['org_id', 'study_date'], unique=False)
        batch_op.create_index('ix_dicom_study_org_name', ['org_id', 'patient_name_key'], unique=False)
        batch_op.create_index('ix_dicom_study_org_patient', ['org_id', 'patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_study_patient_pk'), ['patient_pk'], unique=False)

    op.create_table('dicom_series',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('study_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=False),
    sa.Column('body_part_examined', sa.String(length=16), nullable=False),
    sa.Column('laterality', sa.String(length=16), nullable=False),
    sa.Column('performed_start_date', sa.String(length=8), nullable=False),
    sa.Column('performed_start_time', sa.String(length=16), nullable=False),
    sa.Column('num_instances', sa.Integer(), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_dicom_series_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_pk'], ['dicom_study.id'], name=op.f('fk_dicom_series_study_pk_dicom_study'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_series')),
    sa.UniqueConstraint('org_id', 'series_instance_uid', name='uq_dicom_series_org_id')
    )
    with op.batch_alter_table('dicom_series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('dicom_instance',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('org_id', sa.String(length=32), nullable=False),
    sa.Column('study_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('series_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('bits_allocated', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('blob_sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=100), nullable=False),
    sa.Column('created_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cdb.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name=op.f('fk_dicom_instance_org_id_organisation'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['series_pk'], ['dicom_series.id'], name=op.f('fk_dicom_instance_series_pk_dicom_series'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['study_pk'], ['dicom_study.id'], name=op.f('fk_dicom_instance_study_pk_dicom_study'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_instance')),
    sa.UniqueConstraint('org_id', 'sop_instance_uid', name='uq_dicom_instance_org_id')
    )
    with op.batch_alter_table('dicom_instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dicom_instance_blob_sha256'), ['blob_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_instance_series_pk'), ['series_pk'], unique=False)
        batch_op.create_index(batch_op.f('ix_dicom_instance_study_pk'), ['study_pk'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('dicom_instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_instance_study_pk'))
        batch_op.drop_index(batch_op.f('ix_dicom_instance_series_pk'))
        batch_op.drop_index(batch_op.f('ix_dicom_instance_blob_sha256'))

    op.drop_table('dicom_instance')
    with op.batch_alter_table('dicom_series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_series_study_pk'))

    op.drop_table('dicom_series')
    with op.batch_alter_table('dicom_study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_study_patient_pk'))
        batch_op.drop_index('ix_dicom_study_org_patient')
        batch_op.drop_index('ix_dicom_study_org_name')
        batch_op.drop_index('ix_dicom_study_org_date')
        batch_op.drop_index('ix_dicom_study_org_accession')

    op.drop_table('dicom_study')
    with op.batch_alter_table('dicom_remote_ae', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dicom_remote_ae_org_id'))

    op.drop_table('dicom_remote_ae')
    with op.batch_alter_table('dicom_patient', schema=None) as batch_op:
        batch_op.drop_index('ix_dicom_patient_org_name')

    op.drop_table('dicom_patient')
