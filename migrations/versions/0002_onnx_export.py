"""model_versions.onnx_sha256: the hash of each version's ONNX export

Serving loads the ``.onnx`` file saved beside each ``.keras`` file and checks it against
this column. Existing rows start NULL; their files are exported when a worker next starts
(or by ``flask model export-onnx``), which fills it in.

Revision ID: 0002_onnx_export
Revises: 0001_initial
Create Date: 2026-11-30 09:45:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002_onnx_export'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('onnx_sha256', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('onnx_sha256')
