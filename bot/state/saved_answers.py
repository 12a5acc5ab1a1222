"""Saved answers: replies people gave in the bot's threads, kept to be cited next time.

Two tables: `saved_answers` (one row per saved Slack reply, whatever its status) and
`saved_answer_uses` (which bot answers cited one, and the 👍/👎 those answers got).
A row's status is "active" (indexed and cited), "pending" (waiting for an admin's
review), "rejected" or "removed"; rows are never deleted, so a removed answer's
private source name is still known when its chunks are deleted from the index.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import sqlalchemy as sa

from bot.state.database import Database
from bot.state.tables import saved_answer_uses as uses_table
from bot.state.tables import saved_answers as saved_table

ACTIVE = "active"
PENDING = "pending"
REJECTED = "rejected"
REMOVED = "removed"
STATUSES = (ACTIVE, PENDING, REJECTED, REMOVED)


@dataclass(frozen=True)
class SavedAnswer:
    """One saved Slack reply and where it came from."""

    id: str
    status: str
    channel: str
    channel_name: str
    private: bool
    thread_ts: str
    message_ts: str
    question: str
    answer: str
    answered_by: str
    answered_by_name: str
    answered_at: float
    saved_by: str
    saved_at: float
    via: str
    permalink: str
    source_name: str
    confirm_ts: str = ""
    reviewed_by: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True)
class Usage:
    """How often a saved answer was cited since it was saved, and how those answers were rated."""

    answers: int = 0
    helpful: int = 0
    not_helpful: int = 0
    questions: tuple[str, ...] = ()  # the latest questions it answered, newest first


_COLUMNS = [f.name for f in fields(SavedAnswer)]


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class SavedAnswers:
    """The saved answers in the state database (SQLite or PostgreSQL); every method raises StateError."""

    def __init__(self, *, database: Database) -> None:
        self._db = database

    # -- writing ----------------------------------------------------------
    def add(self, answer: SavedAnswer) -> SavedAnswer | None:
        """Store a new saved answer; None when that Slack message is already saved (active or pending).

        A message saved before and then removed, rejected or undone is saved again under its old id.
        """
        answer = replace(answer, updated_at=time.time())
        with self._db.begin() as connection:
            self._db.lock(connection, f"saved:{answer.channel}:{answer.message_ts}")
            existing = connection.execute(
                sa.select(saved_table.c.id, saved_table.c.status)
                .where(saved_table.c.channel == answer.channel, saved_table.c.message_ts == answer.message_ts)
            ).first()
            if existing is None:
                return answer if self._db.insert_ignore(connection, saved_table, _values(answer)) else None
            if existing.status in (ACTIVE, PENDING):
                return None
            answer = replace(answer, id=existing.id, confirm_ts="", reviewed_by="")
            connection.execute(saved_table.update().where(saved_table.c.id == answer.id).values(**_values(answer)))
        return answer

    def set_status(self, saved_id: str, status: str, *, by: str = "") -> SavedAnswer | None:
        """Change a saved answer's status; returns it as it is now, None for an unknown id."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return self._update(saved_id, status=status, reviewed_by=by)

    def update(self, saved_id: str, *, question: str | None = None, answer: str | None = None) -> SavedAnswer | None:
        """New question or answer text (an edit in the App Home or in Slack); None for an unknown id."""
        values = {key: value for key, value in (("question", question), ("answer", answer)) if value is not None}
        return self._update(saved_id, **values)

    def make_private(self, channel: str, *, source_name: str) -> int:
        """`channel` turned private or shared: its saved answers in use or waiting for review become
        private and move to `source_name`, which only its members may read. Returns how many moved."""
        if not channel:
            return 0
        with self._db.begin() as connection:
            result = connection.execute(
                saved_table.update()
                .where(saved_table.c.channel == channel, saved_table.c.source_name != source_name,
                       saved_table.c.status.in_((ACTIVE, PENDING)))  # a re-save decides anew
                .values(private=True, source_name=source_name, updated_at=time.time()))
        return int(result.rowcount or 0)

    def public_channels(self) -> list[str]:
        """The channels whose saved answers in use or waiting for review are the whole team's."""
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(saved_table.c.channel).distinct()
                .where(saved_table.c.private.is_(False), saved_table.c.status.in_((ACTIVE, PENDING))))
            return sorted(row[0] for row in rows if row[0])

    def set_confirm_ts(self, saved_id: str, confirm_ts: str) -> None:
        # Where the bot said it saved the reply is no change to the answer: updated_at stays, so
        # an edit made in Slack just after still counts as newer (bot.learning.reread_saved).
        self._update(saved_id, touch=False, confirm_ts=confirm_ts)

    def _update(self, saved_id: str, *, touch: bool = True, **values) -> SavedAnswer | None:
        if not saved_id:
            return None
        if touch:
            values["updated_at"] = time.time()
        with self._db.begin() as connection:
            row = connection.execute(saved_table.update().where(saved_table.c.id == saved_id)
                                     .values(**values)
                                     .returning(*saved_table.c)).mappings().first()
        return _answer(row) if row is not None else None

    def record_use(self, saved_ids: Iterable[str], answer_id: str, *, question: str = "") -> None:
        """A bot answer (answers.id) to `question` cited these saved answers."""
        rows = [{"saved_id": s, "answer_id": answer_id, "created_at": time.time(), "question": question}
                for s in dict.fromkeys(saved_ids) if s]
        if not rows or not answer_id:
            return
        with self._db.begin() as connection:
            connection.execute(uses_table.insert(), rows)

    def record_feedback(self, answer_id: str, value: int) -> None:
        """👍 (+1) or 👎 (-1) on a bot answer: counted for each saved answer it cited."""
        if not answer_id or value not in (1, -1):
            return
        column = uses_table.c.helpful if value > 0 else uses_table.c.not_helpful
        with self._db.begin() as connection:
            connection.execute(uses_table.update().where(uses_table.c.answer_id == answer_id)
                               .values({column: column + 1}))

    # -- reading ----------------------------------------------------------
    def get(self, saved_id: str) -> SavedAnswer | None:
        if not saved_id:
            return None
        rows = self._select(saved_table.c.id == saved_id)
        return rows[0] if rows else None

    def by_message(self, channel: str, message_ts: str) -> SavedAnswer | None:
        """The saved answer made from this Slack message (any status), or None."""
        rows = self._select(saved_table.c.channel == channel, saved_table.c.message_ts == message_ts)
        return rows[0] if rows else None

    def list(self, statuses: Sequence[str] = (ACTIVE,), *, limit: int | None = None) -> list[SavedAnswer]:
        """Saved answers with these statuses, newest first."""
        return self._select(saved_table.c.status.in_(list(statuses)), limit=limit)

    def count(self, status: str = ACTIVE) -> int:
        with self._db.begin() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(saved_table)
                                          .where(saved_table.c.status == status)).scalar_one())

    def source_names(self) -> list[str]:
        """Every source name a saved answer ever had (removed ones too: their chunks must go)."""
        with self._db.begin() as connection:
            rows = connection.execute(sa.select(saved_table.c.source_name).distinct()).all()
        return sorted(row[0] for row in rows)

    def usage(self, saved_ids: Sequence[str], *, questions: int = 3) -> dict[str, Usage]:
        """Per saved answer: the bot answers that cited it, their 👍/👎 and the latest `questions` asked."""
        if not saved_ids:
            return {}
        ids = list(saved_ids)
        with self._db.begin() as connection:
            rows = connection.execute(
                sa.select(uses_table.c.saved_id, sa.func.count(), sa.func.sum(uses_table.c.helpful),
                          sa.func.sum(uses_table.c.not_helpful))
                .where(uses_table.c.saved_id.in_(ids)).group_by(uses_table.c.saved_id)
            ).all()
            recent: dict[str, list[str]] = {}
            for saved_id, question in connection.execute(
                    sa.select(uses_table.c.saved_id, uses_table.c.question).where(uses_table.c.saved_id.in_(ids))
                    .order_by(uses_table.c.created_at.desc(), uses_table.c.id.desc())):
                kept = recent.setdefault(saved_id, [])
                if question and len(kept) < questions:
                    kept.append(question)
        return {row[0]: Usage(int(row[1]), int(row[2] or 0), int(row[3] or 0), tuple(recent.get(row[0], ())))
                for row in rows}

    def _select(self, *where, limit: int | None = None) -> list[SavedAnswer]:
        query = sa.select(saved_table).where(*where).order_by(saved_table.c.saved_at.desc())
        if limit:
            query = query.limit(limit)
        with self._db.begin() as connection:
            rows = connection.execute(query).mappings().all()
        return [_answer(row) for row in rows]


def _answer(row) -> SavedAnswer:
    return SavedAnswer(**{name: row[name] for name in _COLUMNS})


def _values(answer: SavedAnswer) -> dict:
    return {name: getattr(answer, name) for name in _COLUMNS}
