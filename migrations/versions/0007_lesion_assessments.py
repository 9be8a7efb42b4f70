"""the review queue by patient and lesion; one decision per lesion

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 13:00:00.000000

The queue's sort key gains the patient's and the lesion's part before the photograph's own, so that a
patient's lesions sit together, most urgent patient first, and a page is still one range scan of one
index. Existing cases get their keys from their images' lesions (those without one sort exactly as
before: keys 0, ranks and time their own). A review may now be one that a decision on another
photograph of the same lesion settled (`settled_by_id`). The lesion assessment itself is not stored:
it is a pure function of the photographs' rows (triage/lesions.py), worked out when a page shows it.
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

OLD_KEY = ['priority_rank', 'received_at', 'id']
NEW_KEY = ['patient_rank', 'patient_since', 'patient_key', 'lesion_rank', 'lesion_key', 'priority_rank',
           'received_at', 'id']
QUEUE_INDEXES = {'ix_review_cases_queue': [], 'ix_review_cases_batch_queue': ['batch_id'],
                 'ix_review_cases_class_queue': ['top_class'], 'ix_review_cases_reviewer_queue': ['reviewer_id']}

# Each case's patient and lesion, then, within each patient and state, the most urgent rank and the
# oldest upload (as triage/reviews.py `regroup` keeps them from here on).
BACKFILL = (
    "UPDATE review_cases SET lesion_key = COALESCE((SELECT images.lesion_id FROM images "
    "WHERE images.id = review_cases.image_id), 0)",
    "UPDATE review_cases SET patient_key = COALESCE((SELECT lesions.patient_id FROM lesions "
    "WHERE lesions.id = review_cases.lesion_key), 0)",
    "UPDATE review_cases SET patient_rank = priority_rank, patient_since = received_at, lesion_rank = priority_rank "
    "WHERE patient_key = 0",
    "UPDATE review_cases SET "
    "patient_rank = (SELECT min(o.priority_rank) FROM review_cases o "
    "WHERE o.patient_key = review_cases.patient_key AND o.state = review_cases.state), "
    "patient_since = (SELECT min(o.received_at) FROM review_cases o "
    "WHERE o.patient_key = review_cases.patient_key AND o.state = review_cases.state), "
    "lesion_rank = (SELECT min(o.priority_rank) FROM review_cases o "
    "WHERE o.lesion_key = review_cases.lesion_key AND o.state = review_cases.state) "
    "WHERE patient_key <> 0",
)


def upgrade() -> None:
    with op.batch_alter_table('review_cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_key', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('lesion_key', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('patient_rank', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('patient_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('lesion_rank', sa.Integer(), nullable=True))
    for statement in BACKFILL:
        op.execute(statement)
    # On SQLite this copies the table; the cases keep their ids, so reviews and notifications still match.
    with op.batch_alter_table('review_cases', schema=None) as batch_op:
        for column in ('patient_key', 'lesion_key', 'patient_rank', 'patient_since', 'lesion_rank'):
            batch_op.alter_column(column, nullable=False)
        for name, prefix in QUEUE_INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, prefix + ['state'] + NEW_KEY, unique=False)
        batch_op.create_index('ix_review_cases_lesion', ['patient_key', 'lesion_key', 'state'], unique=False)

    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settled_by_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_reviews_settled_by_id_reviews'), 'reviews', ['settled_by_id'], ['id'])


def downgrade() -> None:
    # A settled review stays a review of its photograph; only the pointer to the decision it followed goes.
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_reviews_settled_by_id_reviews'), type_='foreignkey')
        batch_op.drop_column('settled_by_id')

    with op.batch_alter_table('review_cases', schema=None) as batch_op:
        batch_op.drop_index('ix_review_cases_lesion')
        for name, prefix in QUEUE_INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, prefix + ['state'] + OLD_KEY, unique=False)
        for column in ('lesion_rank', 'patient_since', 'patient_rank', 'lesion_key', 'patient_key'):
            batch_op.drop_column(column)
