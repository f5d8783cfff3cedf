"""index cluster_terms by term, for the term totals incremental keywords need

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cluster_terms_run_term", "cluster_terms", ["run_id", "term"])


def downgrade() -> None:
    op.drop_index("ix_cluster_terms_run_term", table_name="cluster_terms")
