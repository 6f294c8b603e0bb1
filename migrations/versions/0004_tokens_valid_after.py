"""users.tokens_valid_after: a deactivated account's old tokens stay refused once it is active again

Deactivating an account sets it to the moment of deactivation; every token issued (JWT
``iat``) before it is refused from then on, so reactivating the account does not make a
stolen token valid again. NULL (every existing row): no cut-off.

Revision ID: 0004_tokens_valid_after
Revises: 0003_feedback_trust
Create Date: 2026-11-30 14:10:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004_tokens_valid_after'
down_revision = '0003_feedback_trust'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tokens_valid_after', sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('tokens_valid_after')
