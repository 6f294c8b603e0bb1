"""feedback.status and its reason; who reviewed a label; each model version's temperature

Every feedback row gets a status (``accepted``, ``quarantined`` or ``rejected``) with a
machine-readable reason and the numbers behind it, changed only by the trust rules or by an
admin (``reviewed_by``/``reviewed_at``). Existing rows start ``accepted``: they were all
trusted before. ``model_versions.temperature`` is the post-hoc calibration fitted when a
version is trained; NULL means uncalibrated (served as temperature 1).

Revision ID: 0003_feedback_trust
Revises: 0002_onnx_export
Create Date: 2026-11-30 11:20:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003_feedback_trust'
down_revision = '0002_onnx_export'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), nullable=False, server_default='accepted'))
        batch_op.add_column(sa.Column('status_reason', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('status_detail', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('reviewed_by', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reviewed_at', sa.DateTime(), nullable=True))
        batch_op.create_foreign_key('fk_feedback_reviewed_by_users', 'users', ['reviewed_by'], ['id'],
                                    ondelete='SET NULL')
        batch_op.create_index('ix_feedback_status', ['status'], unique=False)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('temperature', sa.Double(), nullable=True))


def downgrade():
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('temperature')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_status')
        batch_op.drop_constraint('fk_feedback_reviewed_by_users', type_='foreignkey')
        batch_op.drop_column('reviewed_at')
        batch_op.drop_column('reviewed_by')
        batch_op.drop_column('status_detail')
        batch_op.drop_column('status_reason')
        batch_op.drop_column('status')
