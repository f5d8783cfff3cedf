"""one index record per data folder, and a sequence counter in the database

Several hosts share one database, each with its own FAISS file: ``index_caches`` holds a
row per data folder; the ``seq`` row of ``counters`` hands out sentence sequence numbers
under a row lock, so concurrent writers never collide and numbers commit in order.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_caches",
        sa.Column("folder_id", sa.String(64), primary_key=True),
        sa.Column("watermark", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("checksum", sa.String(64), nullable=True),
        sa.Column("ntotal", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("index_type", sa.String(64), nullable=True),
        sa.Column("deletions", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("file_bytes", sa.BigInteger(), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("data_dir", sa.String(1000), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO counters (name, value) SELECT 'seq', COALESCE(MAX(seq), 0) FROM sentences")


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("index_caches")
