"""Refresher: the schedule, single flight, failures, status — over a real KnowledgeBase."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from datetime import datetime

import pytest

from bot.observability import Metrics
from bot.refresher import (
    SCHEDULE_BY,
    Refresher,
    ScheduleError,
    busy_message,
    format_status,
    parse_schedule,
)
from knowledge.errors import SourceError


class Observed:
    """A real KnowledgeBase whose refresh can be held at a gate and whose overlap is measured."""

    def __init__(self, kb, *, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.kb = kb
        self.delay = delay
        self.gate = gate
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def refresh(self, *, rebuild: bool = False, progress: bool = False):
        with self._lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(20), "test gate never opened"
            time.sleep(self.delay)
            return self.kb.refresh(rebuild=rebuild, progress=progress)
        finally:
            with self._lock:
                self.active -= 1

    def status(self) -> dict:
        return self.kb.status()


class Inbox:
    """A notify callable that keeps what it was told."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, text: str) -> None:
        with self._changed:
            self.messages.append(text)
            self._changed.notify_all()

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in self.messages if m.startswith(prefix)]
                if found:
                    return found[-1]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no message starting {prefix!r}; got {self.messages}"
                self._changed.wait(remaining)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def counter(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("supportbot_refresh_total", {"result": result}) or 0.0


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process_metrics=False)


@pytest.fixture
def refreshers():
    made: list[Refresher] = []

    def make(**kwargs) -> Refresher:
        refresher = Refresher(**kwargs)
        made.append(refresher)
        return refresher

    yield make
    for refresher in made:
        refresher.shutdown(timeout=20)


# ---- REINDEX_SCHEDULE -----------------------------------------------------------------

def test_schedule_forms() -> None:
    assert parse_schedule("never") is None
    assert parse_schedule("  OFF ") is None
    assert parse_schedule("") is None
    for value, seconds in [("every 6h", 21600), ("30m", 1800), ("every 1s", 1), ("interval:3600", 3600),
                           ("every 2 days", 172800), ("90 sec", 90)]:
        assert parse_schedule(value).interval.total_seconds() == seconds, value
    nightly = parse_schedule("0 3 * * *", timezone="UTC")
    after = datetime.fromisoformat("2026-11-25T12:00:00+00:00")
    assert nightly.get_next_fire_time(None, after).isoformat() == "2026-11-26T03:00:00+00:00"
    for bad in ("sometimes", "0 3 * *", "61 3 * * *", "interval:soon", "every 0m", "0 3 * * 9"):
        with pytest.raises(ScheduleError, match="REINDEX_SCHEDULE"):
            parse_schedule(bad)


def test_cron_weekdays_count_from_sunday_as_in_cron() -> None:
    wednesday = datetime.fromisoformat("2026-11-25T12:00:00+00:00")
    for value, expected in [("0 3 * * 0", "2026-11-29"), ("0 3 * * 7", "2026-11-29"),
                            ("0 3 * * 1", "2026-11-30"), ("0 3 * * 1-5", "2026-11-26"),
                            ("0 3 * * sun", "2026-11-29"), ("0 3 * * 6,0", "2026-11-28")]:
        fire = parse_schedule(value, timezone="UTC").get_next_fire_time(None, wednesday)
        assert fire.date().isoformat() == expected, value


def test_a_bad_schedule_fails_at_construction(make_kb) -> None:
    with pytest.raises(ScheduleError):
        Refresher(kb=make_kb(refresh=False), schedule="at dawn")


# ---- the scheduler --------------------------------------------------------------------

def test_scheduler_fires_on_its_interval_and_runs_never_overlap(make_kb, metrics, refreshers) -> None:
    kb = Observed(make_kb(), delay=1.5)  # each run outlasts the 1 s interval
    refresher = refreshers(kb=kb, schedule="every 1s", metrics=metrics)
    assert refresher.next_run_at is None
    refresher.start()
    assert refresher.next_run_at is not None and refresher.status()["scheduled"]
    wait_until(lambda: counter(metrics, "ok") >= 2, timeout=20)
    refresher.shutdown(timeout=10)
    assert kb.calls >= 2
    assert kb.max_active == 1
    last = refresher.status()["last_run"]
    assert last["ok"] and last["by"] == SCHEDULE_BY and last["report"]["chunks"] > 0
    assert metrics.registry.get_sample_value("supportbot_index_chunks") == last["report"]["chunks"]


