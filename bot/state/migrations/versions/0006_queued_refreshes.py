"""Queued refresh requests: a /reindex made while a refresh runs is a row, so it outlives the
replica that took it, and the run that serves it is recorded on it (RefreshRuns.queue/start).

Revision ID: 0006_queued_refreshes
Revises: 0005_claims_by_thread
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_queued_refreshes"
down_revision = "0005_claims_by_thread"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("refresh_runs", sa.Column("joined_run", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("refresh_runs") as batch:
        batch.drop_column("joined_run")
