"""The state package on SQLite and on a real PostgreSQL (pgserver): migrations, records
written by one process and read by another, votes, privacy, retention."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.settings import BotSettings
from bot.state import Database, Records, StateError, database_url, format_feedback_report
from knowledge.types import Answer, Citation

ROOT = Path(__file__).resolve().parents[1]

# The schema bot/records.py created before the state package (copied verbatim).
OLD_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS answers_question ON answers (channel, question_ts);
"""


def _answer(question, status="answered"):
    return Answer(question=question, text=f"answer to {question} [1]", status=status,
                  citations=[Citation(1, "FAQ", ("Install",), "https://x/faq#install", "faq.md")],
                  timings_ms={"total": 12.5})


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(state_url):
    db = Database(url=database_url(state_url, default_path="unused"))
    yield db
    db.close()


def _old_file(path: Path, *, without_question_ts: bool = False) -> None:
    connection = sqlite3.connect(path)
    schema = OLD_SCHEMA
    if without_question_ts:  # a file from before that column
        schema = schema.replace(",\n    question_ts TEXT NOT NULL DEFAULT ''", "").replace(
            "CREATE INDEX IF NOT EXISTS answers_question ON answers (channel, question_ts);", "")
    connection.executescript(schema)
    columns = "id, created_at, user_id, channel, thread_ts, message_ts, question, answer, status, sources, timings"
    sources = json.dumps([{"n": 1, "title": "FAQ", "url": "https://x/faq"}])
    connection.execute(f"INSERT INTO answers ({columns}) VALUES ('a1', 100.0, 'U1', 'C1', '1.1', '1.2',"
                       f" 'how to install?', 'like this', 'answered', ?, '{{}}')", (sources,))
    connection.execute(f"INSERT INTO answers ({columns}) VALUES ('a2', 200.0, 'U2', 'C1', '2.1', '',"
                       " 'what is a quota?', 'not in the docs', 'abstained', '[]', '{}')")
    # Before votes were unique: U1 clicked 👍 then 👎 on a1; the later click is the vote.
    connection.executemany("INSERT INTO feedback (answer_id, created_at, user_id, value) VALUES (?, ?, ?, ?)",
                           [("a1", 101.0, "U1", 1), ("a1", 102.0, "U1", -1), ("a1", 103.0, "U2", 1)])
    connection.execute("INSERT INTO handoffs (answer_id, created_at, channel, thread_ts, user_id, contacts)"
                       " VALUES ('a2', 201.0, 'C1', '2.1', 'U2', '[\"U9\"]')")
    connection.commit()
    connection.close()


@pytest.mark.parametrize("without_question_ts", [False, True])
def test_an_old_sqlite_file_migrates_in_place_with_its_data(tmp_path, without_question_ts, caplog):
    path = tmp_path / "feedback.sqlite"
    _old_file(path, without_question_ts=without_question_ts)
    settings = BotSettings(_env_file=None, feedback_db=path)  # the deprecated setting still works
    with caplog.at_level(logging.INFO, logger="bot.state.database"):
        db = Database.from_settings(settings)
    assert f"migrated from 0001_baseline to {_head_revision()}" in caplog.text  # one line says what changed
    try:
        records = Records(database=db)
        assert records.totals() == {"answers": 2, "abstained": 1, "helpful": 1, "not_helpful": 1}
        row = records.answer("a1")
        assert (row.question, row.answer_text, row.thread_ts, row.sources[0]["url"]) == (
            "how to install?", "like this", "1.1", "https://x/faq")
        assert records.handed_off("C1", "2.1") and records.answered_thread("C1", "1.1")
        # The migrated schema is the new one: a second vote replaces the first.
        assert records.record_feedback("a1", user_id="U2", value=-1)
        assert records.totals()["not_helpful"] == 2 and records.totals()["helpful"] == 0
        with db.begin() as connection:
            assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == _head_revision()
    finally:
        db.close()
    again = Database.from_settings(settings)  # opening again changes nothing
    try:
        assert Records(database=again).totals()["answers"] == 2
    finally:
        again.close()


