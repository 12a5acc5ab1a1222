"""Membership changes shared by replicas: a member_left_channel (or user group change) seen by
one replica makes every replica forget its cached members (bot.state.membership_changes).

Revision ID: 0007_membership_changes
Revises: 0006_queued_refreshes
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_membership_changes"
down_revision = "0006_queued_refreshes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "membership_changes",
        sa.Column("principal", sa.Text, primary_key=True),
        sa.Column("changed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("membership_changes")
