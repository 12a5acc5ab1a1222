"""Keep the index fresh from inside the bot: a scheduled refresh and on-demand runs.

A Milvus Lite file can be open in one process only, so the refresh runs in the
serving process. One refresh at a time: the schedule and `/reindex` share one
claim here, and the indexer's own thread + file lock still guards against the CLI.
A request that finds a refresh running is queued to start when it ends (one
queued run per process: later requests join it); a scheduled tick that finds
one running is skipped.

With `runs` (bot.state.refresh_runs.RefreshRuns) the claim and the run history
live in the state database: across replicas at most one refresh runs, each
scheduled tick runs once (interval schedules are aligned to the epoch so all
replicas tick together), and every replica's status shows the same runs. A
queued request is a row there too: the next run to start on any replica serves
it, so it is not lost when the replica that took it stops (the sweeper of a
replica that is up starts it, `adopt_queued`), and its requester hears how the
run went whichever replica ran it.

REINDEX_SCHEDULE accepts:
  "0 3 * * *"              a 5-field crontab (minute hour day month weekday) in the
                           server's time zone; weekday 0 and 7 are Sunday, as in cron
  "every 6h", "6h", "30m"  an interval: a number and s / m / h / d (also "min", "hours", ...)
  "interval:3600"          an interval in seconds
  "never" / "off" / ""     no scheduled refresh (`/reindex` still works)
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.logging_setup import redact
from bot.mrkdwn import escape as _escape
from bot.state.refresh_runs import DIED, RunRow, Started
from knowledge.errors import KnowledgeError, RefreshInProgressError
from knowledge.types import RefreshReport

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = "0 3 * * *"  # daily at 03:00, when nobody asks questions
JOB_ID = "reindex"
SCHEDULE_BY = "the schedule"
# Seconds after the start at which a person gets a "still running" note (a
# response_url takes at most five messages, so keep this short).
DEFAULT_PROGRESS_AFTER = (60.0, 300.0)

Notify = Callable[[str], None]

_OFF = {"", "never", "off", "none", "disabled", "false", "0"}
_INTERVAL = re.compile(
    r"^(?:every\s+)?(\d+(?:\.\d+)?)\s*"
    r"(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days)$"
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_INTERVAL_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
TICK_TOLERANCE = 30.0  # seconds a replica's scheduler may fire late and still name the same tick
# A queued request looks for a free claim this often (another replica's run ends
# unseen here; this process's own run wakes it at once) and gives up after this long.
QUEUE_POLL_SECONDS = 2.0
QUEUE_WAIT_SECONDS = 6 * 3600.0
# A refresh in the foreground (the first index at `serve` start, `supportbot index`) that finds one
# running on another replica looks this often whether it has ended, says every WAIT_NOTE_SECONDS
# that it still waits, and gives up after LEASE_WAIT_SECONDS. A runner that died stops renewing its
# lease (CLAIM_LEASE_SECONDS), so a waiter takes over within that time after its death.
LEASE_POLL_SECONDS = 2.0
LEASE_WAIT_SECONDS = QUEUE_WAIT_SECONDS
WAIT_NOTE_SECONDS = 300.0
# After another replica's run ended well, how long its writes may take to show here (Milvus's
# default "Bounded" consistency lags up to 5 s) before this process builds the index itself.
SETTLE_SECONDS = 10.0


class ScheduleError(KnowledgeError):
    """REINDEX_SCHEDULE is not a crontab, an interval or "never"."""


class RefreshWaitError(KnowledgeError):
    """A foreground refresh waited LEASE_WAIT_SECONDS for one running on another replica, which still runs."""


def parse_schedule(value: str, *, timezone=None) -> BaseTrigger | None:
    """The APScheduler trigger for a REINDEX_SCHEDULE value, None for "never".

    Raises ScheduleError with the accepted forms when the value is none of them.
    """
    text = " ".join(value.strip().lower().split())
    if text in _OFF:
        return None
    seconds = _interval_seconds(text)
    if seconds is not None:
        if seconds <= 0:
            raise ScheduleError(f"REINDEX_SCHEDULE={value!r}: the interval must be positive")
        # Aligned to a fixed start, so every replica computes the same fire times (one run per tick).
        return IntervalTrigger(seconds=seconds, timezone=timezone, start_date=_INTERVAL_ANCHOR)
    fields = text.split(" ")
    try:
        if len(fields) != 5:
            raise ValueError(f"a crontab has 5 fields, this has {len(fields)}")
        minute, hour, day, month, weekday = fields
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month,
            day_of_week=_cron_weekdays(weekday), timezone=timezone,
        )
    except ValueError as error:
        raise ScheduleError(
            f"REINDEX_SCHEDULE={value!r} is not valid ({error}); use a crontab like '0 3 * * *', "
            "an interval like 'every 6h', '30m' or 'interval:3600', or 'never'"
        ) from None


def _interval_seconds(text: str) -> float | None:
    if text.startswith("interval:"):
        try:
            return float(text.removeprefix("interval:").strip())
        except ValueError:
            raise ScheduleError(f"REINDEX_SCHEDULE={text!r}: 'interval:' needs a number of seconds") from None
    match = _INTERVAL.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0]]


def _cron_weekdays(field_: str) -> str:
    """Cron weekday numbers (0 and 7 = Sunday) as names, which APScheduler 3.x reads unambiguously.

    APScheduler 3.x counts from Monday=0, so "0 3 * * 0" would run on Mondays;
    numbers, ranges and steps are expanded to day names, names pass through.
    """
    if field_ == "*":
        return field_
    days: list[str] = []
    for part in field_.split(","):
        match = re.fullmatch(r"(\*|\d+)(?:-(\d+))?(?:/(\d+))?", part)
        if match is None:  # names such as "mon-fri": APScheduler reads them as cron does
            days.append(part)
            continue
        first, last, step = match.groups()
        if first == "*":
            start, end = 0, 6
        else:
            start = int(first)
            end = int(last) if last is not None else (6 if step else start)
        if not 0 <= start <= 7 or not 0 <= end <= 7 or start > end or (step is not None and int(step) < 1):
            raise ValueError(f"weekday {part!r} is out of range 0-7")
        days.extend(_CRON_WEEKDAYS[day] for day in range(start, end + 1, int(step or 1)))
    return ",".join(dict.fromkeys(days))


@dataclass
class RunRecord:
    """One refresh: who started it, when, and what came of it."""

    by: str
    rebuild: bool
    started_at: float
    finished_at: float | None = None
    report: dict | None = None  # RefreshReport.to_dict() when it succeeded
    error: str = ""  # a one-line reason when it failed
    skipped: str = ""  # why nothing ran (another process held the refresh lock)
    run_id: int = 0  # its row in the state database's refresh runs (0: not recorded there)

    @property
    def ok(self) -> bool:
        return self.report is not None

    def to_dict(self) -> dict:
        return {
            "by": self.by, "rebuild": self.rebuild, "started_at": self.started_at,
            "finished_at": self.finished_at, "ok": self.ok, "report": self.report,
            "error": self.error, "skipped": self.skipped,
        }


@dataclass
class _Refusal:
    """Why no run may start now; `busy` when another refresh holds the claim (worth waiting for)."""

    message: str
    busy: bool = False


@dataclass
class _Queued:
    """A request waiting for the running refresh to end; later requests join it."""

    by: str
    rebuild: bool
    notifies: list[Notify]
    request_id: int = 0  # its row in the state database (0: kept in this process only)


@dataclass
class _State:
    running: RunRecord | None = None
    thread: threading.Thread | None = None
    last: RunRecord | None = None
    queued: _Queued | None = None
    closed: bool = False


class Refresher:
    """Runs index refreshes in this process: on REINDEX_SCHEDULE and on request.

    `kb` needs `refresh(rebuild=...) -> RefreshReport` and `status() -> dict`
    (knowledge.pipeline.KnowledgeBase). Raises ScheduleError for a bad schedule.
    """

    def __init__(
        self,
        *,
        kb,
        schedule: str = DEFAULT_SCHEDULE,
        metrics=None,
        clock: Callable[[], float] = time.time,
        timezone=None,
        misfire_grace_seconds: int = 3600,
        progress_after: tuple[float, ...] = DEFAULT_PROGRESS_AFTER,
        runs=None,
    ) -> None:
        self.kb = kb
        self.runs = runs  # bot.state.refresh_runs.RefreshRuns: one refresh across replicas
        self.schedule = schedule
        self.metrics = metrics
        self.clock = clock
        self.misfire_grace_seconds = misfire_grace_seconds
        self.progress_after = tuple(sorted(progress_after))
        self._trigger = parse_schedule(schedule, timezone=timezone)  # fail at start-up, not at 3 am
        self._timezone = timezone
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()
        self._state = _State()
        self._freed = threading.Event()  # set when this process's run ends or it shuts down

    # ---- schedule --------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler with its one job (nothing when the schedule is "never")."""
        if self._trigger is None:
            log.info("scheduled index refresh is off (REINDEX_SCHEDULE=%r)", self.schedule)
            return
        if self._scheduler is not None or self._state.closed:
            return
        options = {"timezone": self._timezone} if self._timezone is not None else {}
        scheduler = BackgroundScheduler(daemon=True, **options)
        scheduler.add_job(
            self._scheduled_run,
            self._trigger,
            id=JOB_ID,
            name="index refresh",
            coalesce=True,  # after a pause, several missed runs become one
            misfire_grace_time=self.misfire_grace_seconds,
            max_instances=1,  # never two scheduled runs at once
            replace_existing=True,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduled index refresh: %s, next at %s", self.schedule, _clock_text(self.next_run_at))

    @property
    def next_run_at(self) -> float | None:
        """When the scheduled refresh runs next (epoch seconds), None when not scheduled."""
        scheduler = self._scheduler
        job = scheduler.get_job(JOB_ID) if scheduler is not None else None
        when = getattr(job, "next_run_time", None)
        return when.timestamp() if when is not None else None

    def _scheduled_run(self) -> None:
        if self.runs is not None:
            tick = self._current_tick()
            try:
                won = tick is None or self.runs.claim_tick(tick)
            except Exception as error:  # noqa: BLE001 - the database is down: the next tick retries
                log.warning("scheduled refresh skipped: cannot reach the state database (%s)", one_line(error))
                return
            if not won:
                log.info("scheduled refresh of this tick runs on another replica")
                return
        record = self._claim(by=SCHEDULE_BY, rebuild=False)
        if isinstance(record, _Refusal):
            log.info("scheduled refresh skipped: %s", record.message)
            self._record_metric("busy")
            return
        self._run(record, notify=None)

    def _current_tick(self) -> float | None:
        """The fire time this scheduled run belongs to (the same on every replica)."""
        if self._trigger is None:
            return None
        interval = getattr(self._trigger, "interval", None)
        tolerance = min(TICK_TOLERANCE, interval.total_seconds() / 2) if interval else TICK_TOLERANCE
        now = datetime.fromtimestamp(self.clock(), tz=UTC) - timedelta(seconds=tolerance)
        fire = self._trigger.get_next_fire_time(None, now)
        return fire.timestamp() if fire is not None else None

    # ---- on request ------------------------------------------------------------------

    def request(self, rebuild: bool = False, notify: Notify | None = None, *, by: str = "",
                queue: bool = True) -> str:
        """Start a refresh in a background thread; returns at once with what happened.

        `notify` receives "still running" notes and the final summary (or a
        one-line failure). Never raises: when a refresh is running (here or on
        another replica) the request is queued to start when it ends (unless
        `queue` is False), and the answer says since when it runs.
        """
        by = by or "someone"
        record = self._claim(by=by, rebuild=rebuild)
        if isinstance(record, _Refusal):
            if not record.busy or not queue:
                self._record_metric("busy")
                return record.message
            return self._queue(by=by, rebuild=rebuild, notify=notify, busy=record.message)
        self._start_thread(record, notify=notify)
        return f"Refresh started ({_kind(record.rebuild)}). I'll post the summary here when it's done."

    def _start_thread(self, record: RunRecord, *, notify: Notify | None) -> None:
        thread = threading.Thread(
            target=self._run, args=(record,), kwargs={"notify": notify}, name="index-refresh", daemon=True
        )
        with self._lock:
            self._state.thread = thread
        thread.start()

    def run_now(self, *, rebuild: bool = False, by: str = "") -> RunRecord | str:
        """Refresh in the calling thread; the finished RunRecord, or why none ran."""
        record = self._claim(by=by or "someone", rebuild=rebuild)
        if isinstance(record, _Refusal):
            self._record_metric("busy")
            return record.message
        return self._run(record, notify=None)

    def _claim(self, *, by: str, rebuild: bool) -> RunRecord | _Refusal:
        with self._lock:
            return self._claim_locked(by=by, rebuild=rebuild)

    def _claim_locked(self, *, by: str, rebuild: bool) -> RunRecord | _Refusal:
        """A new running RunRecord, or the friendly reason none may start (self._lock held)."""
        if self._state.closed:
            return _Refusal(SHUTTING_DOWN)
        running = self._state.running
        if running is not None:
            return _Refusal(busy_message(running.started_at, running.by), busy=True)
        record = RunRecord(by=by, rebuild=rebuild, started_at=self.clock())
        if self.runs is not None:
            try:
                started = self.runs.start(by=by, rebuild=rebuild)
            except Exception as error:  # noqa: BLE001 - no shared claim, no run (another replica may hold it)
                return _Refusal(f"Cannot start a refresh: the state database is unavailable "
                                f"({_shown(one_line(error))}).")
            if isinstance(started, RunRow):
                return _Refusal(busy_message(started.started_at, started.by), busy=True)
            record.run_id, record.rebuild = started.id, started.rebuild
            if started.serves:
                log.info("index refresh by %s also serves the request(s) queued by %s", by, ", ".join(started.serves))
        self._state.running = record
        return record

    # ---- queued requests ---------------------------------------------------------------

    def _queue(self, *, by: str, rebuild: bool, notify: Notify | None, busy: str) -> str:
        """Queue a request behind the running refresh (or join the one already queued)."""
        with self._lock:
            if self._state.closed:
                return SHUTTING_DOWN
            # A request that joins one queued a moment ago may land in a new row when a run has
            # just taken the old one: it then runs after that run and hears that run's summary.
            request_id = self._queue_shared(by=by, rebuild=rebuild)
            queued = self._state.queued
            if queued is not None:
                queued.rebuild = queued.rebuild or rebuild  # one run that does what each asked
                if notify is not None:
                    queued.notifies.append(notify)
                self._record_metric("queued")
                return (f"{busy} A request by {queued.by} is already queued to follow it; yours joins it, "
                        f"as one {_kind(queued.rebuild)}. I'll post the summary here.")
            queued = self._state.queued = _Queued(by=by, rebuild=rebuild, notifies=[notify] if notify else [],
                                                  request_id=request_id)
        self._record_metric("queued")
        threading.Thread(target=self._run_when_free, args=(queued,), name="index-refresh-queued",
                         daemon=True).start()
        log.info("index refresh by %s queued behind the running one", by)
        return f"{busy} Your {_kind(rebuild)} starts as soon as it ends; I'll post the summary here."

    def _queue_shared(self, *, by: str, rebuild: bool) -> int:
        """The request's row in the state database (0 without one, or when it is down: then
        the request waits in this process only, as it would without a database)."""
        if self.runs is None:
            return 0
        try:
            return self.runs.queue(by=by, rebuild=rebuild)
        except Exception as error:  # noqa: BLE001 - still queued here; only a restart would lose it
            log.warning("could not record the queued refresh in the state database: %s", one_line(error))
            return 0

    def _run_when_free(self, queued: _Queued) -> None:
        deadline = time.monotonic() + QUEUE_WAIT_SECONDS
        while True:
            with self._lock:
                # Served by a run that started meanwhile (a scheduled one, another replica's) and
                # has ended: report it and start none. While that run goes on, claims are refused.
                served = self._served_by(queued.request_id)
                outcome = None if served is not None else self._claim_locked(by=queued.by, rebuild=queued.rebuild)
                # Busy, or the state database down for a moment: wait on, until the bot shuts down.
                done = (served is not None or isinstance(outcome, RunRecord) or self._state.closed
                        or time.monotonic() > deadline)
                if done:
                    self._state.queued = None  # later requests start or queue anew
                    if isinstance(outcome, RunRecord):
                        self._state.thread = threading.current_thread()
                notifies = list(queued.notifies)
            if done:
                break
            self._freed.wait(QUEUE_POLL_SECONDS)
            self._freed.clear()

        def notify_all(text: str) -> None:
            for notify in notifies:
                _safe_notify(notify, text)

        if isinstance(outcome, RunRecord):
            log.info("queued index refresh by %s starts", queued.by)
            self._run(outcome, notify=notify_all)
            return
        if served is not None:
            log.info("queued index refresh by %s was served by refresh run %d", queued.by, served.id)
            notify_all(_outcome_text(served))
            return
        if queued.request_id:  # its row outlives this wait: whichever replica is free runs it
            message = STILL_QUEUED.format(why="The bot is shutting down" if self._state.closed
                                          else "I stopped waiting for the running refresh")
        elif self._state.closed:
            message = SHUTTING_DOWN
        else:
            message = f"{outcome.message} I gave up waiting for it; please ask again later."
        log.info("queued index refresh by %s did not run here: %s", queued.by, message)
        notify_all(message)

    def _served_by(self, request_id: int) -> RunRow | None:
        """The run that took the queued request, once it has ended (None while it runs or none has
        taken it; a run whose replica died puts its requests back in the queue)."""
        if not request_id or self.runs is None:
            return None
        try:
            return self.runs.served_by(request_id)
        except Exception as error:  # noqa: BLE001 - the database is down: ask again at the next poll
            log.warning("cannot read the queued refresh request: %s", one_line(error))
            return None

    def adopt_queued(self) -> None:
        """Start a request queued in the state database when no replica runs a refresh, for
        instance because the replica that queued it stopped (the sweeper calls this). Never raises."""
        if self.runs is None:
            return
        with self._lock:
            if self._state.closed or self._state.running is not None or self._state.queued is not None:
                return  # this replica's own run or waiting request takes it
        try:
            pending = self.runs.pending()
        except Exception as error:  # noqa: BLE001 - the next sweep asks again
            log.warning("cannot read queued refresh requests: %s", one_line(error))
            return
        if pending is None:
            return
        record = self._claim(by=pending.by, rebuild=pending.rebuild)
        if isinstance(record, _Refusal):
            return  # a refresh runs (it or the next one serves the request) or the bot shuts down
        log.info("index refresh queued by %s starts here", pending.by)
        self._start_thread(record, notify=None)

    def _run(self, record: RunRecord, *, notify: Notify | None) -> RunRecord:
        done = threading.Event()
        notes = threading.Lock()  # a "still running" note never follows the summary
        if notify is not None and self.progress_after:
            threading.Thread(
                target=self._progress_notes, args=(record, notify, done, notes), name="refresh-progress",
                daemon=True,
            ).start()
        started = time.perf_counter()
        message = ""
        try:
            report = self.kb.refresh(rebuild=record.rebuild)
            record.report = report.to_dict()
            message = summary(record.report)
            log.info("index refresh by %s done: %s", record.by, record.report)
            self._record_metric("ok", chunks=record.report.get("chunks"))
        except RefreshInProgressError as error:
            # Another process (the CLI) holds the refresh lock: nothing was done here.
            record.skipped = busy_message(error.started_at, "another process")
            message = record.skipped + " Nothing was changed."
            log.info("index refresh by %s skipped: %s", record.by, record.skipped)
            self._record_metric("busy")
        except Exception as error:  # noqa: BLE001 - any failure is recorded, reported, survived
            seconds = time.perf_counter() - started
            record.error = one_line(error)
            message = (
                f"Index refresh failed after {seconds:.1f} s: {_shown(record.error)} "
                "The index keeps serving what it had; the next refresh retries."
            )
            # A KnowledgeError is an expected failure (bad source, Milvus down): no traceback.
            log.error("index refresh by %s failed: %s", record.by, record.error,
                      exc_info=not isinstance(error, KnowledgeError))
            self._record_metric("failed")
        finally:
            with notes:
                done.set()
            record.finished_at = self.clock()
            if self.runs is not None and record.run_id:
                _record_end(self.runs, record.run_id, report=record.report, error=record.error,
                            skipped=record.skipped, state="skipped" if record.skipped else "ok" if record.ok else "failed")
            with self._lock:
                self._state.running = None
                self._state.thread = None
                if not record.skipped:
                    self._state.last = record
            self._freed.set()  # a queued request may start now
        if notify is not None:
            _safe_notify(notify, message)
        return record

    def _progress_notes(
        self, record: RunRecord, notify: Notify, done: threading.Event, notes: threading.Lock
    ) -> None:
        began = time.monotonic()
        kind = "Rebuilding" if record.rebuild else "Refreshing"
        for after in self.progress_after:
            if done.wait(max(0.0, after - (time.monotonic() - began))):
                return
            with notes:
                if done.is_set():
                    return
                _safe_notify(notify, f"{kind} the index… still running ({_duration(time.monotonic() - began)} so far).")

    def _record_metric(self, result: str, *, chunks: int | None = None) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.record_refresh(result, chunks=chunks)
        except Exception:  # noqa: BLE001 - metrics must never break a refresh
            log.exception("recording the refresh metric failed")

    # ---- status ----------------------------------------------------------------------

    def status(self) -> dict:
        """Last run (time, counts or error), the running one, the next scheduled run, the index."""
        with self._lock:
            running, last, queued = self._state.running, self._state.last, self._state.queued
        queued_by, queued_rebuild = (queued.by, queued.rebuild) if queued else ("", False)
        if self.runs is not None:
            try:  # what any replica runs or ran, not only this one
                shared_running, shared_last = self.runs.running(), self.runs.last()
                shared_queued = self.runs.pending()
                if queued is None or queued.request_id:  # the database says whether it still waits
                    queued_by, queued_rebuild = (shared_queued.by, shared_queued.rebuild) if shared_queued else ("", False)
                running = running or (shared_running and RunRecord(
                    by=shared_running.by, rebuild=shared_running.rebuild, started_at=shared_running.started_at))
                if shared_last is not None and (last is None or (shared_last.finished_at or 0) > (last.finished_at or 0)):
                    last = RunRecord(by=shared_last.by, rebuild=shared_last.rebuild, started_at=shared_last.started_at,
                                     finished_at=shared_last.finished_at, report=shared_last.report,
                                     error=shared_last.error, skipped=shared_last.skipped, run_id=shared_last.id)
            except Exception as error:  # noqa: BLE001 - status answers from this replica's memory then
                log.warning("refresh runs unavailable: %s", one_line(error))
        result = {
            "schedule": self.schedule,
            "scheduled": self._trigger is not None,
            "next_run_at": self.next_run_at,
            "running": running is not None,
            "running_since": running.started_at if running else None,
            "running_by": running.by if running else "",
            "running_rebuild": running.rebuild if running else False,
            "queued_by": queued_by,  # a request waiting for the running one (any replica)
            "queued_rebuild": queued_rebuild,
            "last_run": last.to_dict() if last else None,
            "chunks": None,
            "collection": "",
            "sources": [],
            "index_last_refresh": None,  # the knowledge base's own last report (e.g. the start-up index)
            "embedding_model": "",
            "index_error": "",
        }
        try:
            index = self.kb.status()
        except Exception as error:  # noqa: BLE001 - a status page must answer even when Milvus does not
            result["index_error"] = one_line(error)
            return result
        result["chunks"] = index.get("chunks")
        result["collection"] = index.get("collection", "")
        result["sources"] = list(index.get("sources") or [])
        result["index_last_refresh"] = index.get("last_refresh")
        result["embedding_model"] = index.get("embedding_model", "")
        return result

    def format_status(self) -> str:
        """The status as Slack mrkdwn lines."""
        return format_status(self.status())

    # ---- shutdown --------------------------------------------------------------------

    def shutdown(self, *, timeout: float = 0.0) -> None:
        """Stop the schedule and refuse new runs; wait up to `timeout` s for a running one."""
        with self._lock:
            self._state.closed = True
            thread = self._state.thread
            scheduler, self._scheduler = self._scheduler, None
        self._freed.set()  # a queued request hears that it will not run
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if thread is not None and timeout > 0:
            thread.join(timeout)


# ---- in the foreground, across replicas ---------------------------------------------------


def refresh_under_lease(kb, runs, *, by: str, rebuild: bool = False, progress: bool = False,
                        needed: Callable[[], bool] | None = None, purpose: str = "") -> RefreshReport | None:
    """Refresh `kb` in this thread as the one holder of the replicas' refresh lease (`runs`,
    bot.state.refresh_runs.RefreshRuns), renewing it meanwhile, and record the run; the report.

    When another process runs a refresh, wait for it to end (saying whose it is), then refresh
    here, unless `needed()` (asked once it has ended) says its run did what this one was for:
    then return None. A runner that dies stops renewing its lease, so a waiter takes over once
    it lapses. Raises RefreshWaitError after LEASE_WAIT_SECONDS of waiting, StateError when the
    state database fails, and what kb.refresh raises (the run is recorded as failed first).
    """
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    ended: RunRow | None = None  # the other process's run this one waited for, once it ended
    noted: tuple[int, str] | None = None
    while True:
        if noted is not None and needed is not None and not _still_needed(needed, ended):
            log.info("The refresh on another replica did what this one was for: none here.")
            return None
        started = runs.start(by=by, rebuild=rebuild)
        if isinstance(started, Started):
            if ended is not None and ended.state != "ok":
                how = "stopped before it finished" if ended.error == DIED else f"ended {ended.state}"
                log.info("The index refresh by %s on %s %s: refreshing here.", ended.by,
                         ended.holder or "another replica", how)
            return _refresh_holding(kb, runs, started, by=by, progress=progress)
        if noted != (started.id, started.holder):
            noted = (started.id, started.holder)
            log.info("Waiting for the index refresh by %s on %s (running since %s) to end%s; if it stops, "
                     "this process takes over within %.0f s.", started.by, started.holder or "another replica",
                     _clock_text(started.started_at), f" {purpose}" if purpose else "", runs.lease_seconds)
        _wait_while_running(runs, started, deadline=deadline)
        ended = runs.get(started.id) if started.id else None


def _wait_while_running(runs, run: RunRow, *, deadline: float) -> None:
    """Until `run`, another process's, is no longer running (ended, or its lease lapsed)."""
    began = noted = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise RefreshWaitError(
                f"Gave up after {_duration(now - began)} waiting for the index refresh by {run.by} on "
                f"{run.holder or 'another replica'} (running since {_clock_text(run.started_at)}), which still runs; "
                "start again once it has ended.")
        time.sleep(min(LEASE_POLL_SECONDS, max(0.0, deadline - now)))
        current = runs.running()
        if current is None or current.id != run.id:
            return
        if time.monotonic() - noted >= WAIT_NOTE_SECONDS:
            noted = time.monotonic()
            log.info("Still waiting for the index refresh by %s on %s (%s so far).", run.by,
                     run.holder or "another replica", _duration(noted - began))


def _still_needed(needed: Callable[[], bool], ended: RunRow | None) -> bool:
    """Whether this process must still refresh after another's run ended: at once when that run
    failed, else once its writes have had SETTLE_SECONDS to show and still do not."""
    if not needed():
        return False
    if ended is None or ended.state != "ok":
        return True
    settle = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < settle:
        time.sleep(min(LEASE_POLL_SECONDS, SETTLE_SECONDS))
        if not needed():
            return False
    log.warning("The index refresh by %s on %s ended well, but the index here still needs one (another "
                "MILVUS_URI than that replica's?): refreshing here.", ended.by, ended.holder or "another replica")
    return True


def _refresh_holding(kb, runs, started: Started, *, by: str, progress: bool):
    """kb.refresh while a thread renews the lease; the run's end is recorded and the lease freed."""
    if started.serves:
        log.info("index refresh by %s also serves the request(s) queued by %s", by, ", ".join(started.serves))
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(max(runs.lease_seconds / 3, 0.05)):
            try:
                runs.renew()
            except Exception as error:  # noqa: BLE001 - the next beat retries; the lease lapses if it cannot
                log.warning("could not renew the refresh lease: %s", one_line(error))

    keeper = threading.Thread(target=keep_lease, name="refresh-lease", daemon=True)
    keeper.start()
    state, report, error, skipped = "failed", None, "", ""
    try:
        result = kb.refresh(rebuild=started.rebuild, progress=progress)
        state, report = "ok", result.to_dict()
        return result
    except RefreshInProgressError as busy:  # another process of this DATA_DIR, without the lease
        state, skipped = "skipped", busy_message(busy.started_at, "another process")
        raise
    except BaseException as failure:  # Ctrl-C too: the lease is freed now, not when it lapses
        error = one_line(failure)
        raise
    finally:
        stop.set()
        keeper.join()
        _record_end(runs, started.id, state=state, report=report, error=error, skipped=skipped)


def _record_end(runs, run_id: int, *, state: str, report: dict | None, error: str, skipped: str) -> None:
    """The run's end in the shared run history (background and foreground refreshes alike);
    a failure is only logged: the run's lease lapses and it reads as stopped."""
    try:
        runs.finish(run_id, state=state, report=report, error=error, skipped=skipped)
    except Exception as failure:  # noqa: BLE001 - see above
        log.warning("could not record the end of refresh run %d: %s", run_id, one_line(failure))


# ---- texts ------------------------------------------------------------------------------

SHUTTING_DOWN = "The bot is shutting down; try again in a minute."
STILL_QUEUED = ("{why}, but your request is kept: a refresh on a replica that is up serves it, "
                "and `/reindex status` will show how it went.")


def _outcome_text(run: RunRow) -> str:
    """What to tell the people whose queued request a finished run (of any replica) served."""
    if run.state == "ok" and run.report is not None:
        return summary(run.report)
    if run.state == "skipped":
        return f"{run.skipped} Nothing was changed."
    return f"Index refresh failed: {_shown(run.error)} The index keeps serving what it had; the next refresh retries."


def _kind(rebuild: bool) -> str:
    return "full rebuild" if rebuild else "incremental refresh"


def busy_message(started_at: float, by: str) -> str:
    """"A refresh is already running since 14:03 UTC (started by …)."."""
    return f"A refresh is already running since {_clock_text(started_at)} (started by {by})."


def summary(report: dict) -> str:
    """One line for a finished refresh: what changed, how big the index is, how long it took."""
    kind = "rebuilt" if report.get("rebuilt") else "refreshed"
    return (
        f"Index {kind} in {report.get('seconds', 0.0):.1f} s: {report.get('added', 0)} added, "
        f"{report.get('updated', 0)} updated, {report.get('deleted', 0)} deleted, "
        f"{report.get('unchanged', 0)} unchanged ({report.get('chunks', 0)} chunks from "
        f"{report.get('documents', 0)} documents)."
    ) + _source_failures(report)


def _source_failures(report: dict) -> str:
    """Each source that failed, by name (its previous chunks keep serving), and partial problems."""
    parts = [f" Source `{name}` failed, its previous chunks kept: {_shown(reason)}."
             for name, reason in (report.get("failed") or {}).items()]
    for name, problems in (report.get("problems") or {}).items():
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        parts.append(f" Source `{name}`: {_shown(shown)}.")
    return "".join(parts)


def format_status(status: dict) -> str:
    """Slack mrkdwn for `Refresher.status()`."""
    lines = ["*Index status*"]
    if status.get("index_error"):
        lines.append(f"• Index: unavailable ({_shown(status['index_error'])})")
    else:
        where = f" in `{_escape(status['collection'])}`" if status.get("collection") else ""
        lines.append(f"• Chunks: {status.get('chunks') or 0:,}{where}")
    for source in status.get("sources") or []:
        glob = f" ({_escape(source.get('glob', ''))})" if source.get("glob") else ""
        lines.append(f"• Source `{_escape(source.get('name', ''))}`: {_shown(source.get('location', ''))}{glob}")
    if status.get("running"):
        kind = "rebuild" if status.get("running_rebuild") else "refresh"
        lines.append(
            f"• Running: a {kind} since {_clock_text(status['running_since'])} (started by {status['running_by']})"
        )
    if status.get("queued_by"):
        kind = "rebuild" if status.get("queued_rebuild") else "refresh"
        lines.append(f"• Queued: a {kind} requested by {status['queued_by']}, to start when the running one ends")
    if status.get("embedding_model"):
        lines.append(f"• Embedding model: `{_escape(status['embedding_model'])}`")
    last = status.get("last_run")
    if last is None and status.get("index_last_refresh"):
        lines.append("• Last refresh: at start-up. " + summary(status["index_last_refresh"]))
    elif last is None:
        lines.append("• Last refresh: none since the bot started")
    elif last["ok"]:
        lines.append(f"• Last refresh: {_clock_text(last['finished_at'], day=True)} by {last['by']}. "
                     + summary(last["report"]))
    else:
        lines.append(f"• Last refresh *failed* {_clock_text(last['finished_at'], day=True)} "
                     f"(started by {last['by']}): {_shown(last['error'])}")
    if status.get("scheduled"):
        lines.append(f"• Next scheduled refresh: {_clock_text(status.get('next_run_at'), day=True)} "
                     f"(`{_escape(status['schedule'])}`)")
    else:
        lines.append("• Scheduled refresh: off (REINDEX_SCHEDULE=never)")
    return "\n".join(lines)


def one_line(error: BaseException, *, limit: int = 300) -> str:
    """The error's message on one line, at most `limit` characters (its class name when empty)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(text: str) -> str:
    """Text for Slack: no credentials (URL user:password, token shapes), mrkdwn escaped."""
    text = re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", r"\1", str(text))
    return _escape(redact(text))


def _safe_notify(notify: Notify, message: str) -> None:
    try:
        notify(message)
    except Exception:  # noqa: BLE001 - a lost Slack message must not kill the refresh thread
        log.warning("could not deliver a refresh notice", exc_info=True)


def _clock_text(timestamp: float | None, *, day: bool = False) -> str:
    if timestamp is None:
        return "not scheduled"
    moment = datetime.fromtimestamp(timestamp).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M %Z" if day else "%H:%M %Z")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

