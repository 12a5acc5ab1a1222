"""The schema before migrations: answers, 👍/👎 feedback, hand-offs.

A SQLite file from then is adopted (stamped at this revision) instead of migrated,
see bot.state.database.Database.migrate.

Revision ID: 0001_baseline
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "answers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("channel", sa.Text),
        sa.Column("thread_ts", sa.Text),
        sa.Column("message_ts", sa.Text),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("sources", sa.Text, nullable=False),
        sa.Column("timings", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("question_ts", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("answers_thread", "answers", ["channel", "thread_ts"])
    op.create_index("answers_status", "answers", ["status", "created_at"])
    op.create_index("answers_question", "answers", ["channel", "question_ts"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.create_index("feedback_time", "feedback", ["created_at"])
    op.create_table(
        "handoffs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("thread_ts", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("contacts", sa.Text, nullable=False),
    )
    op.create_index("handoffs_thread", "handoffs", ["channel", "thread_ts"], unique=True)


def downgrade() -> None:
    op.drop_table("handoffs")
    op.drop_table("feedback")
    op.drop_table("answers")
