"""Saved answers: replies people gave in the bot's threads, kept to be cited next time.

Two tables: `saved_answers` (one row per saved Slack reply, whatever its status) and
`saved_answer_uses` (which bot answers cited one, and the 👍/👎 those answers got).
A row's status is "active" (indexed and cited), "pending" (waiting for an admin's
review), "rejected" or "removed"; rows are never deleted, so a removed answer's
private source name is still known when its chunks are deleted from the index.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

from sqlalchemy import (
    Boolean, Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine, func, select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from knowledge.errors import KnowledgeError

ACTIVE = "active"
PENDING = "pending"
REJECTED = "rejected"
REMOVED = "removed"
STATUSES = (ACTIVE, PENDING, REJECTED, REMOVED)

metadata = MetaData()

saved_answers_table = Table(
    "saved_answers",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("status", String(16), nullable=False, index=True),
    Column("channel", String(32), nullable=False),
    Column("channel_name", String(256), nullable=False, default=""),
    Column("private", Boolean, nullable=False, default=False),
    Column("thread_ts", String(32), nullable=False),
    Column("message_ts", String(32), nullable=False),
    Column("question", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("answered_by", String(32), nullable=False, default=""),
    Column("answered_by_name", String(256), nullable=False, default=""),
    Column("answered_at", Float, nullable=False),
    Column("saved_by", String(32), nullable=False, default=""),
    Column("saved_at", Float, nullable=False),
    Column("via", String(16), nullable=False, default="reaction"),
    Column("permalink", Text, nullable=False, default=""),
    Column("source_name", String(256), nullable=False),
    Column("confirm_ts", String(32), nullable=False, default=""),
    Column("reviewed_by", String(32), nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("channel", "message_ts", name="saved_answers_message"),
)

saved_answer_uses_table = Table(
    "saved_answer_uses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saved_id", String(16), nullable=False, index=True),
    Column("answer_id", String(32), nullable=False, index=True),  # bot.records answer id
    Column("question", Text, nullable=False, default=""),  # the question that answer was for
    Column("created_at", Float, nullable=False),
    Column("helpful", Integer, nullable=False, default=0),
    Column("not_helpful", Integer, nullable=False, default=0),
)


class SavedAnswersError(KnowledgeError):
    """The saved-answers database cannot be opened or written."""


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
    """The saved answers in a SQL database (SQLite or PostgreSQL through SQLAlchemy); thread-safe."""

    def __init__(self, *, engine: Engine, create: bool = True) -> None:
        self._engine = engine
        self._lock = threading.Lock()  # SQLite allows one writer; serialising is cheap at this volume
        if create:
            try:
                metadata.create_all(engine)
            except SQLAlchemyError as error:
                raise SavedAnswersError(f"cannot open the saved-answers database: {_reason(error)}") from error

    @classmethod
    def from_url(cls, url: str) -> SavedAnswers:
        """Open (and create) the tables at a SQLAlchemy URL; raises SavedAnswersError."""
        try:
            engine = create_engine(url)
        except (SQLAlchemyError, ValueError) as error:
            raise SavedAnswersError(f"cannot open the saved-answers database: {_reason(error)}") from error
        return cls(engine=engine)

    def close(self) -> None:
        self._engine.dispose()

    # -- writing ----------------------------------------------------------
    def add(self, answer: SavedAnswer) -> SavedAnswer | None:
        """Store a new saved answer; None when that Slack message is already saved (active or pending).

        A message saved before and then removed, rejected or undone is saved again under its old id.
        """
        now = time.time()
        with self._lock, self._write() as connection:
            existing = connection.execute(
                select(saved_answers_table).where(saved_answers_table.c.channel == answer.channel,
                                                  saved_answers_table.c.message_ts == answer.message_ts)
            ).mappings().first()
            if existing is not None:
                if existing["status"] in (ACTIVE, PENDING):
                    return None
                answer = replace(answer, id=existing["id"], confirm_ts="", reviewed_by="", updated_at=now)
                connection.execute(saved_answers_table.update().where(saved_answers_table.c.id == answer.id)
                                   .values(**_values(answer)))
                return answer
            answer = replace(answer, updated_at=now)
            try:
                connection.execute(saved_answers_table.insert().values(**_values(answer)))
            except IntegrityError:
                return None  # saved by a concurrent event a moment ago
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

    def set_confirm_ts(self, saved_id: str, confirm_ts: str) -> None:
        self._update(saved_id, confirm_ts=confirm_ts)

    def _update(self, saved_id: str, **values) -> SavedAnswer | None:
        if not saved_id:
            return None
        with self._lock, self._write() as connection:
            result = connection.execute(saved_answers_table.update()
                                        .where(saved_answers_table.c.id == saved_id)
                                        .values(updated_at=time.time(), **values))
            if not result.rowcount:
                return None
        return self.get(saved_id)

    def record_use(self, saved_ids: Iterable[str], answer_id: str, *, question: str = "") -> None:
        """A bot answer (bot.records id) to `question` cited these saved answers."""
        rows = [{"saved_id": s, "answer_id": answer_id, "created_at": time.time(), "question": question}
                for s in dict.fromkeys(saved_ids) if s]
        if not rows or not answer_id:
            return
        with self._lock, self._write() as connection:
            connection.execute(saved_answer_uses_table.insert(), rows)

    def record_feedback(self, answer_id: str, value: int) -> None:
        """👍 (+1) or 👎 (-1) on a bot answer: counted for each saved answer it cited."""
        if not answer_id or value not in (1, -1):
            return
        column = "helpful" if value > 0 else "not_helpful"
        table = saved_answer_uses_table
        with self._lock, self._write() as connection:
            connection.execute(table.update().where(table.c.answer_id == answer_id)
                               .values(**{column: getattr(table.c, column) + 1}))

    # -- reading ----------------------------------------------------------
    def get(self, saved_id: str) -> SavedAnswer | None:
        if not saved_id:
            return None
        rows = self._select(saved_answers_table.c.id == saved_id)
        return rows[0] if rows else None

    def by_message(self, channel: str, message_ts: str) -> SavedAnswer | None:
        """The saved answer made from this Slack message (any status), or None."""
        rows = self._select(saved_answers_table.c.channel == channel, saved_answers_table.c.message_ts == message_ts)
        return rows[0] if rows else None

    def list(self, statuses: Sequence[str] = (ACTIVE,), *, limit: int | None = None) -> list[SavedAnswer]:
        """Saved answers with these statuses, newest first."""
        return self._select(saved_answers_table.c.status.in_(list(statuses)), limit=limit)

    def count(self, status: str = ACTIVE) -> int:
        with self._read() as connection:
            return int(connection.execute(select(func.count()).select_from(saved_answers_table)
                                          .where(saved_answers_table.c.status == status)).scalar_one())

    def source_names(self) -> list[str]:
        """Every source name a saved answer ever had (removed ones too: their chunks must go)."""
        with self._read() as connection:
            rows = connection.execute(select(saved_answers_table.c.source_name).distinct()).all()
        return sorted(row[0] for row in rows)

    def private_sources(self) -> dict[str, str]:
        """Private channel id -> its answers' source name, for channels with answers in use."""
        table = saved_answers_table
        with self._read() as connection:
            rows = connection.execute(select(table.c.channel, table.c.source_name).distinct()
                                      .where(table.c.private.is_(True), table.c.status == ACTIVE)).all()
        return {row[0]: row[1] for row in rows}

    def usage(self, saved_ids: Sequence[str], *, questions: int = 3) -> dict[str, Usage]:
        """Per saved answer: the bot answers that cited it, their 👍/👎 and the latest `questions` asked."""
        if not saved_ids:
            return {}
        table = saved_answer_uses_table
        with self._read() as connection:
            rows = connection.execute(
                select(table.c.saved_id, func.count(), func.sum(table.c.helpful), func.sum(table.c.not_helpful))
                .where(table.c.saved_id.in_(list(saved_ids))).group_by(table.c.saved_id)
            ).all()
            recent: dict[str, list[str]] = {}
            for saved_id, question in connection.execute(
                    select(table.c.saved_id, table.c.question).where(table.c.saved_id.in_(list(saved_ids)))
                    .order_by(table.c.created_at.desc(), table.c.id.desc())):
                kept = recent.setdefault(saved_id, [])
                if question and len(kept) < questions:
                    kept.append(question)
        return {row[0]: Usage(int(row[1]), int(row[2] or 0), int(row[3] or 0), tuple(recent.get(row[0], ())))
                for row in rows}

    def _select(self, *where, limit: int | None = None) -> list[SavedAnswer]:
        query = select(saved_answers_table).where(*where).order_by(saved_answers_table.c.saved_at.desc())
        if limit:
            query = query.limit(limit)
        with self._read() as connection:
            rows = connection.execute(query).mappings().all()
        return [SavedAnswer(**{name: row[name] for name in _COLUMNS}) for row in rows]

    # -- connections ------------------------------------------------------
    def _write(self):
        return _Guard(self._engine.begin)

    def _read(self):
        return _Guard(self._engine.connect)


class _Guard:
    """A connection context whose SQL errors become SavedAnswersError (one line, no traceback in Slack)."""

    def __init__(self, opener) -> None:
        self._opener = opener
        self._context = None

    def __enter__(self):
        try:
            self._context = self._opener()
            return self._context.__enter__()
        except SQLAlchemyError as error:
            raise SavedAnswersError(f"saved-answers database error: {_reason(error)}") from error

    def __exit__(self, kind, error, trace):
        try:
            handled = self._context.__exit__(kind, error, trace)
        except SQLAlchemyError as failure:
            raise SavedAnswersError(f"saved-answers database error: {_reason(failure)}") from failure
        if isinstance(error, SQLAlchemyError) and not isinstance(error, IntegrityError):
            raise SavedAnswersError(f"saved-answers database error: {_reason(error)}") from error
        return handled


def _values(answer: SavedAnswer) -> dict:
    return {name: getattr(answer, name) for name in _COLUMNS}


def _reason(error: Exception) -> str:
    return str(getattr(error, "orig", None) or error).splitlines()[0]
