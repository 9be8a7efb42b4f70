"""patients and lesions; what the clinic says about each photograph

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00.000000

Until now a photograph was a file in a batch. From here on the clinic may say, at upload, whose lesion
it shows (pseudonymous patient and lesion ids, the lesion's body site) and the patient's age, sex and
Fitzpatrick skin type at that visit with a short clinical note. Patients and lesions are rows of their
own, shared by every batch that photographs them; the visit's context stays on the image. Existing
images had none of it: they keep no lesion, as a photograph uploaded without identifiers does today.
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('external_id', name=op.f('uq_patients_external_id'))
    )
    op.create_table('lesions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('body_site', sa.String(length=20), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_lesions_patient_id_patients')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lesions')),
    sa.UniqueConstraint('external_id', name=op.f('uq_lesions_external_id'))
    )
    with op.batch_alter_table('lesions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lesions_patient_id'), ['patient_id'], unique=False)

    # On SQLite this copies the images table; analyses and cases keep pointing at the same ids.
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lesion_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('age', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sex', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('fitzpatrick', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('clinical_note', sa.String(length=500), nullable=True))
        batch_op.create_index(batch_op.f('ix_images_lesion_id'), ['lesion_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_images_lesion_id_lesions'), 'lesions', ['lesion_id'], ['id'])
        batch_op.create_check_constraint('age', 'age BETWEEN 0 AND 120')
        batch_op.create_check_constraint('sex', "sex IN ('female', 'male', 'other', 'unknown')")
        batch_op.create_check_constraint('fitzpatrick', 'fitzpatrick BETWEEN 1 AND 6')


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_images_fitzpatrick'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_images_sex'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_images_age'), type_='check')
        batch_op.drop_constraint(batch_op.f('fk_images_lesion_id_lesions'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_images_lesion_id'))
        batch_op.drop_column('clinical_note')
        batch_op.drop_column('fitzpatrick')
        batch_op.drop_column('sex')
        batch_op.drop_column('age')
        batch_op.drop_column('lesion_id')

    with op.batch_alter_table('lesions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lesions_patient_id'))

    op.drop_table('lesions')
    op.drop_table('patients')
