"""Answers and what people did with them: 👍/👎, hand-offs, shares, the threads the bot owns.

Questions asked in private conversations (DMs, private channels, group DMs, the
assistant pane) are counted in admin lists but never quoted there. Rows older than
RECORDS_RETENTION_DAYS are purged (`purge`, called by the claim sweeper).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from bot.state.database import Database, StateError, database_url, storable
from bot.state.tables import answers, feedback, handoffs, saved_answer_uses
from knowledge.types import Answer

RecordsError = StateError  # the name callers used before the state package

PRIVATE_CONVERSATIONS = ("private", "im", "mpim", "assistant")
PRIVATE_QUESTION = "(asked in a private conversation)"
SHARING = "sharing"  # thread_ts of a private answer while one replica posts it in the channel
_PENDING_HANDOFF = "pending:"  # thread_ts of a hand-off while its message is being posted


@dataclass(frozen=True)
class FeedbackRow:
    """One 👍/👎 with the answer it was about."""

    created_at: float
    value: int  # +1 or -1
    user_id: str
    question: str
    answer: str
    status: str
    channel: str
    thread_ts: str


@dataclass(frozen=True)
class AnswerRow:
    id: str
    created_at: float
    question: str
    status: str
    user_id: str
    channel: str
    thread_ts: str
    sources: list
    answer_text: str = ""  # filled by `Records.answer` only
    note: str = ""
    conversation: str = ""


@dataclass(frozen=True)
class Insights:
    """What the App Home shows admins for a period."""

    questions: int
    answered: int
    abstained: int
    handed_off: int
    helpful: int
    not_helpful: int
    gaps: list[tuple[str, int]]  # (question, times asked) not answered from the docs, most frequent first
    private_gaps: int = 0  # such questions asked in private conversations: counted, never quoted


def is_private(conversation: str) -> bool:
    return conversation in PRIVATE_CONVERSATIONS


def _count_if(condition) -> sa.ColumnElement:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


class Records:
    """The answers/feedback records; raises RecordsError (StateError) if they cannot be opened.

    Either on a shared `database` (the caller closes it) or on a SQLite file `path`
    (opened, migrated and closed here).
    """

    def __init__(self, *, database: Database | None = None, path: Path | str | None = None) -> None:
        if database is None:
            if path is None:
                raise ValueError("Records needs a database or a path")
            database = Database(url=database_url(str(path), default_path=path))
            self._owned = True
        else:
            self._owned = False
        self.db = database

    def close(self) -> None:
        if self._owned:
            self.db.close()

    def _rows(self, statement) -> list[sa.Row]:
        with self.db.begin() as connection:
            return list(connection.execute(statement))

    def _exists(self, table: sa.Table, **where: str) -> bool:
        """Whether a row matches all `where` columns; False at once when a value is empty."""
        if not all(where.values()):
            return False
        condition = sa.and_(*(table.c[name] == value for name, value in where.items()))
        return bool(self._rows(sa.select(sa.literal(1)).select_from(table).where(condition).limit(1)))

    # ---- answers ----------------------------------------------------------------------

    def record_answer(
        self, answer: Answer, *, user_id: str = "", channel: str = "", thread_ts: str = "",
        question_ts: str = "", conversation: str = "",
    ) -> str:
        """Store one answer; returns its id (what the feedback buttons carry)."""
        record_id = uuid.uuid4().hex[:16]
        with self.db.begin() as connection:
            connection.execute(answers.insert().values(
                id=record_id, created_at=time.time(), user_id=user_id, channel=channel, thread_ts=thread_ts,
                message_ts="", question=storable(answer.question), answer=storable(answer.text), status=answer.status,
                sources=json.dumps([c.to_dict() for c in answer.citations], ensure_ascii=False),
                timings=json.dumps(answer.timings_ms), note=answer.note, question_ts=question_ts,
                conversation=conversation,
            ))
        return record_id

    def set_message_ts(self, record_id: str, message_ts: str) -> None:
        with self.db.begin() as connection:
            connection.execute(answers.update().where(answers.c.id == record_id).values(message_ts=message_ts))

    def answered_question(self, channel: str, question_ts: str) -> bool:
        """Whether the message posted at `question_ts` was already answered (by any replica)."""
        return self._exists(answers, channel=channel, question_ts=question_ts)

    def answered_thread(self, channel: str, thread_ts: str) -> bool:
        """Whether the bot answered in this thread (so follow-ups need no mention)."""
        return self._exists(answers, channel=channel, thread_ts=thread_ts)

    def answer(self, record_id: str) -> AnswerRow | None:
        """One stored answer with its text and note, or None for an unknown id."""
        if not record_id:
            return None
        rows = self._rows(sa.select(
            answers.c.id, answers.c.created_at, answers.c.question, answers.c.status, answers.c.user_id,
            answers.c.channel, answers.c.thread_ts, answers.c.sources, answers.c.answer, answers.c.note,
            answers.c.conversation,
        ).where(answers.c.id == record_id))
        if not rows:
            return None
        row = rows[0]
        return AnswerRow(*row[:7], json.loads(row[7]), answer_text=row[8], note=row[9], conversation=row[10])

    def claim_share(self, record_id: str) -> bool:
        """Start sharing a private answer: True for the one click (on any replica) that may post it."""
        with self.db.begin() as connection:
            result = connection.execute(
                answers.update().where(answers.c.id == record_id, sa.func.coalesce(answers.c.thread_ts, "") == "")
                .values(thread_ts=SHARING)
            )
        return result.rowcount == 1

    def unclaim_share(self, record_id: str) -> None:
        """Posting the shared answer failed: it may be shared again."""
        with self.db.begin() as connection:
            connection.execute(
                answers.update().where(answers.c.id == record_id, answers.c.thread_ts == SHARING).values(thread_ts="")
            )

    def move_answer(self, record_id: str, *, channel: str, thread_ts: str, message_ts: str) -> None:
        """A private answer was shared: it now lives in this channel thread (follow-ups work there)."""
        with self.db.begin() as connection:
            connection.execute(answers.update().where(answers.c.id == record_id).values(
                channel=channel, thread_ts=thread_ts, message_ts=message_ts, conversation="channel",
            ))

    # ---- feedback -----------------------------------------------------------------------

    def record_feedback(self, answer_id: str, *, user_id: str, value: int) -> bool:
        """Store a 👍 (+1) or 👎 (-1); a person's second click replaces their vote.

        False when the answer id is unknown; raises ValueError for another value.
        """
        if value not in (1, -1):
            raise ValueError("feedback value must be +1 or -1")
        if not self._exists(answers, id=answer_id):
            return False
        values = {"answer_id": answer_id, "created_at": time.time(), "user_id": user_id or None, "value": value}
        with self.db.begin() as connection:
            if not user_id:
                connection.execute(feedback.insert().values(**values))
                return True
            insert = _insert(self.db)(feedback).values(**values)
            connection.execute(insert.on_conflict_do_update(
                index_elements=["answer_id", "user_id"],
                set_={"value": insert.excluded.value, "created_at": insert.excluded.created_at},
            ))
        return True

    # ---- hand-offs ----------------------------------------------------------------------

    def record_handoff(self, answer_id: str, *, channel: str, thread_ts: str, user_id: str,
                       contacts: tuple[str, ...]) -> bool:
        """Store that a thread was handed to humans; False when it already was (or the answer is unknown)."""
        if not self._exists(answers, id=answer_id):
            return False
        with self.db.begin() as connection:
            return self.db.insert_ignore(connection, handoffs, {
                "answer_id": answer_id, "created_at": time.time(), "channel": channel, "thread_ts": thread_ts,
                "user_id": user_id, "contacts": json.dumps(list(contacts)),
            })  # the unique (channel, thread_ts) index: one hand-off per thread

    def claim_handoff(self, answer_id: str, *, channel: str, user_id: str, contacts: tuple[str, ...]) -> bool:
        """Reserve the hand-off of an answer that has no thread yet; False if one was made (anywhere).

        Then `finish_handoff` with the posted message's ts, or `release_handoff` if posting failed.
        """
        with self.db.begin() as connection:
            self.db.lock(connection, f"handoff:{answer_id}")
            made = connection.execute(
                sa.select(sa.literal(1)).select_from(handoffs).where(handoffs.c.answer_id == answer_id).limit(1)
            ).first()
            if made is not None or not connection.execute(
                sa.select(sa.literal(1)).select_from(answers).where(answers.c.id == answer_id)
            ).first():
                return False
            return self.db.insert_ignore(connection, handoffs, {
                "answer_id": answer_id, "created_at": time.time(), "channel": channel,
                "thread_ts": _PENDING_HANDOFF + answer_id, "user_id": user_id, "contacts": json.dumps(list(contacts)),
            })

    def finish_handoff(self, answer_id: str, *, channel: str, thread_ts: str) -> None:
        with self.db.begin() as connection:
            connection.execute(handoffs.update().where(
                handoffs.c.channel == channel, handoffs.c.thread_ts == _PENDING_HANDOFF + answer_id,
            ).values(thread_ts=thread_ts))

    def release_handoff(self, answer_id: str, *, channel: str, thread_ts: str = "") -> None:
        """Forget a hand-off that could not be posted (claimed, or recorded for `thread_ts`), so
        that clicking again tries again instead of saying a person was already asked."""
        with self.db.begin() as connection:
            connection.execute(handoffs.delete().where(
                handoffs.c.answer_id == answer_id, handoffs.c.channel == channel,
                handoffs.c.thread_ts == (thread_ts or _PENDING_HANDOFF + answer_id),
            ))

    def answer_handed_off(self, answer_id: str) -> bool:
        """Whether a hand-off was already made from this answer (wherever it was posted)."""
        return self._exists(handoffs, answer_id=answer_id)

    def handed_off(self, channel: str, thread_ts: str) -> bool:
        """Whether humans were asked to take over this thread (the bot then stays quiet there)."""
        return self._exists(handoffs, channel=channel, thread_ts=thread_ts)

    # ---- admin views ----------------------------------------------------------------------

    def insights(self, *, since: float, top: int = 5) -> Insights:
        """Counts since `since` (epoch seconds) and the most frequent unanswered questions.

        Questions from private conversations are counted in `private_gaps`, never listed.
        """
        private = answers.c.conversation.in_(PRIVATE_CONVERSATIONS)
        gap = sa.or_(answers.c.status == "abstained", answers.c.id.in_(sa.select(handoffs.c.answer_id)))
        with self.db.begin() as connection:
            questions, answered, abstained, private_gaps = connection.execute(sa.select(
                sa.func.count(), _count_if(answers.c.status == "answered"),
                _count_if(answers.c.status == "abstained"), _count_if(sa.and_(gap, private)),
            ).where(answers.c.created_at >= since)).one()
            handed_off = connection.execute(
                sa.select(sa.func.count()).select_from(handoffs).where(handoffs.c.created_at >= since)
            ).scalar_one()
            up, down = connection.execute(sa.select(
                _count_if(feedback.c.value > 0), _count_if(feedback.c.value < 0),
            ).where(feedback.c.created_at >= since)).one()
            # Coverage gaps: "not in the docs", or handed to a human; the same question counted once per ask.
            times = sa.func.count().label("times")
            latest = sa.func.max(answers.c.created_at).label("latest")
            gaps = connection.execute(
                sa.select(sa.func.min(answers.c.question), times, latest)
                .where(answers.c.created_at >= since, gap, sa.not_(private))
                .group_by(sa.func.lower(sa.func.trim(answers.c.question)))
                .order_by(times.desc(), latest.desc()).limit(top)
            ).all()
        return Insights(
            questions=questions, answered=answered, abstained=abstained, handed_off=handed_off,
            helpful=up, not_helpful=down, gaps=[(question, count) for question, count, _ in gaps],
            private_gaps=private_gaps,
        )

    def recent_feedback(self, limit: int = 20) -> list[FeedbackRow]:
        """Latest votes with their answers; private questions and answers are not quoted."""
        rows = self._rows(
            sa.select(feedback.c.created_at, feedback.c.value, feedback.c.user_id, answers.c.question,
                      answers.c.answer, answers.c.status, answers.c.channel, answers.c.thread_ts,
                      answers.c.conversation)
            .select_from(feedback.join(answers, answers.c.id == feedback.c.answer_id))
            .order_by(feedback.c.created_at.desc(), feedback.c.id.desc()).limit(limit)
        )
        return [
            FeedbackRow(*row[:3], PRIVATE_QUESTION, "", *row[5:8]) if is_private(row[8]) else FeedbackRow(*row[:8])
            for row in rows
        ]

    def abstained(self, limit: int = 20) -> list[AnswerRow]:
        """Recent questions answered "not in the docs" (status abstained): gaps in the docs."""
        return self._answers(answers.c.status == "abstained", limit)

    def recent_answers(self, limit: int = 20) -> list[AnswerRow]:
        return self._answers(sa.true(), limit)

    def _answers(self, where, limit: int) -> list[AnswerRow]:
        rows = self._rows(
            sa.select(answers.c.id, answers.c.created_at, answers.c.question, answers.c.status, answers.c.user_id,
                      answers.c.channel, answers.c.thread_ts, answers.c.sources, answers.c.conversation)
            .where(where).order_by(answers.c.created_at.desc()).limit(limit)
        )
        return [
            AnswerRow(row[0], row[1], PRIVATE_QUESTION if is_private(row[8]) else row[2], *row[3:7],
                      json.loads(row[7]), conversation=row[8])
            for row in rows
        ]

    def totals(self) -> dict[str, int]:
        with self.db.begin() as connection:
            count, abstained = connection.execute(
                sa.select(sa.func.count(), _count_if(answers.c.status == "abstained")).select_from(answers)
            ).one()
            up, down = connection.execute(
                sa.select(_count_if(feedback.c.value > 0), _count_if(feedback.c.value < 0))
            ).one()
        return {"answers": count, "abstained": abstained, "helpful": up, "not_helpful": down}

    # ---- retention ---------------------------------------------------------------------------

    def purge(self, *, older_than: float, private_text_before: float | None = None) -> int:
        """Delete answers (with their votes, hand-offs and saved-answer uses) created before `older_than`.

        With `private_text_before`, the question and answer text of private conversations
        older than that is blanked too. Returns how many answers were deleted.
        """
        old = sa.select(answers.c.id).where(answers.c.created_at < older_than)
        with self.db.begin() as connection:
            connection.execute(feedback.delete().where(feedback.c.answer_id.in_(old)))
            connection.execute(handoffs.delete().where(handoffs.c.answer_id.in_(old)))
            connection.execute(saved_answer_uses.delete().where(saved_answer_uses.c.answer_id.in_(old)))
            deleted = connection.execute(answers.delete().where(answers.c.created_at < older_than)).rowcount
            if private_text_before is not None:
                connection.execute(answers.update().where(
                    answers.c.created_at < private_text_before, answers.c.conversation.in_(PRIVATE_CONVERSATIONS),
                    answers.c.question != "",
                ).values(question="", answer=""))
                # Uses of saved answers keep no private question (ones recorded before they were left out).
                connection.execute(saved_answer_uses.update().where(
                    saved_answer_uses.c.question != "", saved_answer_uses.c.answer_id.in_(
                        sa.select(answers.c.id).where(answers.c.conversation.in_(PRIVATE_CONVERSATIONS))),
                ).values(question=""))
        return deleted


def _insert(db: Database):
    if db.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp))


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_feedback_report(records: Records, limit: int = 20) -> str:
    """The `supportbot feedback` text: totals, recent 👍/👎, questions the docs did not answer."""
    totals = records.totals()
    lines = [
        f"Answers: {totals['answers']}  (not in the docs: {totals['abstained']})"
        f"  Feedback: {totals['helpful']} helpful, {totals['not_helpful']} not helpful",
        "",
        f"Recent feedback (latest {limit}):",
    ]
    feedback_rows = records.recent_feedback(limit)
    lines += [
        f"  {_when(row.created_at)} UTC  {'+1' if row.value > 0 else '-1'}  [{row.status}]  {_short(row.question)}"
        for row in feedback_rows
    ] or ["  (none)"]
    lines += ["", f"Questions answered \"not in the docs\" (latest {limit}):"]
    lines += [
        f"  {_when(row.created_at)} UTC  {_short(row.question)}" for row in records.abstained(limit)
    ] or ["  (none)"]
    return "\n".join(lines)
