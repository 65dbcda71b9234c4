"""Run queues: the one a run's tree was submitted to (``corral run --submit``, the API), and the ones a
worker serves.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("corral_runs", sa.Column("queue", sa.String(80), nullable=True))
    op.add_column("corral_executors", sa.Column("queues", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("corral_executors") as batch:
        batch.drop_column("queues")
    with op.batch_alter_table("corral_runs") as batch:
        batch.drop_column("queue")