def _head_revision() -> str:
    """The newest migration (each revision added later moves it)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.state.database import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_processes_opening_a_new_sqlite_file_at_once_all_open_it(tmp_path):
    """`serve` and `supportbot index` (or two replicas on one machine) starting together on a new
    file: converting it to WAL made the other's open fail with "database is locked" (8 of 40 rounds)."""
    import threading

    from bot.state.refresh_runs import RefreshRuns

    failures = []
    for round_ in range(40):
        url = f"sqlite:///{tmp_path / f'state{round_}.sqlite'}"
        barrier = threading.Barrier(2)

        def open_and_write(name: str, url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                database = Database(url=url)
                try:
                    runs = RefreshRuns(database=database, holder=name, lease_seconds=5)
                    for _ in range(5):
                        runs.renew()
                finally:
                    database.close()
            except StateError as error:
                failures.append(str(error))

        threads = [threading.Thread(target=open_and_write, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []


def test_the_migrations_build_exactly_the_tables(database):
    """tables.py (what the queries use) and migrations/ (what a database gets) are one schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from bot.state.tables import metadata

    with database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata) == []


def test_database_url_forms(tmp_path):
    assert database_url("", default_path=tmp_path / "f.sqlite").render_as_string() == f"sqlite:///{tmp_path}/f.sqlite"
    assert database_url("data/x.sqlite", default_path="u").database == "data/x.sqlite"
    socket = database_url("postgresql://bot:s3cret@/support?host=/var/run/postgresql", default_path="u")
    assert socket.drivername == "postgresql+psycopg" and socket.query["host"] == "/var/run/postgresql"
    assert database_url("postgres://bot@db:5432/support", default_path="u").drivername == "postgresql+psycopg"
    with pytest.raises(StateError, match="mysql is not supported"):
        database_url("mysql://x@y/z", default_path="u")
    for typo in ("postgresql//bot@127.0.0.1/sb", "postgres:/db/x", "postgresql:bot@db/x", "bot:s3cret@db/support"):
        with pytest.raises(StateError, match="looks like a URL but is not one") as refused:
            database_url(typo, default_path="u")
        assert "s3cret" not in str(refused.value)
    assert database_url("/var/lib/bot/state.sqlite", default_path="u").database == "/var/lib/bot/state.sqlite"
    settings = BotSettings(_env_file=None, data_dir=tmp_path / "d")
    assert settings.database_target() == f"sqlite:///{tmp_path}/d/feedback.sqlite"  # follows DATA_DIR
    settings = BotSettings(_env_file=None, data_dir=tmp_path / "d", feedback_db=tmp_path / "old.sqlite",
                           database_url="postgresql://bot:pw@db/support")
    assert settings.database_target().startswith("postgresql+psycopg://bot:pw@db/support")
    assert "pw" not in repr(settings)


def test_an_unreachable_database_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError, match="cannot open the state database"):
        Records(path=blocker / "feedback.sqlite")
    with pytest.raises(StateError, match=r"cannot open the state database .*\*\*\*") as error:
        Database(url=database_url("postgresql://bot:topsecret@127.0.0.1:9/x?connect_timeout=2", default_path="u"))
    assert "topsecret" not in str(error.value)


def test_records_round_trip_votes_privacy_and_retention(database):
    records = Records(database=database)
    public = records.record_answer(_answer("how to install?"), user_id="U1", channel="C1", thread_ts="1.1",
                                   conversation="channel")
    gap = records.record_answer(_answer("what is a quota?", "abstained"), user_id="U2", channel="C1",
                                thread_ts="2.2", conversation="channel")
    secret = records.record_answer(_answer("is project-zebra cancelled?", "abstained"), user_id="U3",
                                   channel="D1", thread_ts="3.3", conversation="im")
    assert records.record_feedback(public, user_id="U1", value=1)
    assert records.record_feedback(public, user_id="U1", value=-1)  # a second click changes the vote
    assert records.record_feedback(secret, user_id="U3", value=-1)
    assert not records.record_feedback("no-such-id", user_id="U2", value=1)
    with pytest.raises(ValueError):
        records.record_feedback(public, user_id="U1", value=5)
    assert records.totals() == {"answers": 3, "abstained": 2, "helpful": 0, "not_helpful": 2}

    insights = records.insights(since=0)
    assert insights.gaps == [("what is a quota?", 1)] and insights.private_gaps == 1
    assert (insights.questions, insights.abstained, insights.not_helpful) == (3, 2, 2)
    report = format_feedback_report(records, limit=10)
    assert "project-zebra" not in report and report.count("(asked in a private conversation)") == 2
    assert records.answer(secret).question == "is project-zebra cancelled?"  # its own buttons still work

    # Hand-offs: one per thread; a private answer reserves its hand-off before posting.
    assert records.record_handoff(gap, channel="C1", thread_ts="2.2", user_id="U2", contacts=("U9",))
    assert not records.record_handoff(gap, channel="C1", thread_ts="2.2", user_id="U2", contacts=("U9",))
    assert records.claim_handoff(secret, channel="D1", user_id="U3", contacts=())
    assert not records.claim_handoff(secret, channel="D1", user_id="U3", contacts=())
    records.finish_handoff(secret, channel="D1", thread_ts="9.9")
    assert records.handed_off("D1", "9.9") and records.answer_handed_off(secret)
    # Share: one click wins, a failed post can be retried.
    assert records.claim_share(secret) is False  # it has a thread already
    private = records.record_answer(_answer("via /ask"), user_id="U4", channel="C2", conversation="channel")
    assert records.claim_share(private) and not records.claim_share(private)
    records.unclaim_share(private)
    assert records.claim_share(private)
    records.move_answer(private, channel="C2", thread_ts="5.5", message_ts="5.5")
    assert records.answered_thread("C2", "5.5")

    # Uses of saved answers, as an older version recorded them: with the private question.
    from bot.state.saved_answers import SavedAnswers
    saved = SavedAnswers(database=database)
    saved.record_use(["S1"], public, question="how to install?")
    saved.record_use(["S1"], secret, question="is project-zebra cancelled?")

    # Retention: everything older than the cut-off goes, with its votes, hand-offs and uses.
    with database.begin() as connection:
        connection.execute(sa.text("UPDATE answers SET created_at = 1 WHERE id IN (:a, :b)"), {"a": gap, "b": public})
    assert records.purge(older_than=time.time() - 86400, private_text_before=time.time() + 1) == 2
    assert records.totals() == {"answers": 2, "abstained": 1, "helpful": 0, "not_helpful": 1}
    assert not records.handed_off("C1", "2.2")
    assert records.answer(secret).question == ""  # private text blanked, the row counted still
    assert saved.usage(["S1"])["S1"].answers == 1 and saved.usage(["S1"])["S1"].questions == ()


def test_records_written_by_one_process_are_read_by_another(postgres_url):
    writer = """
import sys
from bot.state import Database, Records, database_url
from knowledge.types import Answer
db = Database(url=database_url(sys.argv[1], default_path="unused"))
records = Records(database=db)
answer_id = records.record_answer(Answer(question="q?", text="a", status="abstained", citations=[]),
                                  user_id="U1", channel="C1", thread_ts="1.1", question_ts="1.1", conversation="channel")
records.record_feedback(answer_id, user_id="U1", value=1)
records.record_handoff(answer_id, channel="C1", thread_ts="1.1", user_id="U1", contacts=("U9",))
print(answer_id)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", writer, postgres_url], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    answer_id = done.stdout.strip()
    db = Database(url=database_url(postgres_url, default_path="unused"))
    try:
        records = Records(database=db)
        assert records.answer(answer_id).question == "q?"
        assert records.answered_question("C1", "1.1") and records.answered_thread("C1", "1.1")
        assert records.handed_off("C1", "1.1") and records.totals()["helpful"] == 1
    finally:
        db.close()


def test_conversation_kinds_and_the_home_tab_count_private_questions_without_quoting():
    from bot.home import insight_blocks
    from bot.listeners.questions import question_from
    from bot.state import Insights

    def kind(event, **options):
        return question_from({"ts": "1.1", "text": "q?", "user": "U1", **event}, bot_user_id="UBOT",
                             **options).conversation

    assert kind({"channel": "D1", "channel_type": "im"}) == "im"
    assert kind({"channel": "C1", "channel_type": "group"}) == "private"
    assert kind({"channel": "G1"}) == "private"  # app_mention: no channel_type, the id says it
    assert kind({"channel": "C1"}) == "private"  # a C id may be private too: fail closed
    assert kind({"channel": "C1"}, lookup=lambda channel: "channel") == "channel"  # Slack says it is public
    assert kind({"channel": "D1"}, assistant=True) == "assistant"
    insights = Insights(questions=3, answered=1, abstained=2, handed_off=0, helpful=0, not_helpful=0,
                        gaps=[("what is a quota?", 1)], private_gaps=2)
    text = json.dumps(insight_blocks(insights, {}))
    assert "what is a quota?" in text and "and 2 asked in private conversations (not shown)" in text