def test_a_scheduled_run_brings_an_edited_document_into_the_index(make_kb, small_corpus, metrics, refreshers) -> None:
    kb = make_kb(sources=small_corpus)
    question = "How long does the quokkabyte retention window keep deleted segments?"
    assert "17 days" not in " ".join(c.chunk.text for c in kb.ask(question).candidates)
    faq = small_corpus / "faq" / "product_faq.md"
    faq.write_text(faq.read_text() + "\n\n## Quokkabyte retention\n\nThe quokkabyte retention window keeps "
                   "deleted segments for 17 days.\n")
    refresher = refreshers(kb=kb, schedule="every 1s", metrics=metrics)
    refresher.start()
    wait_until(lambda: counter(metrics, "ok") >= 1, timeout=20)
    refresher.shutdown(timeout=10)
    assert refresher.status()["last_run"]["report"]["added"] == 1
    assert "17 days" in " ".join(c.chunk.text for c in kb.ask(question).candidates)


def test_never_schedules_nothing_but_requests_still_work(make_kb, refreshers) -> None:
    kb = Observed(make_kb())
    refresher = refreshers(kb=kb, schedule="never")
    refresher.start()
    time.sleep(1.2)
    assert kb.calls == 0
    assert refresher.next_run_at is None
    assert refresher.status()["scheduled"] is False
    assert "Scheduled refresh: off" in refresher.format_status()
    inbox = Inbox()
    assert refresher.request(False, inbox).startswith("Refresh started")
    assert "0 added" in inbox.wait_for("Index refreshed in")
    assert kb.calls == 1


def test_a_scheduled_run_is_skipped_while_a_request_runs(make_kb, metrics, refreshers) -> None:
    gate = threading.Event()
    kb = Observed(make_kb(), gate=gate)
    refresher = refreshers(kb=kb, schedule="every 1s", metrics=metrics)
    inbox = Inbox()
    refresher.request(True, inbox, by="<@UADMIN>")
    assert kb.entered.wait(10)
    refresher.start()
    wait_until(lambda: counter(metrics, "busy") >= 1, timeout=10)
    assert kb.calls == 1  # the scheduler found the request running and did nothing
    gate.set()
    assert "Index rebuilt in" in inbox.wait_for("Index rebuilt")


# ---- single flight on request ---------------------------------------------------------

