"""The newest schema as SQLAlchemy Core tables: what the queries in this package use.

The migrations in `migrations/versions/` create it; keep both in step (see the package
docstring). Times are epoch seconds (REAL), as the first schema had them.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

answers = sa.Table(
    "answers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("user_id", sa.Text),
    sa.Column("channel", sa.Text),
    sa.Column("thread_ts", sa.Text),  # the thread it was posted in: the bot owns that thread
    sa.Column("message_ts", sa.Text),
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("sources", sa.Text, nullable=False),  # JSON list of citations
    sa.Column("timings", sa.Text, nullable=False),  # JSON
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("question_ts", sa.Text, nullable=False, server_default=""),
    sa.Column("conversation", sa.Text, nullable=False, server_default=""),  # channel, private, im, mpim, assistant
    sa.Index("answers_thread", "channel", "thread_ts"),
    sa.Index("answers_status", "status", "created_at"),
    sa.Index("answers_question", "channel", "question_ts"),
    sa.Index("answers_time", "created_at"),
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("user_id", sa.Text),
    sa.Column("value", sa.Integer, nullable=False),  # +1 or -1
    sa.Index("feedback_time", "created_at"),
    sa.Index("feedback_vote", "answer_id", "user_id", unique=True),  # one vote per person per answer
)

handoffs = sa.Table(
    "handoffs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("answer_id", sa.Text, sa.ForeignKey("answers.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("thread_ts", sa.Text, nullable=False),  # a thread handed to people: the bot stays quiet
    sa.Column("user_id", sa.Text),
    sa.Column("contacts", sa.Text, nullable=False),  # JSON list
    sa.Index("handoffs_thread", "channel", "thread_ts", unique=True),
    sa.Index("handoffs_answer", "answer_id"),
)

event_claims = sa.Table(
    "event_claims", metadata,
    sa.Column("key", sa.Text, primary_key=True),  # "event:<event_id>" or "msg:<channel>:<ts>"
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # seen (an event id), working, done, abandoned
    sa.Column("holder", sa.Text, nullable=False, server_default=""),  # the replica working on it
    sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("channel", sa.Text, nullable=False, server_default=""),
    sa.Column("message_ts", sa.Text, nullable=False, server_default=""),
    sa.Column("thread_ts", sa.Text, nullable=False, server_default=""),
    sa.Column("user_id", sa.Text, nullable=False, server_default=""),
    sa.Column("team", sa.Text, nullable=False, server_default=""),
    sa.Column("conversation", sa.Text, nullable=False, server_default=""),
    sa.Column("assistant", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("text", sa.Text),  # the question, kept only until it is answered
    sa.Column("placeholder_ts", sa.Text, nullable=False, server_default=""),
    sa.Column("payload", sa.Text),  # an event's JSON body, kept until a listener handled it (the inbox)
    sa.Index("event_claims_lease", "state", "lease_until"),
    sa.Index("event_claims_time", "created_at"),
    sa.Index("event_claims_thread", "channel", "thread_ts"),  # Claims.took_thread, per thread reply
)

user_slots = sa.Table(
    "user_slots", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("released", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("user_slots_user", "user_key", "started_at"),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False, server_default=""),
    sa.Column("until", sa.Float, nullable=False, server_default="0"),
    sa.Column("tick", sa.Float, nullable=False, server_default="0"),
)

refresh_runs = sa.Table(
    "refresh_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("requested_by", sa.Text, nullable=False),
    sa.Column("rebuild", sa.Boolean, nullable=False),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("state", sa.Text, nullable=False),  # running, ok, failed, skipped; queued, joined (requests)
    sa.Column("report", sa.Text),
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("skipped", sa.Text, nullable=False, server_default=""),
    sa.Column("joined_run", sa.Integer),  # a joined request: the run that served it
    sa.Index("refresh_runs_state", "state", "started_at"),
)

# Channel and user-group membership changes (bot.access): the replica that got the Slack event
# writes one, every replica's cache forgets that principal.
membership_changes = sa.Table(
    "membership_changes", metadata,
    sa.Column("principal", sa.Text, primary_key=True),  # a channel (C…/G…) or user group (S…) id
    sa.Column("changed_at", sa.Float, nullable=False),
)

# Saved answers (bot.learning): replies people marked in the bot's threads, cited as team answers.
saved_answers = sa.Table(
    "saved_answers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),  # active, pending (review), rejected, removed; never deleted
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("channel_name", sa.Text, nullable=False, server_default=""),
    sa.Column("private", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("thread_ts", sa.Text, nullable=False),
    sa.Column("message_ts", sa.Text, nullable=False),  # the saved reply
    sa.Column("question", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),  # plain text, names instead of user ids
    sa.Column("answered_by", sa.Text, nullable=False, server_default=""),
    sa.Column("answered_by_name", sa.Text, nullable=False, server_default=""),
    sa.Column("answered_at", sa.Float, nullable=False),
    sa.Column("saved_by", sa.Text, nullable=False, server_default=""),
    sa.Column("saved_at", sa.Float, nullable=False),
    sa.Column("via", sa.Text, nullable=False, server_default="reaction"),  # reaction or shortcut
    sa.Column("permalink", sa.Text, nullable=False, server_default=""),
    sa.Column("source_name", sa.Text, nullable=False),  # team-answers, or team-answers-<channel> when private
    sa.Column("confirm_ts", sa.Text, nullable=False, server_default=""),  # the bot's confirmation in the thread
    sa.Column("reviewed_by", sa.Text, nullable=False, server_default=""),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("saved_answers_message", "channel", "message_ts", unique=True),
    sa.Index("saved_answers_status", "status", "saved_at"),
)

saved_answer_uses = sa.Table(
    "saved_answer_uses", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saved_id", sa.Text, nullable=False),
    sa.Column("answer_id", sa.Text, nullable=False),  # the bot answer (answers.id) that cited it
    sa.Column("question", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("helpful", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_helpful", sa.Integer, nullable=False, server_default="0"),
    sa.Index("saved_answer_uses_saved", "saved_id", "created_at"),
    sa.Index("saved_answer_uses_answer", "answer_id"),
)
