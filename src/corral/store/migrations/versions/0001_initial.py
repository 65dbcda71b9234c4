"""Runs, events and executors.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corral_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("parent_id", sa.String(40), sa.ForeignKey("corral_runs.id"), nullable=True),
        sa.Column("root_id", sa.String(40), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("repo", sa.Text, nullable=False),
        sa.Column("run_dir", sa.Text, nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("executor_id", sa.String(80), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_type", sa.String(80), nullable=True),
        sa.Column("turns", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cache_read_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cache_write_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    )
    op.create_index("ix_corral_runs_parent_id", "corral_runs", ["parent_id"])
    op.create_index("ix_corral_runs_root_id", "corral_runs", ["root_id"])
    op.create_index("ix_corral_runs_status", "corral_runs", ["status"])
    op.create_table(
        "corral_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("corral_runs.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("data", sa.JSON, nullable=False),
        sa.UniqueConstraint("run_id", "seq", name="uq_corral_events_run_seq"),
        sa.UniqueConstraint("run_id", "key", name="uq_corral_events_run_key"),
    )
    op.create_index("ix_corral_events_type", "corral_events", ["type"])
    op.create_table(
        "corral_executors",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("corral_executors")
    op.drop_index("ix_corral_events_type", "corral_events")
    op.drop_table("corral_events")
    op.drop_table("corral_runs")