def test_requests_while_one_runs_are_told_since_when_and_run_once_after_it(make_kb, metrics, refreshers) -> None:
    started_at = datetime.fromisoformat("2026-11-25T14:03:00+00:00").timestamp()
    gate = threading.Event()
    kb = Observed(make_kb(), gate=gate)
    refresher = refreshers(kb=kb, schedule="never", metrics=metrics, clock=lambda: started_at)
    inboxes = {f"U{i}": Inbox() for i in range(6)}
    barrier = threading.Barrier(6)
    answers: dict[str, str] = {}

    def ask(user: str) -> None:
        barrier.wait()
        answers[user] = refresher.request(user == "U5", inboxes[user], by=f"<@{user}>")

    threads = [threading.Thread(target=ask, args=(user,)) for user in inboxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    [first] = [user for user, answer in answers.items() if answer.startswith("Refresh started")]
    queued = [user for user in answers if user != first]
    since = datetime.fromtimestamp(started_at).astimezone().strftime("%H:%M")
    for user in queued:
        assert answers[user].startswith(f"A refresh is already running since {since} ")
        assert f"(started by <@{first}>)" in answers[user] and "I'll post the summary here" in answers[user]
    assert refresher.run_now() == busy_message(started_at, f"<@{first}>")  # the scheduler's path is not queued
    status = refresher.status()
    assert status["running"] and status["running_since"] == started_at and status["queued_by"]
    text = refresher.format_status()
    assert "Running: a " in text and "Queued: a " in text and "to start when the running one ends" in text

    gate.set()
    assert inboxes[first].wait_for("Index ")
    # The five that waited share one run after it: a full rebuild when one of them asked for one.
    for user in queued:
        assert inboxes[user].wait_for("Index rebuilt in" if first != "U5" else "Index refreshed in")
    wait_until(lambda: not refresher.status()["running"])
    assert kb.calls == 2 and not refresher.status()["queued_by"]
    assert counter(metrics, "busy") == 1 and counter(metrics, "queued") == 5 and counter(metrics, "ok") == 2
    assert refresher.request(False, Inbox()).startswith("Refresh started")  # free again


def test_a_request_that_must_not_queue_is_told_since_when_and_dropped(make_kb, metrics, refreshers) -> None:
    """The start-up rebuild of a stale index: a refresh running then is most likely the same
    rebuild by a replica starting beside this one."""
    gate = threading.Event()
    kb = Observed(make_kb(), gate=gate)
    refresher = refreshers(kb=kb, schedule="never", metrics=metrics)
    refresher.request(True, Inbox(), by="<@U1>")
    assert kb.entered.wait(10)
    answer = refresher.request(rebuild=True, by="start-up", queue=False)
    assert answer.startswith("A refresh is already running since ") and answer.endswith("(started by <@U1>).")
    assert not refresher.status()["queued_by"] and counter(metrics, "busy") == 1
    gate.set()
    wait_until(lambda: not refresher.status()["running"])
    time.sleep(0.2)
    assert kb.calls == 1


def test_a_queued_request_hears_when_the_bot_shuts_down_instead(make_kb, refreshers) -> None:
    gate = threading.Event()
    kb = Observed(make_kb(), gate=gate)
    refresher = refreshers(kb=kb, schedule="never")
    first, second = Inbox(), Inbox()
    refresher.request(False, first, by="<@U1>")
    assert kb.entered.wait(10)
    assert "starts as soon as it ends" in refresher.request(True, second, by="<@U2>")
    refresher.shutdown()
    assert "shutting down" in second.wait_for("The bot is shutting down")
    gate.set()
    first.wait_for("Index refreshed in")
    assert kb.calls == 1


def test_a_request_queued_on_one_replica_runs_when_the_other_replicas_run_ends(
    make_kb, refreshers, tmp_path, monkeypatch
) -> None:
    from bot import refresher as module
    from bot.state import Database, database_url
    from bot.state.refresh_runs import RefreshRuns

    monkeypatch.setattr(module, "QUEUE_POLL_SECONDS", 0.05)  # the other replica's end is seen by polling
    url = database_url(f"sqlite:///{tmp_path / 'state.sqlite'}", default_path="unused")
    databases = [Database(url=url), Database(url=url)]
    try:
        gate = threading.Event()
        kb = Observed(make_kb(), gate=gate)
        a, b = (refreshers(kb=kb, schedule="never", runs=RefreshRuns(database=db, holder=holder))
                for db, holder in zip(databases, ("A", "B")))
        inbox_a, inbox_b = Inbox(), Inbox()
        assert a.request(False, inbox_a, by="<@U1>").startswith("Refresh started")
        assert kb.entered.wait(10)
        answer = b.request(True, inbox_b, by="<@U2>")
        assert answer.startswith("A refresh is already running since ") and "(started by <@U1>)" in answer
        time.sleep(0.3)
        assert kb.calls == 1  # B waits while A's run holds the shared claim
        gate.set()
        inbox_a.wait_for("Index refreshed in")
        inbox_b.wait_for("Index rebuilt in")
        assert kb.calls == 2 and kb.max_active == 1
        last = RefreshRuns(database=databases[0], holder="test").last()
        assert (last.by, last.rebuild, last.state) == ("<@U2>", True, "ok")
    finally:
        for db in databases:
            db.close()


@pytest.fixture
def two_replicas(make_kb, refreshers, tmp_path):
    """Two refreshers (A, B) sharing one state database, over one gated KnowledgeBase."""
    from bot.state import Database, database_url
    from bot.state.refresh_runs import RefreshRuns

    url = database_url(f"sqlite:///{tmp_path / 'state.sqlite'}", default_path="unused")
    databases = [Database(url=url), Database(url=url)]
    kb = Observed(make_kb(), gate=threading.Event())
    a, b = (refreshers(kb=kb, schedule="never", runs=RefreshRuns(database=db, holder=holder))
            for db, holder in zip(databases, ("A", "B")))
    yield kb, a, b, RefreshRuns(database=databases[0], holder="test")
    for refresher in (a, b):
        refresher.shutdown(timeout=20)
    for db in databases:
        db.close()


def test_a_request_queued_by_a_replica_that_stops_runs_on_one_that_is_up(two_replicas, monkeypatch) -> None:
    from bot import refresher as module

    monkeypatch.setattr(module, "QUEUE_POLL_SECONDS", 0.05)
    kb, a, b, runs = two_replicas
    inbox_a, inbox_b = Inbox(), Inbox()
    assert a.request(False, inbox_a, by="<@U1>").startswith("Refresh started")
    assert kb.entered.wait(10)
    assert "starts as soon as it ends" in b.request(True, inbox_b, by="<@U2>")
    assert a.status()["queued_by"] == "<@U2>" and a.status()["queued_rebuild"]  # seen from every replica
    b.shutdown()  # B stops while A's refresh runs
    assert "your request is kept" in inbox_b.wait_for("The bot is shutting down, but")
    kb.gate.set()
    inbox_a.wait_for("Index refreshed in")
    time.sleep(0.2)
    assert kb.calls == 1 and runs.pending().by == "<@U2>"  # kept, not lost with B
    a.adopt_queued()  # A's sweeper
    wait_until(lambda: kb.calls == 2 and not a.status()["running"])
    last = runs.last()
    assert (last.by, last.rebuild, last.state) == ("<@U2>", True, "ok") and runs.pending() is None
    a.adopt_queued()
    time.sleep(0.2)
    assert kb.calls == 2  # nothing queued any more: nothing runs


def test_a_queued_request_served_by_another_replicas_run_hears_its_summary(two_replicas, monkeypatch) -> None:
    from bot import refresher as module

    monkeypatch.setattr(module, "QUEUE_POLL_SECONDS", 1.0)  # B looks late: A takes its request first
    kb, a, b, _ = two_replicas
    first_gate, second_gate = kb.gate, threading.Event()
    inbox_a, inbox_b = Inbox(), Inbox()
    a.request(False, inbox_a, by="<@U1>")
    assert kb.entered.wait(10)
    assert "starts as soon as it ends" in b.request(True, inbox_b, by="<@U2>")
    kb.gate = second_gate
    first_gate.set()
    inbox_a.wait_for("Index refreshed in")
    a.adopt_queued()
    wait_until(lambda: kb.calls == 2)  # A runs B's rebuild, held at the second gate
    time.sleep(1.5)
    assert not inbox_b.messages and not b.status()["queued_by"]  # B follows A's run, starts none
    assert b.status()["running_by"] == "<@U2>" and b.status()["running_rebuild"]
    second_gate.set()
    assert inbox_b.wait_for("Index rebuilt in")
    time.sleep(1.5)
    assert kb.calls == 2 and kb.max_active == 1


def test_busy_message_names_who_started_it() -> None:
    at = datetime.fromisoformat("2026-11-25T03:00:00+00:00").timestamp()
    text = busy_message(at, SCHEDULE_BY)
    assert text.startswith("A refresh is already running since ")
    assert text.endswith("(started by the schedule).")


def test_a_refresh_in_another_process_is_reported_not_raised(make_kb, metrics, refreshers) -> None:
    kb = make_kb()
    lock_path = kb.settings.data_dir / "refresh.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what `supportbot index` holds while it runs
        os.pwrite(fd, b"1795600000.0 4242\n", 0)
        refresher = refreshers(kb=kb, schedule="never", metrics=metrics)
        inbox = Inbox()
        assert refresher.request(False, inbox).startswith("Refresh started")
        message = inbox.wait_for("A refresh is already running since")
        assert message.endswith("(started by another process). Nothing was changed.")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert refresher.status()["last_run"] is None
    assert counter(metrics, "busy") == 1


# ---- failures ---------------------------------------------------------------------------

def test_a_failure_is_recorded_and_reported_and_the_next_run_succeeds(
    make_kb, small_corpus, metrics, refreshers
) -> None:
    kb = make_kb(sources=small_corpus)
    chunks = kb.status()["chunks"]
    before = [c.chunk.id for c in kb.ask("How is data stored?").candidates]
    refresher = refreshers(kb=kb, schedule="never", metrics=metrics)
    hidden = small_corpus.with_name("moved-away")
    small_corpus.rename(hidden)  # the source disappears: the refresh must fail cleanly
    inbox = Inbox()
    refresher.request(False, inbox, by="<@UADMIN>")
    failure = inbox.wait_for("Index refresh failed after")
    assert "\n" not in failure and "Traceback" not in failure
    assert "the next refresh retries" in failure
    status = refresher.status()
    assert status["last_run"]["ok"] is False and status["last_run"]["error"]
    assert status["last_run"]["error"] in failure
    assert "Last refresh *failed*" in refresher.format_status()
    assert counter(metrics, "failed") == 1
    # The serving index is as it was.
    assert kb.status()["chunks"] == chunks
    assert [c.chunk.id for c in kb.ask("How is data stored?").candidates] == before

    hidden.rename(small_corpus)
    record = refresher.run_now(by="<@UADMIN>")
    assert record.ok and record.report["unchanged"] == chunks
    assert refresher.status()["last_run"]["ok"] is True
    assert counter(metrics, "ok") == 1 and counter(metrics, "failed") == 1


def test_the_error_kind_is_what_the_indexer_raised(make_kb, small_corpus, refreshers) -> None:
    kb = make_kb(sources=small_corpus)
    small_corpus.rename(small_corpus.with_name("gone"))
    with pytest.raises(SourceError) as raised:
        kb.refresh()
    record = refreshers(kb=kb, schedule="never").run_now()
    assert record.error == " ".join(str(raised.value).split())


# ---- progress, status, shutdown ----------------------------------------------------------

def test_progress_notes_while_a_long_refresh_runs(make_kb, refreshers) -> None:
    kb = Observed(make_kb(), delay=0.8)
    refresher = refreshers(kb=kb, schedule="never", progress_after=(0.2,))
    inbox = Inbox()
    refresher.request(False, inbox)
    inbox.wait_for("Index refreshed in")
    assert inbox.messages[0].startswith("Refreshing the index… still running")
    assert len(inbox.messages) == 2


def test_status_shows_the_index_and_the_schedule(make_kb, small_corpus, refreshers) -> None:
    kb = make_kb(sources=small_corpus)
    refresher = refreshers(kb=kb, schedule="0 3 * * *")
    refresher.start()
    assert "• Last refresh: at start-up. Index refreshed in" in refresher.format_status()  # make_kb's
    refresher.run_now(by="<@UADMIN>")
    status = refresher.status()
    assert status["chunks"] == kb.status()["chunks"] > 0
    assert status["sources"][0]["location"] == str(small_corpus)
    assert datetime.fromtimestamp(status["next_run_at"]).astimezone().strftime("%H:%M") == "03:00"
    text = refresher.format_status()
    assert f"Chunks: {status['chunks']:,} in `support_docs`" in text
    assert "by <@UADMIN>. Index refreshed in" in text
    assert "03:00" in text and "`0 3 * * *`" in text


def test_after_shutdown_no_refresh_starts(make_kb, refreshers) -> None:
    kb = Observed(make_kb())
    refresher = refreshers(kb=kb, schedule="every 1s")
    refresher.start()
    refresher.shutdown()
    assert refresher.next_run_at is None
    assert "shutting down" in refresher.request(False, Inbox())
    refresher.start()  # a late start() after shutdown schedules nothing
    assert refresher.next_run_at is None
    time.sleep(1.2)
    assert kb.calls == 0


def test_status_text_shows_no_credentials_and_no_markup() -> None:
    text = format_status({
        "schedule": "never", "scheduled": False, "running": False, "chunks": 5, "collection": "docs",
        "sources": [{"name": "docs", "location": "https://bob:s3cretpass@docs.example/x.zip?token=abcdef123",
                     "glob": "en/*.md"}],
        "last_run": {"by": "the schedule", "ok": False, "finished_at": 1795600000.0, "report": None,
                     "error": "cannot download https://bob:s3cretpass@docs.example/x.zip: <!channel> 404"},
    })
    assert "s3cretpass" not in text and "abcdef123" not in text
    assert "https://docs.example/x.zip" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    assert "Scheduled refresh: off" in text
