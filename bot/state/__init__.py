"""Everything the bot remembers, in one SQL database: the only package that speaks SQL.

`DATABASE_URL` picks the database: empty means a SQLite file under DATA_DIR (nothing to
start, one process), `postgresql://…` (as libpq writes it, Unix sockets via `?host=/dir`)
means PostgreSQL through psycopg 3, which several replicas share.

    db = Database.from_settings(settings)     # opens and migrates (Alembic) to the newest schema
    records = Records(database=db)            # answers, 👍/👎, hand-offs, shares, threads
    claims = Claims(database=db, holder=...)  # Slack events and questions: one replica wins each
    db.close()

Modules: `database` (engine, URL mapping, migrations at start), `tables` (the schema as
SQLAlchemy Core tables, what queries use), `records`, `claims` (durable event/question
claims with leases, and the event inbox), `limits` (per-person slots), `refresh_runs` (one refresh across
replicas, one run per scheduled tick) and `migrations/` (Alembic, shipped in the package
and run in code, from any working directory). Every query goes through
`Database.begin()` (one transaction; StateError on failure); `Database.insert_ignore` is
INSERT … ON CONFLICT DO NOTHING and `Database.lock` a per-key transaction lock, on both
dialects.

Adding a table (or a column):
  1. Describe it in `tables.py` (that is what your queries import).
  2. Add a revision in `migrations/versions/`: copy the newest file, name it
     `NNNN_what.py`, set `revision = "NNNN_what"` and `down_revision` to the newest
     revision's id, and write `upgrade()` with `op.create_table` / `op.add_column` /
     `op.create_index` (spell the columns out there: a revision is frozen history and must
     not import `tables.py`). Or generate it against a scratch database with
     `alembic -c bot/state/alembic.ini revision --autogenerate -m what` and review it.
  3. SQLite cannot ALTER constraints: use `with op.batch_alter_table(...)` for those, and
     unique *indexes* rather than constraints where you can.
  4. Everything runs at the next start (`Database(...)` upgrades to head, under a lock on
     PostgreSQL so replicas starting together migrate once). Test it on both dialects:
     tests/test_state.py has the SQLite and PostgreSQL (pgserver) fixtures.
"""

from bot.state.database import Database, StateError, database_url, replica_id
from bot.state.records import (
    AnswerRow,
    FeedbackRow,
    Insights,
    Records,
    RecordsError,
    format_feedback_report,
)

__all__ = [
    "AnswerRow",
    "Database",
    "FeedbackRow",
    "Insights",
    "Records",
    "RecordsError",
    "StateError",
    "database_url",
    "format_feedback_report",
    "replica_id",
]
