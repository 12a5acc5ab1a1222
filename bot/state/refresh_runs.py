"""Index refreshes across replicas: at most one runs at a time, a scheduled tick runs once,
and every replica can say what runs and what ran last.

The "refresh" lease row says who runs one (taken by an atomic UPDATE … WHERE free or
lapsed); the run itself is a `refresh_runs` row whose lease the runner renews, so a
replica that died mid-run leaves a row that reads as failed, not as running forever.
The "schedule" lease row's `tick` is the last scheduled fire time that was run.

A request made while a refresh runs is a `queued` row, so it outlives the replica that took
it: the next run to start on any replica serves every queued row (a full rebuild when one of
them asked for it) and marks them `joined` to itself, which is how their requesters, on
whichever replica, learn which run to wait for. A run whose replica died queues them again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from bot.state.database import HolderState
from bot.state.tables import leases, refresh_runs

REFRESH_LEASE = "refresh"
SCHEDULE_LEASE = "schedule"
DIED = "the replica running it stopped before it finished"
QUEUED = "queued"
JOINED = "joined"


@dataclass(frozen=True)
class RunRow:
    id: int
    by: str
    rebuild: bool
    started_at: float
    finished_at: float | None
    state: str  # running, ok, failed, skipped; queued, joined (a request waiting for a run)
    report: dict | None
    error: str
    skipped: str
    joined_run: int | None = None  # the run that serves a joined request
    holder: str = ""  # the replica (host:pid:random) that runs it or queued it


@dataclass(frozen=True)
class Started:
    """A run this replica may start now; it also serves the requests that were queued."""

    id: int
    rebuild: bool  # true when it, or one of the queued requests, asked for a full rebuild
    serves: tuple[str, ...] = ()  # who queued the requests it serves


class RefreshRuns(HolderState):
    """Refresh runs of one replica (`holder`); raises StateError when the database fails."""

    def start(self, *, by: str, rebuild: bool) -> Started | RunRow:
        """The new run when no replica runs one (it takes over the queued requests), else the running run."""
        now = self._clock()
        with self.db.begin() as connection:
            self._bury_dead(connection, now)
            self.db.insert_ignore(connection, leases, {"name": REFRESH_LEASE})
            won = connection.execute(leases.update().where(
                leases.c.name == REFRESH_LEASE, sa.or_(leases.c.holder == "", leases.c.until < now),
            ).values(holder=self.holder, until=now + self.lease_seconds)).rowcount == 1
            if not won:
                running = self._running(connection, now)
                if running is not None:
                    return running
                # The lease is held but its run row is not visible yet: report the holder's start.
                holder = connection.execute(sa.select(leases.c.holder).where(
                    leases.c.name == REFRESH_LEASE)).scalar() or ""
                return RunRow(0, "another replica", False, now, None, "running", None, "", "", holder=holder)
            run_id = connection.execute(refresh_runs.insert().values(
                requested_by=by, rebuild=rebuild, holder=self.holder, started_at=now,
                lease_until=now + self.lease_seconds, state="running",
            ).returning(refresh_runs.c.id)).scalar_one()
            # Every request queued until now rides on this run; RETURNING reads each row as updated,
            # so a request that joined a queued row a moment ago is counted with what it asked for.
            waiting = connection.execute(refresh_runs.update().where(refresh_runs.c.state == QUEUED).values(
                state=JOINED, joined_run=run_id, finished_at=now,
            ).returning(refresh_runs.c.id, refresh_runs.c.requested_by, refresh_runs.c.rebuild)).all()
            waiting.sort(key=lambda row: row.id)
            if not rebuild and any(row.rebuild for row in waiting):
                rebuild = True
                connection.execute(refresh_runs.update().where(refresh_runs.c.id == run_id).values(rebuild=True))
            return Started(id=run_id, rebuild=rebuild, serves=tuple(row.requested_by for row in waiting))

    def queue(self, *, by: str, rebuild: bool) -> int:
        """Queue a request for the next run; it joins one already queued. Returns its row's id."""
        now = self._clock()
        with self.db.begin() as connection:
            waiting = connection.execute(sa.select(refresh_runs.c.id).where(refresh_runs.c.state == QUEUED)
                                         .order_by(refresh_runs.c.id).limit(1)).scalar()
            if waiting is not None:
                if rebuild:
                    connection.execute(refresh_runs.update().where(
                        refresh_runs.c.id == waiting, refresh_runs.c.state == QUEUED).values(rebuild=True))
                # Still queued after the update (not just taken by a start): the request rides on it.
                if connection.execute(sa.select(refresh_runs.c.state).where(
                        refresh_runs.c.id == waiting)).scalar() == QUEUED:
                    return waiting
            return connection.execute(refresh_runs.insert().values(
                requested_by=by, rebuild=rebuild, holder=self.holder, started_at=now, lease_until=0.0,
                state=QUEUED,
            ).returning(refresh_runs.c.id)).scalar_one()

    def pending(self) -> RunRow | None:
        """The oldest request waiting for a run, if any."""
        with self.db.begin() as connection:
            self._bury_dead(connection, self._clock())
            row = connection.execute(sa.select(refresh_runs).where(refresh_runs.c.state == QUEUED)
                                     .order_by(refresh_runs.c.id).limit(1)).first()
        return _run(row)

    def get(self, run_id: int) -> RunRow | None:
        """One run or request by id (None once purged)."""
        with self.db.begin() as connection:
            self._bury_dead(connection, self._clock())
            row = connection.execute(sa.select(refresh_runs).where(refresh_runs.c.id == run_id)).first()
        return _run(row)

    def served_by(self, request_id: int) -> RunRow | None:
        """The run that took a queued request, once it has ended (None while the request waits or
        its run goes on; a run whose replica died queues its requests again). One transaction."""
        with self.db.begin() as connection:
            self._bury_dead(connection, self._clock())
            run_id = connection.execute(sa.select(refresh_runs.c.joined_run).where(
                refresh_runs.c.id == request_id, refresh_runs.c.state == JOINED)).scalar()
            if run_id is None:
                return None
            row = connection.execute(sa.select(refresh_runs).where(
                refresh_runs.c.id == run_id, refresh_runs.c.state != "running")).first()
        return _run(row)

    def finish(self, run_id: int, *, state: str, report: dict | None = None, error: str = "",
               skipped: str = "") -> None:
        """Record how the run ended and free the lease for the next one."""
        with self.db.begin() as connection:
            connection.execute(refresh_runs.update().where(refresh_runs.c.id == run_id).values(
                state=state, finished_at=self._clock(), report=json.dumps(report) if report is not None else None,
                error=error, skipped=skipped,
            ))
            connection.execute(leases.update().where(
                leases.c.name == REFRESH_LEASE, leases.c.holder == self.holder,
            ).values(holder="", until=0))

    def renew(self) -> int:
        """Extend this replica's running run (and its lease); how many rows."""
        until = self._clock() + self.lease_seconds
        with self.db.begin() as connection:
            count = connection.execute(refresh_runs.update().where(
                refresh_runs.c.holder == self.holder, refresh_runs.c.state == "running",
            ).values(lease_until=until)).rowcount
            if count:
                connection.execute(leases.update().where(
                    leases.c.name == REFRESH_LEASE, leases.c.holder == self.holder,
                ).values(until=until))
        return count

    def claim_tick(self, tick: float) -> bool:
        """True for the one replica that runs the scheduled refresh of this fire time."""
        with self.db.begin() as connection:
            self.db.insert_ignore(connection, leases, {"name": SCHEDULE_LEASE})
            return connection.execute(leases.update().where(
                leases.c.name == SCHEDULE_LEASE, leases.c.tick < tick,
            ).values(tick=tick, holder=self.holder)).rowcount == 1

    def running(self) -> RunRow | None:
        with self.db.begin() as connection:
            return self._running(connection, self._clock())

    def last(self) -> RunRow | None:
        """The latest finished run that did something (ok or failed)."""
        with self.db.begin() as connection:
            self._bury_dead(connection, self._clock())
            row = connection.execute(
                sa.select(refresh_runs).where(refresh_runs.c.state.in_(("ok", "failed")))
                .order_by(refresh_runs.c.finished_at.desc(), refresh_runs.c.id.desc()).limit(1)
            ).first()
        return _run(row)

    def purge(self, *, older_than: float) -> int:
        with self.db.begin() as connection:
            return connection.execute(refresh_runs.delete().where(
                refresh_runs.c.started_at < older_than, refresh_runs.c.state.not_in(("running", QUEUED)),
            )).rowcount

    def _running(self, connection: sa.Connection, now: float) -> RunRow | None:
        row = connection.execute(
            sa.select(refresh_runs).where(refresh_runs.c.state == "running", refresh_runs.c.lease_until >= now)
            .order_by(refresh_runs.c.started_at.desc()).limit(1)
        ).first()
        return _run(row)

    @staticmethod
    def _bury_dead(connection: sa.Connection, now: float) -> None:
        """Runs whose replica stopped renewing read as failed; the requests they served are queued again."""
        dead = connection.execute(refresh_runs.update().where(
            refresh_runs.c.state == "running", refresh_runs.c.lease_until < now,
        ).values(state="failed", error=DIED, finished_at=refresh_runs.c.lease_until)
            .returning(refresh_runs.c.id)).scalars().all()
        if dead:
            connection.execute(refresh_runs.update().where(
                refresh_runs.c.state == JOINED, refresh_runs.c.joined_run.in_(dead),
            ).values(state=QUEUED, joined_run=None, finished_at=None))


def _run(row) -> RunRow | None:
    if row is None:
        return None
    return RunRow(
        id=row.id, by=row.requested_by, rebuild=bool(row.rebuild), started_at=row.started_at,
        finished_at=row.finished_at, state=row.state, report=json.loads(row.report) if row.report else None,
        error=row.error, skipped=row.skipped, joined_run=row.joined_run, holder=row.holder,
    )
