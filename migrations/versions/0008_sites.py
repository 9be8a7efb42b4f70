"""sites: a batch, its patients and lesions belong to a site; users belong to sites with a role there

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 13:00:00.000000

Until now the portal served one clinic. From here on it may serve several that must not see each
other's data. Everything that exists moves to one site, "Default site": every batch, patient and
lesion, and every user with the role they had (an admin stays the deployment-wide admin too). Patients'
and lesions' ids become unique per site rather than across the deployment. Audit events gain the site
they concern; those written before stay without one and are read by the deployment's admins, as before
(the log is append-only, so old rows are not rewritten). Downgrading with more than one site refuses,
since ids unique per site may no longer be unique across the deployment and sites would merge.
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

DEFAULT_SITE = "Default site"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def upgrade() -> None:
    op.create_table('sites',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sites')),
    sa.UniqueConstraint('name', name=op.f('uq_sites_name'))
    )
    op.create_table('site_memberships',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("role IN ('uploader', 'reviewer', 'admin')", name=op.f('ck_site_memberships_role')),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_site_memberships_site_id_sites')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_site_memberships_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_site_memberships')),
    sa.UniqueConstraint('user_id', 'site_id', name='uq_site_memberships_user_site')
    )
    with op.batch_alter_table('site_memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_site_memberships_site_id'), ['site_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_site_memberships_user_id'), ['user_id'], unique=False)

    # The default site, and everyone in it with the role they had.
    now = _now()
    conn = op.get_bind()
    conn.execute(sa.text("INSERT INTO sites (name, active, created_at) VALUES (:name, :active, :at)"),
                 {"name": DEFAULT_SITE, "active": True, "at": now})
    site = conn.execute(sa.text("SELECT id FROM sites WHERE name = :name"), {"name": DEFAULT_SITE}).scalar_one()
    conn.execute(sa.text("INSERT INTO site_memberships (user_id, site_id, role, created_at) "
                         "SELECT id, :site, role, :at FROM users"), {"site": site, "at": now})

    # Each table gains its site filled in, then the column is made required (SQLite: copy-and-move).
    for table in ('batches', 'patients', 'lesions'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('site_id', sa.Integer(), nullable=True))
        conn.execute(sa.text(f"UPDATE {table} SET site_id = :site"), {"site": site})
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.alter_column('site_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(batch_op.f('ix_batches_site_id'), ['site_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_batches_site_id_sites'), 'sites', ['site_id'], ['id'])
    for table in ('patients', 'lesions'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('site_id', existing_type=sa.Integer(), nullable=False)
            batch_op.drop_constraint(f'uq_{table}_external_id', type_='unique')
            batch_op.create_unique_constraint(f'uq_{table}_site_external_id', ['site_id', 'external_id'])
            batch_op.create_index(batch_op.f(f'ix_{table}_site_id'), ['site_id'], unique=False)
            batch_op.create_foreign_key(batch_op.f(f'fk_{table}_site_id_sites'), 'sites', ['site_id'], ['id'])

    # Not with batch_alter_table: copying the audit log would drop its append-only triggers on SQLite.
    # A plain ADD COLUMN keeps them, and existing rows are left as they are (no site: deployment-wide).
    op.add_column('audit_log', sa.Column('site_id', sa.Integer(), nullable=True))
    op.create_index(op.f('ix_audit_log_site_id'), 'audit_log', ['site_id'], unique=False)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT count(*) FROM sites")).scalar_one() > 1:
        raise RuntimeError("This database has several sites; downgrading would merge them. Refused.")

    op.drop_index(op.f('ix_audit_log_site_id'), table_name='audit_log')
    op.drop_column('audit_log', 'site_id')

    for table in ('lesions', 'patients'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f'fk_{table}_site_id_sites'), type_='foreignkey')
            batch_op.drop_index(batch_op.f(f'ix_{table}_site_id'))
            batch_op.drop_constraint(f'uq_{table}_site_external_id', type_='unique')
            batch_op.create_unique_constraint(f'uq_{table}_external_id', ['external_id'])
            batch_op.drop_column('site_id')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_batches_site_id_sites'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_batches_site_id'))
        batch_op.drop_column('site_id')

    with op.batch_alter_table('site_memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_site_memberships_user_id'))
        batch_op.drop_index(batch_op.f('ix_site_memberships_site_id'))
    op.drop_table('site_memberships')
    op.drop_table('sites')
