"""Follow-up runs (``corral continue``) and model calls without a known price.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The run a follow-up continues (its conversation and workspace); NULL for a new run.
    op.add_column("corral_runs", sa.Column("continues_id", sa.String(40), nullable=True))
    # Model calls whose price is unknown: their cost is not in cost_usd ("cost unknown").
    op.add_column("corral_runs", sa.Column("unpriced_calls", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("corral_runs", "unpriced_calls")
    op.drop_column("corral_runs", "continues_id")
