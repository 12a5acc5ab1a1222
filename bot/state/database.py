"""The SQL engine: DATABASE_URL -> SQLAlchemy engine, migrated to the newest schema at open.

SQLite (the embedded default) and PostgreSQL (psycopg 3) are supported. On SQLite every
transaction starts with BEGIN IMMEDIATE, so a read-then-write (a claim, a limit) is never
interleaved with another writer; on PostgreSQL the single-winner statements are atomic
UPDATE … WHERE … RETURNING / INSERT … ON CONFLICT, and per-key serialisation uses
transaction-scoped advisory locks.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from knowledge.errors import KnowledgeError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001_baseline"
MIGRATION_LOCK = 0x5375_7070  # the PostgreSQL advisory lock id replicas migrate under
SQLITE_BUSY_MS = 30_000


class StateError(KnowledgeError):
    """The state database cannot be opened, migrated or written (one line, no traceback)."""


def database_url(value: str, *, default_path: Path | str) -> URL:
    """The SQLAlchemy URL for a DATABASE_URL value; raises StateError for an unusable one.

    "" -> SQLite at `default_path`; a plain path -> that SQLite file; `postgresql://…`
    or `postgres://…` (libpq form, `?host=/dir` for a Unix socket) -> psycopg 3.
    """
    value = value.strip()
    if not value:
        return URL.create("sqlite", database=str(default_path))
    if not re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I):
        # "postgresql//bot@db/x", "postgres:/db": a mistyped URL must not become a SQLite file here.
        if re.match(r"^[a-z][a-z0-9+.-]+(?:://?|//)|^[a-z][a-z0-9+.-]+:", value, re.I) or "@" in value:
            raise StateError(f"DATABASE_URL looks like a URL but is not one: {_safe(value)} (expected "
                             "postgresql://user:password@host:5432/name, or the path of a SQLite file)")
        return URL.create("sqlite", database=value)  # a file path
    try:
        url = make_url(value)
    except ArgumentError:
        raise StateError(f"DATABASE_URL is not a database URL: {_safe(value)}") from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("psycopg", ""):
            raise StateError(f"DATABASE_URL: only the psycopg 3 driver is supported, not {url.drivername}")
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return url
    raise StateError(f"DATABASE_URL: {backend} is not supported; use sqlite or postgresql")


class Database:
    """An engine on DATABASE_URL, migrated to the newest schema; raises StateError.

    `migrate=False` opens without touching the schema (tests of the migrations).
    """

    def __init__(self, *, url: URL | str, migrate: bool = True, pool_size: int = 8) -> None:
        self.url = make_url(url) if isinstance(url, str) else url
        self.where = self.url.render_as_string(hide_password=True)
        try:
            if self.url.get_backend_name() == "sqlite":
                self.engine = self._sqlite_engine()
            else:
                self.engine = sa.create_engine(
                    self.url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size,
                    pool_recycle=1800,
                )
            if migrate:
                self.migrate()
        except StateError:
            raise
        except (SQLAlchemyError, OSError) as error:
            raise StateError(f"cannot open the state database {self.where}: {_one_line(error)}") from None

    @classmethod
    def from_settings(cls, settings) -> "Database":
        """DATABASE_URL, else the deprecated FEEDBACK_DB file, else DATA_DIR/feedback.sqlite."""
        return cls(url=settings.database_target(), pool_size=getattr(settings, "bot_workers", 4) + 4)

    def _sqlite_engine(self) -> Engine:
        path = self.url.database or ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(self.url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            # SQLAlchemy's documented recipe: the driver must not begin transactions itself,
            # so "begin" below can make each one BEGIN IMMEDIATE (one writer, no upgrade race).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            _journal_in_wal(cursor)
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    @property
    def dialect(self) -> str:
        """"sqlite" or "postgresql"."""
        return self.engine.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction (committed on exit, rolled back on error); raises StateError."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as error:
            raise StateError(f"state database error: {_one_line(error)}") from error

    def lock(self, connection: Connection, key: str) -> None:
        """Serialise transactions on `key` until this one ends (SQLite: already one writer)."""
        if self.dialect == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def insert_ignore(self, connection: Connection, table: sa.Table, values: dict) -> bool:
        """INSERT … ON CONFLICT DO NOTHING; True when the row was inserted (this caller won)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # RETURNING, because psycopg reports no rowcount for an INSERT … ON CONFLICT.
        key = list(table.primary_key.columns)[0]
        result = connection.execute(insert(table).values(**values).on_conflict_do_nothing().returning(key))
        return result.first() is not None

    def migrate(self) -> str:
        """Upgrade to the newest revision (adopting a database from before Alembic); returns it."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                # Replicas starting together: one migrates, the others wait and find it done.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            inspector = sa.inspect(connection)
            tables = set(inspector.get_table_names())
            if "answers" in tables and "alembic_version" not in tables:
                _adopt_pre_alembic(connection, inspector)
                command.stamp(config, BASELINE)
                log.info("state database %s: adopted the schema from before migrations", self.where)
            before = MigrationContext.configure(connection).get_current_revision() or ""
            command.upgrade(config, "head")
            revision = MigrationContext.configure(connection).get_current_revision() or ""
        # Alembic's own lines are kept for DEBUG (bot.logging_setup): say here what changed.
        if revision != before:
            log.info("state database %s migrated from %s to %s", self.where, before or "empty", revision)
        else:
            log.debug("state database %s at revision %s", self.where, revision)
        return revision

    def close(self) -> None:
        self.engine.dispose()


# The schema bot/records.py created before migrations existed (SQLite only): a file from
# then has some of it (older ones lack handoffs and question_ts), never alembic_version.
_PRE_ALEMBIC = (
    "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " answer_id TEXT NOT NULL REFERENCES answers (id), created_at REAL NOT NULL, user_id TEXT,"
    " value INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS feedback_time ON feedback (created_at)",
    "CREATE TABLE IF NOT EXISTS handoffs (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " answer_id TEXT NOT NULL REFERENCES answers (id), created_at REAL NOT NULL,"
    " channel TEXT NOT NULL, thread_ts TEXT NOT NULL, user_id TEXT, contacts TEXT NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS handoffs_thread ON handoffs (channel, thread_ts)",
    "CREATE INDEX IF NOT EXISTS answers_thread ON answers (channel, thread_ts)",
    "CREATE INDEX IF NOT EXISTS answers_status ON answers (status, created_at)",
)


def _journal_in_wal(cursor) -> None:
    """PRAGMA journal_mode=WAL. Two processes opening a new file at once: one converts it while
    the other's pragma fails with "database is locked" at once (SQLite calls no busy handler
    there), so that one tries again until the file is in WAL (then the pragma is a no-op)."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def replica_id() -> str:
    """This process among the replicas, as a holder of claims and leases: host, pid and a random
    part (pids repeat across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class HolderState:
    """State that one replica (`holder`) keeps in the database under leases of `lease_seconds`.

    The base of Claims, SharedLimits and RefreshRuns; `clock` is injectable for tests.
    """

    def __init__(
        self, *, database: Database, holder: str, lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = database
        self.holder = holder
        self.lease_seconds = lease_seconds
        self._clock = clock


def storable(text: str | None) -> str | None:
    """Text both databases accept: no lone surrogates (not UTF-8) and no NUL (PostgreSQL refuses it)."""
    if not text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _adopt_pre_alembic(connection: Connection, inspector) -> None:
    """Bring a pre-Alembic SQLite file to exactly the baseline, keeping every row."""
    if connection.dialect.name != "sqlite":
        raise StateError("the database has an answers table but no migration history: not ours?")
    for statement in _PRE_ALEMBIC:
        connection.exec_driver_sql(statement)
    columns = {column["name"] for column in inspector.get_columns("answers")}
    if "question_ts" not in columns:
        connection.exec_driver_sql("ALTER TABLE answers ADD COLUMN question_ts TEXT NOT NULL DEFAULT ''")
    connection.exec_driver_sql("CREATE INDEX IF NOT EXISTS answers_question ON answers (channel, question_ts)")


def _safe(value: str) -> str:
    """A URL without its password, for messages."""
    return re.sub(r"((?:://|^)[^:/@]*:)[^@]*@", r"\1***@", value)  # also a mistyped "bot:pw@db/x"


def _one_line(error: BaseException) -> str:
    text = getattr(error, "orig", None) or error
    return _safe(" ".join(str(text).split()))[:300] or type(error).__name__
