"""Claims, shared limits and refresh runs between two "replicas" (two engines, two holders)
on SQLite and on a real PostgreSQL (pgserver)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.state import Database, database_url
from bot.state.claims import Claims, question_key
from bot.state.limits import SharedLimits
from bot.state.refresh_runs import DIED, JOINED, QUEUED, RefreshRuns, Started


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def two_databases(request, tmp_path):
    """Two engines on one database, as two replicas would have."""
    url = f"sqlite:///{tmp_path / 'state.sqlite'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    first = Database(url=database_url(url, default_path="unused"))
    second = Database(url=database_url(url, default_path="unused"))
    yield first, second
    first.close()
    second.close()


def _race(*calls):
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


QUESTION = dict(channel="C1", message_ts="1.1", thread_ts="1.1", user="U1", team="T1",
                text="how do I rebuild?", conversation="channel")


def test_one_replica_wins_an_event_and_a_message(two_databases):
    a = Claims(database=two_databases[0], holder="A")
    b = Claims(database=two_databases[1], holder="B")
    for _ in range(5):  # a retry on the other replica, many times over
        results = _race(lambda: a.first_delivery("Ev1"), lambda: b.first_delivery("Ev1"))
        assert sorted(results) in ([False, True], [False, False])
    assert a.first_delivery("") and b.first_delivery("")  # nothing to key on: never a duplicate
    # app_mention and message for the same message, one on each replica.
    won = _race(lambda: a.claim_question(**QUESTION), lambda: b.claim_question(**QUESTION))
    assert sorted(w is not None for w in won) == [False, True]
    assert won[0] or won[1] == question_key("C1", "1.1")


def test_one_replica_takes_each_turn_of_a_periodic_chore(two_databases):
    clock = Clock(now=3600 * 300)  # on the hour
    a = Claims(database=two_databases[0], holder="A", clock=clock)
    b = Claims(database=two_databases[1], holder="B", clock=clock)
    won = _race(lambda: a.take_turn("reread", every=3600), lambda: b.take_turn("reread", every=3600))
    assert sorted(won) == [False, True]
    clock.now += 1800  # still the same hour
    assert not a.take_turn("reread", every=3600) and not b.take_turn("reread", every=3600)
    assert a.take_turn("other chore", every=3600)  # chores take turns apart
    clock.now += 1800
    assert sorted([b.take_turn("reread", every=3600), a.take_turn("reread", every=3600)]) == [False, True]


def test_a_lapsed_lease_is_taken_over_once(two_databases):
    clock = Clock()
    a = Claims(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    b = Claims(database=two_databases[1], holder="B", lease_seconds=10, clock=clock)
    c = Claims(database=two_databases[1], holder="C", lease_seconds=10, clock=clock)
    key = a.claim_question(**QUESTION)
    a.set_placeholder(key, "1.2")
    clock.now += 8
    assert a.renew() == 1
    clock.now += 8  # renewed: not lapsed yet
    assert b.take_lapsed() == [] and c.take_lapsed() == []
    clock.now += 5  # A died and stopped renewing
    taken = _race(lambda: b.take_lapsed(limit=5), lambda: c.take_lapsed(limit=5))
    [question] = taken[0] + taken[1]
    assert (question.text, question.placeholder_ts, question.attempts, question.thread_ts) == (
        "how do I rebuild?", "1.2", 2, "1.1")
    winner = b if taken[0] else c
    assert a.renew() == 0  # the dead replica, back, no longer holds it
    assert b.take_lapsed() == [] and c.take_lapsed() == []
    winner.finish(key)
    assert winner.state(key) == ("done", "", 2)
    clock.now += 100
    assert b.take_lapsed() == []
    assert a.purge(older_than=clock.now) == 1 and a.state(key) is None


def test_a_question_is_given_up_after_three_deaths(two_databases):
    clock = Clock()
    a = Claims(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    key = a.claim_question(**QUESTION)
    for _ in range(2):
        clock.now += 11
        assert len(a.take_lapsed()) == 1
    clock.now += 11
    assert a.take_lapsed() == [] and a.state(key)[0] == "abandoned"


def test_limits_hold_across_replicas(two_databases):
    clock = Clock()
    a = SharedLimits(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    b = SharedLimits(database=two_databases[1], holder="B", lease_seconds=10, clock=clock)
    decisions = _race(*[lambda limits=limits: limits.acquire("T:U1", per_minute=0, max_concurrent=1)
                        for limits in (a, b, a, b)])
    assert sorted(d.reason for d in decisions) == ["busy", "busy", "busy", "ok"]
    [ok] = [d for d in decisions if d.reason == "ok"]
    assert a.active("T:U1") == 1
    a.release(ok.slot_id)
    assert b.active("T:U1") == 0
    # Rate: 2 a minute across both replicas.
    assert a.acquire("T:U2", per_minute=2, max_concurrent=0).reason == "ok"
    clock.now += 10
    assert b.acquire("T:U2", per_minute=2, max_concurrent=0).reason == "ok"
    refused = a.acquire("T:U2", per_minute=2, max_concurrent=0)
    assert refused.reason == "rate" and refused.retry_after == pytest.approx(50)
    clock.now += 51
    assert b.acquire("T:U2", per_minute=2, max_concurrent=0).reason == "ok"
    # A dead replica's slot frees itself when its lease lapses; a live one's is renewed.
    held = b.acquire("T:U3", per_minute=0, max_concurrent=1)
    assert held.reason == "ok"
    clock.now += 8
    assert b.renew() >= 1
    clock.now += 8
    assert a.acquire("T:U3", per_minute=0, max_concurrent=1).reason == "busy"
    clock.now += 3
    assert a.acquire("T:U3", per_minute=0, max_concurrent=1).reason == "ok"
    clock.now += 120
    assert a.purge() >= 4


def test_one_refresh_at_a_time_and_one_run_per_tick(two_databases):
    clock = Clock()
    a = RefreshRuns(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    b = RefreshRuns(database=two_databases[1], holder="B", lease_seconds=10, clock=clock)
    assert sorted(_race(lambda: a.claim_tick(600.0), lambda: b.claim_tick(600.0))) == [False, True]
    assert not a.claim_tick(600.0) and not b.claim_tick(540.0)
    started = _race(lambda: a.start(by="<@U1>", rebuild=True), lambda: b.start(by="the schedule", rebuild=False))
    [run_id] = [s.id for s in started if isinstance(s, Started)]
    [busy] = [s for s in started if not isinstance(s, Started)]
    runner = a if isinstance(started[0], Started) else b
    other = b if runner is a else a
    assert busy.id == run_id and other.running().id == run_id
    clock.now += 8
    runner.renew()
    clock.now += 8
    assert not isinstance(other.start(by="x", rebuild=False), int)  # renewed: still running
    runner.finish(run_id, state="ok", report={"chunks": 7})
    assert other.last().report == {"chunks": 7} and other.running() is None
    # A runner that dies leaves a failed run; the next start is allowed once its lease lapsed.
    second = other.start(by="y", rebuild=False)
    assert isinstance(second, Started)
    second = second.id
    clock.now += 11
    third = runner.start(by="z", rebuild=False)
    assert isinstance(third, Started)
    last = runner.last()
    assert (last.id, last.state, last.error) == (second, "failed", DIED)


def test_a_queued_request_is_served_by_the_next_run_on_any_replica(two_databases):
    clock = Clock()
    a = RefreshRuns(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    b = RefreshRuns(database=two_databases[1], holder="B", lease_seconds=10, clock=clock)
    running = a.start(by="the schedule", rebuild=False)
    assert isinstance(running, Started) and running.serves == ()
    # Requests made meanwhile, on both replicas at once: one rebuild among them.
    ids = _race(lambda: a.queue(by="<@U1>", rebuild=False), lambda: b.queue(by="<@U2>", rebuild=True))
    ids.append(b.queue(by="<@U3>", rebuild=False))
    assert a.pending().state == QUEUED and b.pending().by in ("<@U1>", "<@U2>")
    assert a.get(ids[0]).state == QUEUED and b.get(12345) is None
    a.finish(running.id, state="ok", report={"chunks": 1})
    assert b.pending() is not None  # nothing lost when the run that was going on ends
    served = b.start(by="<@U9>", rebuild=False)  # whichever replica starts next serves them
    assert isinstance(served, Started) and served.rebuild
    assert served.serves and set(served.serves) <= {"<@U1>", "<@U2>"}  # U3 joined a queued row
    assert a.pending() is None
    for request_id in ids:
        row = a.get(request_id)
        assert (row.state, row.joined_run) == (JOINED, served.id)
        assert b.served_by(request_id) is None  # taken, but its run goes on
    assert a.running().rebuild  # the run itself is recorded as the rebuild it is
    # The replica running it dies: the requests it served wait for the next run again.
    clock.now += 11
    assert a.get(served.id).state == "failed" and a.pending() is not None
    assert {a.get(request_id).state for request_id in ids} == {QUEUED}
    again = a.start(by="<@U8>", rebuild=False)
    assert isinstance(again, Started) and again.rebuild and a.get(ids[0]).joined_run == again.id
    # A request made after that run started waits for the next one; the purge keeps it.
    a.finish(again.id, state="ok")
    assert b.served_by(ids[0]).id == again.id and b.served_by(again.id) is None  # ended: its requesters hear
    later = a.queue(by="<@U4>", rebuild=False)
    assert later not in ids
    b.purge(older_than=clock.now + 1)
    assert a.get(later).state == QUEUED and a.get(ids[0]) is None


def test_text_any_database_refuses_is_stored_readably(two_databases):
    clock = Clock()
    a = Claims(database=two_databases[0], holder="A", lease_seconds=1, clock=clock)
    a.claim_question(**{**QUESTION, "text": "What is \ud800 Milvus\x00 Lite?"})
    clock.now += 2
    [taken] = a.take_lapsed()
    assert taken.text == "What is ? Milvus\ufffd Lite?"


BODY = {"type": "event_callback", "event_id": "Ev9", "token": "legacy-secret", "team_id": "T1",
        "event": {"type": "app_mention", "channel": "C1", "ts": "1.1", "user": "U1", "text": "<@UB> ça \ud800 va\x00?"}}


def test_an_unhandled_event_is_taken_over_once_and_a_handled_one_never(two_databases):
    clock = Clock()
    a = Claims(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    b = Claims(database=two_databases[1], holder="B", lease_seconds=10, clock=clock)
    c = Claims(database=two_databases[1], holder="C", lease_seconds=10, clock=clock)
    assert a.first_delivery("Ev9", payload=BODY)  # kept before the ack
    assert not b.first_delivery("Ev9", payload=BODY)  # Slack's retry, on another replica: dropped
    assert a.first_delivery("EvPlain") and a.first_delivery("EvDone", payload={**BODY, "event_id": "EvDone"})
    a.handled("EvDone")
    clock.now += 9
    assert b.take_lapsed_events(limit=5) == []  # A may still be handling it
    clock.now += 2  # A died between the ack and handling Ev9
    taken = _race(lambda: b.take_lapsed_events(limit=5), lambda: c.take_lapsed_events(limit=5))
    [event] = taken[0] + taken[1]
    winner = b if taken[0] else c
    assert (event.key, event.attempts, event.payload["event_id"]) == ("event:Ev9", 2, "Ev9")
    assert "token" not in event.payload  # the legacy credential is not kept
    assert event.payload["event"]["text"] == "<@UB> ça ? va\x00?"  # both databases take it (JSON escapes NUL)
    assert winner.state("event:Ev9") == ("seen", winner.holder, 2)
    assert b.take_lapsed_events() == [] and c.take_lapsed_events() == []
    winner.handled("Ev9")
    clock.now += 100
    assert a.take_lapsed_events(limit=5) == [] and b.take_lapsed_events(limit=5) == []
    assert a.state("event:Ev9") == ("done", "", 2) and a.state("event:EvDone") == ("done", "", 1)
    assert a.state("event:EvPlain") == ("seen", "", 0)  # plain dedupe rows are never dispatched again
    assert a.purge(older_than=clock.now) == 3


def test_an_event_that_kills_its_replicas_is_given_up_and_its_body_dropped(two_databases):
    clock = Clock()
    a = Claims(database=two_databases[0], holder="A", lease_seconds=10, clock=clock)
    assert a.first_delivery("Ev9", payload=BODY)
    for _ in range(2):
        clock.now += 11
        assert len(a.take_lapsed_events()) == 1
    clock.now += 11
    assert a.take_lapsed_events() == [] and a.state("event:Ev9")[0] == "abandoned"
    from bot.state.tables import event_claims

    with two_databases[1].begin() as connection:
        assert connection.execute(event_claims.select().where(event_claims.c.key == "event:Ev9")).first().payload is None


def test_membership_changes_are_seen_by_every_replica(two_databases):
    from bot.state.membership_changes import MembershipChanges

    clock = Clock()
    a = MembershipChanges(database=two_databases[0], clock=clock)
    b = MembershipChanges(database=two_databases[1], clock=clock)
    assert b.recent() == {}
    first = a.changed("C0HR")
    assert b.recent() == {"C0HR": first}
    clock.now += 5
    assert _race(lambda: a.changed("C0HR"), lambda: b.changed("S0PEOPLE")) == [clock.now, clock.now]
    assert b.recent() == {"C0HR": clock.now, "S0PEOPLE": clock.now}
    clock.now += 1000
    assert a.recent() == {}  # older than RECENT_SECONDS
    assert a.purge(older_than=clock.now) == 2 and b.recent(within=10_000) == {}
