"""two-level clusterings: each cluster's level (fine or coarse) and a fine cluster's coarse parent

Revision ID: 0005
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("level", sa.String(8), nullable=False, server_default="fine"))
        batch.add_column(sa.Column("parent_label", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("parent_label")
        batch.drop_column("level")
