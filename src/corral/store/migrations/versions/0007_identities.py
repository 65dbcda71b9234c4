"""Agent identities and grants: what a user may let a run use in a team, what an agent may use as
itself, and the identity a run acts with (its mode and effective grants).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("corral_members", sa.Column("grants", sa.JSON, nullable=True))
    op.create_table(
        "corral_agents",
        sa.Column("team_id", sa.String(40), sa.ForeignKey("corral_teams.id"), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("grants", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.add_column("corral_runs", sa.Column("identity", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("corral_runs") as batch:
        batch.drop_column("identity")
    op.drop_table("corral_agents")
    with op.batch_alter_table("corral_members") as batch:
        batch.drop_column("grants")
