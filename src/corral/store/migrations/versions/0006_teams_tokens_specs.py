"""Teams, users, API tokens (hashed, scoped) and registered agent specs; a run's team and submitter.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corral_teams",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "corral_users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "corral_members",
        sa.Column("user_id", sa.String(40), sa.ForeignKey("corral_users.id"), primary_key=True),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("corral_teams.id"), primary_key=True),
    )
    op.create_table(
        "corral_tokens",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("secret_hash", sa.String(200), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("corral_users.id"), nullable=False, index=True),
        sa.Column("team_id", sa.String(40), sa.ForeignKey("corral_teams.id"), nullable=False, index=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("last_used_at", sa.Float, nullable=True),
    )
    op.create_table(
        "corral_specs",
        sa.Column("team_id", sa.String(40), sa.ForeignKey("corral_teams.id"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(40), nullable=False),
        sa.UniqueConstraint("team_id", "name", "spec_hash", name="uq_corral_specs_team_name_hash"),
    )
    op.add_column("corral_runs", sa.Column("team_id", sa.String(40), nullable=True))
    op.add_column("corral_runs", sa.Column("submitted_by", sa.String(40), nullable=True))
    op.create_index("ix_corral_runs_team_id", "corral_runs", ["team_id"])


def downgrade() -> None:
    op.drop_index("ix_corral_runs_team_id", "corral_runs")
    with op.batch_alter_table("corral_runs") as batch:
        batch.drop_column("submitted_by")
        batch.drop_column("team_id")
    for table in ("corral_specs", "corral_tokens", "corral_members", "corral_users", "corral_teams"):
        op.drop_table(table)
