"""Approval requests: policy said ``ask``, a person decides.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corral_approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("corral_runs.id"), nullable=False),
        sa.Column("call_id", sa.String(200), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(80), nullable=False),
        sa.Column("arguments", sa.JSON, nullable=False),
        sa.Column("rule", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decision_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_corral_approvals_run_id", "corral_approvals", ["run_id"])
    op.create_index("ix_corral_approvals_status", "corral_approvals", ["status"])


def downgrade() -> None:
    op.drop_table("corral_approvals")
