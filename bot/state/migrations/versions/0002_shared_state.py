"""Shared state for replicas: event claims, per-person limits, refresh runs and leases;
one vote per person per answer; the kind of conversation an answer was given in.

Revision ID: 0002_shared_state
Revises: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_shared_state"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # channel, private, im, mpim, assistant: private kinds are counted, never quoted, in admin lists.
    op.add_column("answers", sa.Column("conversation", sa.Text, nullable=False, server_default=""))
    op.create_index("answers_time", "answers", ["created_at"])
    op.create_index("handoffs_answer", "handoffs", ["answer_id"])

    # One vote per person per answer: keep each person's latest vote, then make it unique.
    op.execute(
        "DELETE FROM feedback WHERE user_id IS NOT NULL AND id NOT IN"
        " (SELECT MAX(id) FROM feedback WHERE user_id IS NOT NULL GROUP BY answer_id, user_id)"
    )
    op.create_index("feedback_vote", "feedback", ["answer_id", "user_id"], unique=True)

    op.create_table(
        "event_claims",
        sa.Column("key", sa.Text, primary_key=True),  # "event:<event_id>" or "msg:<channel>:<ts>"
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # seen, working, done
        sa.Column("holder", sa.Text, nullable=False, server_default=""),
        sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("channel", sa.Text, nullable=False, server_default=""),
        sa.Column("message_ts", sa.Text, nullable=False, server_default=""),
        sa.Column("thread_ts", sa.Text, nullable=False, server_default=""),
        sa.Column("user_id", sa.Text, nullable=False, server_default=""),
        sa.Column("team", sa.Text, nullable=False, server_default=""),
        sa.Column("conversation", sa.Text, nullable=False, server_default=""),
        sa.Column("assistant", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("text", sa.Text),  # the question, until it is answered
        sa.Column("placeholder_ts", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("event_claims_lease", "event_claims", ["state", "lease_until"])
    op.create_index("event_claims_time", "event_claims", ["created_at"])

    op.create_table(
        "user_slots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),  # a dead replica's slot frees itself
        sa.Column("released", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("user_slots_user", "user_slots", ["user_key", "started_at"])

    op.create_table(
        "leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False, server_default=""),
        sa.Column("until", sa.Float, nullable=False, server_default="0"),
        sa.Column("tick", sa.Float, nullable=False, server_default="0"),  # the last scheduled tick run
    )

    op.create_table(
        "refresh_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("rebuild", sa.Boolean, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("state", sa.Text, nullable=False),  # running, ok, failed, skipped
        sa.Column("report", sa.Text),  # RefreshReport.to_dict() as JSON
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("skipped", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("refresh_runs_state", "refresh_runs", ["state", "started_at"])


def downgrade() -> None:
    op.drop_table("refresh_runs")
    op.drop_table("leases")
    op.drop_table("user_slots")
    op.drop_table("event_claims")
    op.drop_index("feedback_vote", "feedback")
    op.drop_index("handoffs_answer", "handoffs")
    op.drop_index("answers_time", "answers")
    op.drop_column("answers", "conversation")
