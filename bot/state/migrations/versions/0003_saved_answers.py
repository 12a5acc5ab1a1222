"""Saved answers: replies people marked in the bot's threads, and which bot answers cited them.

Revision ID: 0003_saved_answers
Revises: 0002_shared_state
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_saved_answers"
down_revision = "0002_shared_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saved_answers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("channel_name", sa.Text, nullable=False, server_default=""),
        sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("thread_ts", sa.Text, nullable=False),
        sa.Column("message_ts", sa.Text, nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("answered_by", sa.Text, nullable=False, server_default=""),
        sa.Column("answered_by_name", sa.Text, nullable=False, server_default=""),
        sa.Column("answered_at", sa.Float, nullable=False),
        sa.Column("saved_by", sa.Text, nullable=False, server_default=""),
        sa.Column("saved_at", sa.Float, nullable=False),
        sa.Column("via", sa.Text, nullable=False, server_default="reaction"),
        sa.Column("permalink", sa.Text, nullable=False, server_default=""),
        sa.Column("source_name", sa.Text, nullable=False),
        sa.Column("confirm_ts", sa.Text, nullable=False, server_default=""),
        sa.Column("reviewed_by", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("saved_answers_message", "saved_answers", ["channel", "message_ts"], unique=True)
    op.create_index("saved_answers_status", "saved_answers", ["status", "saved_at"])
    op.create_table(
        "saved_answer_uses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("saved_id", sa.Text, nullable=False),
        sa.Column("answer_id", sa.Text, nullable=False),
        sa.Column("question", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("helpful", sa.Integer, nullable=False, server_default="0"),
        sa.Column("not_helpful", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("saved_answer_uses_saved", "saved_answer_uses", ["saved_id", "created_at"])
    op.create_index("saved_answer_uses_answer", "saved_answer_uses", ["answer_id"])


def downgrade() -> None:
    op.drop_table("saved_answer_uses")
    op.drop_table("saved_answers")
