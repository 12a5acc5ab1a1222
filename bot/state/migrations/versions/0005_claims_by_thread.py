"""Question claims looked up by thread: whether the bot took a thread is read for every reply
in a channel it is in (Claims.took_thread).

Revision ID: 0005_claims_by_thread
Revises: 0004_event_inbox
"""

from alembic import op

revision = "0005_claims_by_thread"
down_revision = "0004_event_inbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("event_claims_thread", "event_claims", ["channel", "thread_ts"])


def downgrade() -> None:
    op.drop_index("event_claims_thread", table_name="event_claims")
