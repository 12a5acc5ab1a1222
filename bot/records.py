"""Answer and feedback records in SQLite: what was asked, what was answered, 👍/👎.

One connection guarded by a lock: sqlite3 objects must not be used by two
threads at once, and the worker pool writes from several threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from knowledge.errors import KnowledgeError
from knowledge.types import Answer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    user_id TEXT, channel TEXT, thread_ts TEXT, message_ts TEXT,
    question TEXT NOT NULL, answer TEXT NOT NULL, status TEXT NOT NULL,
    sources TEXT NOT NULL, timings TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
    question_ts TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS answers_thread ON answers (channel, thread_ts);
CREATE INDEX IF NOT EXISTS answers_status ON answers (status, created_at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL REFERENCES answers (id),
    created_at REAL NOT NULL,
    user_id TEXT, value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback (created_at);
CREATE TABLE IF NOT EXISTS handoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL REFERENCES answers (id),
    created_at REAL NOT NULL,
    channel TEXT NOT NULL, thread_ts TEXT NOT NULL,
    user_id TEXT, contacts TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS handoffs_thread ON handoffs (channel, thread_ts);
"""


class RecordsError(KnowledgeError):
    """The feedback database cannot be opened or written."""


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


class Records:
    """The answers/feedback database; raises RecordsError if it cannot be opened."""

    def __init__(self, *, path: Path | str) -> None:
        self._lock = threading.Lock()
        try:
            if str(path) != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
            if "question_ts" not in columns:  # a database from before the column existed
                self._db.execute("ALTER TABLE answers ADD COLUMN question_ts TEXT NOT NULL DEFAULT ''")
            self._db.execute("CREATE INDEX IF NOT EXISTS answers_question ON answers (channel, question_ts)")
        except (OSError, sqlite3.Error) as error:
            raise RecordsError(f"cannot open the feedback database {path}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise RecordsError(f"feedback database error: {error}") from error

    def _exists(self, where: str, *params: str) -> bool:
        """Whether `SELECT 1 FROM <where>` finds a row; False at once when a value is empty."""
        return all(params) and bool(self._execute(f"SELECT 1 FROM {where} LIMIT 1", params))

    def record_answer(
        self, answer: Answer, *, user_id: str = "", channel: str = "", thread_ts: str = "",
        question_ts: str = "",
    ) -> str:
        """Store one answer; returns its id (what the feedback buttons carry)."""
        record_id = uuid.uuid4().hex[:16]
        sources = json.dumps([c.to_dict() for c in answer.citations], ensure_ascii=False)
        self._execute(
            "INSERT INTO answers (id, created_at, user_id, channel, thread_ts, message_ts, question,"
            " answer, status, sources, timings, note, question_ts)"
            " VALUES (?, ?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?)",
            (
                record_id, time.time(), user_id, channel, thread_ts, answer.question,
                answer.text, answer.status, sources, json.dumps(answer.timings_ms), answer.note,
                question_ts,
            ),
        )
        return record_id

    def set_message_ts(self, record_id: str, message_ts: str) -> None:
        self._execute("UPDATE answers SET message_ts = ? WHERE id = ?", (message_ts, record_id))

    def record_feedback(self, answer_id: str, *, user_id: str, value: int) -> bool:
        """Store a 👍 (+1) or 👎 (-1); False when the answer id is unknown."""
        if value not in (1, -1):
            raise ValueError("feedback value must be +1 or -1")
        if not self._exists("answers WHERE id = ?", answer_id):
            return False
        self._execute(
            "INSERT INTO feedback (answer_id, created_at, user_id, value) VALUES (?, ?, ?, ?)",
            (answer_id, time.time(), user_id, value),
        )
        return True

    def answered_question(self, channel: str, question_ts: str) -> bool:
        """Whether the message posted at `question_ts` was already answered (kept across restarts)."""
        return self._exists("answers WHERE channel = ? AND question_ts = ?", channel, question_ts)

    def answered_thread(self, channel: str, thread_ts: str) -> bool:
        """Whether the bot answered in this thread (so follow-ups need no mention)."""
        return self._exists("answers WHERE channel = ? AND thread_ts = ?", channel, thread_ts)

    def answer(self, record_id: str) -> AnswerRow | None:
        """One stored answer with its text and note, or None for an unknown id."""
        rows = self._execute(
            "SELECT id, created_at, question, status, user_id, channel, thread_ts, sources, answer, note"
            " FROM answers WHERE id = ?",
            (record_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return AnswerRow(*row[:7], json.loads(row[7]), answer_text=row[8], note=row[9])

    def move_answer(self, record_id: str, *, channel: str, thread_ts: str, message_ts: str) -> None:
        """A private answer was shared: it now lives in this channel thread (follow-ups work there)."""
        self._execute(
            "UPDATE answers SET channel = ?, thread_ts = ?, message_ts = ? WHERE id = ?",
            (channel, thread_ts, message_ts, record_id),
        )

    def record_handoff(self, answer_id: str, *, channel: str, thread_ts: str, user_id: str,
                       contacts: tuple[str, ...]) -> bool:
        """Store that a thread was handed to humans; False when it already was (or the answer is unknown)."""
        if not self._exists("answers WHERE id = ?", answer_id):
            return False
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO handoffs (answer_id, created_at, channel, thread_ts, user_id, contacts)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (answer_id, time.time(), channel, thread_ts, user_id, json.dumps(list(contacts))),
                )
            except sqlite3.IntegrityError:
                return False  # the unique (channel, thread_ts) index: one hand-off per thread
            except sqlite3.Error as error:
                raise RecordsError(f"feedback database error: {error}") from error
        return True

    def answer_handed_off(self, answer_id: str) -> bool:
        """Whether a hand-off was already made from this answer (wherever it was posted)."""
        return self._exists("handoffs WHERE answer_id = ?", answer_id)

    def handed_off(self, channel: str, thread_ts: str) -> bool:
        """Whether humans were asked to take over this thread (the bot then stays quiet there)."""
        return self._exists("handoffs WHERE channel = ? AND thread_ts = ?", channel, thread_ts)

    def insights(self, *, since: float, top: int = 5) -> Insights:
        """Counts since `since` (epoch seconds) and the most frequent unanswered questions."""
        questions, answered, abstained = self._execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'answered'), 0), COALESCE(SUM(status = 'abstained'), 0)"
            " FROM answers WHERE created_at >= ?",
            (since,),
        )[0]
        [(handed_off,)] = self._execute("SELECT COUNT(*) FROM handoffs WHERE created_at >= ?", (since,))
        up, down = self._execute(
            "SELECT COALESCE(SUM(value > 0), 0), COALESCE(SUM(value < 0), 0) FROM feedback WHERE created_at >= ?",
            (since,),
        )[0]
        # Coverage gaps: "not in the docs", or handed to a human; the same question counted once per ask.
        gaps = self._execute(
            "SELECT MIN(question), COUNT(*) AS times, MAX(created_at) AS latest FROM answers"
            " WHERE created_at >= ? AND (status = 'abstained' OR id IN (SELECT answer_id FROM handoffs))"
            " GROUP BY lower(trim(question)) ORDER BY times DESC, latest DESC LIMIT ?",
            (since, top),
        )
        return Insights(
            questions=questions, answered=answered, abstained=abstained, handed_off=handed_off,
            helpful=up, not_helpful=down, gaps=[(question, times) for question, times, _ in gaps],
        )

    def recent_feedback(self, limit: int = 20) -> list[FeedbackRow]:
        rows = self._execute(
            "SELECT f.created_at, f.value, f.user_id, a.question, a.answer, a.status, a.channel,"
            " a.thread_ts FROM feedback f JOIN answers a ON a.id = f.answer_id"
            " ORDER BY f.created_at DESC, f.id DESC LIMIT ?",
            (limit,),
        )
        return [FeedbackRow(*row) for row in rows]

    def abstained(self, limit: int = 20) -> list[AnswerRow]:
        """Recent questions answered "not in the docs" (status abstained): gaps in the docs."""
        return self._answers("WHERE status = 'abstained'", limit)

    def recent_answers(self, limit: int = 20) -> list[AnswerRow]:
        return self._answers("", limit)

    def _answers(self, where: str, limit: int) -> list[AnswerRow]:
        rows = self._execute(
            "SELECT id, created_at, question, status, user_id, channel, thread_ts, sources"
            f" FROM answers {where} ORDER BY created_at DESC LIMIT ?",
            (limit,),
        )
        return [AnswerRow(*row[:7], json.loads(row[7])) for row in rows]

    def totals(self) -> dict[str, int]:
        answers, abstained = self._execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'abstained'), 0) FROM answers"
        )[0]
        up, down = self._execute(
            "SELECT COALESCE(SUM(value > 0), 0), COALESCE(SUM(value < 0), 0) FROM feedback"
        )[0]
        return {"answers": answers, "abstained": abstained, "helpful": up, "not_helpful": down}


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
    feedback = records.recent_feedback(limit)
    lines += [
        f"  {_when(row.created_at)} UTC  {'+1' if row.value > 0 else '-1'}  [{row.status}]  {_short(row.question)}"
        for row in feedback
    ] or ["  (none)"]
    lines += ["", f"Questions answered \"not in the docs\" (latest {limit}):"]
    lines += [
        f"  {_when(row.created_at)} UTC  {_short(row.question)}" for row in records.abstained(limit)
    ] or ["  (none)"]
    return "\n".join(lines)
