"""curation edits: merges (with the members each source had), splits and cluster names

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_merges",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("undone_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_cluster_merges_target", "cluster_merges", ["target"])
    op.create_table(
        "merge_members",
        sa.Column("merge_id", sa.Integer(), sa.ForeignKey("cluster_merges.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sentence_id", sa.BigInteger(), primary_key=True),
        sa.Column("label", sa.Integer(), nullable=False),
    )
    op.create_table(
        "cluster_splits",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("parent", sa.Integer(), nullable=False),
        sa.Column("children", sa.JSON(), nullable=False),
        sa.Column("resolution", sa.Float(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("undone_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "cluster_names",
        sa.Column("label", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cluster_names")
    op.drop_table("cluster_splits")
    op.drop_table("merge_members")
    op.drop_index("ix_cluster_merges_target", table_name="cluster_merges")
    op.drop_table("cluster_merges")
