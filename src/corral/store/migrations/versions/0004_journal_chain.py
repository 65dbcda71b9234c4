"""The journal's hash chain: each event's hash and its predecessor's, and each run's head.

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
    # Plain ADD COLUMNs (no table copy on SQLite): events written before stay without a hash.
    op.add_column("corral_events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("corral_events", sa.Column("hash", sa.String(64), nullable=True))
    op.add_column("corral_runs", sa.Column("journal_seq", sa.Integer, nullable=False, server_default="0"))
    op.add_column("corral_runs", sa.Column("journal_head", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("corral_runs") as batch:
        batch.drop_column("journal_head")
        batch.drop_column("journal_seq")
    with op.batch_alter_table("corral_events") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
