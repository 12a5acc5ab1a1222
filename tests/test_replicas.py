"""Two `supportbot serve` processes against one PostgreSQL (pgserver) and one Milvus server,
each with its own Socket Mode connection to the fake Slack:

- a Slack retry and the message-event double delivery of a question, sent to the replica
  that did not take it while it is still answering: answered once;
- a follow-up, a 👍 and "Ask a human" on that answer sent to the other replica: they work;
- `/reindex status` on either replica shows the same scheduled runs, one per tick;
- the replica answering a question with a slow model call is SIGKILLed after it acknowledged
  it: the other answers it once, in the same placeholder (the failover time is printed);
- one person's four questions at once, split between the replicas, with USER_MAX_CONCURRENT=1:
  each waits for the previous answer on either replica, none is refused.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.blocks import ASK_HUMAN, FEEDBACK_UP
from bot.state import Database, Records, database_url
from bot.state.refresh_runs import RefreshRuns
from tests.bot_helpers import bot_replies, final_answers, section_text, serve_env, spawn_serve, wait_ready  # noqa: F401  (serve_env: fixture)
from tests.fixtures.milvus import free_port

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

LEASE, SWEEP, TICK = 3, 1, 4  # seconds: short so the test is quick; the defaults are 30, 10 and daily
CHANNEL = "CREP"


class Replica:
    def __init__(self, name: str, env: dict, tmp_path: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log = tmp_path / f"{name}.log"
        data = tmp_path / f"data-{name}"
        self.process = spawn_serve({**env, "DATA_DIR": str(data), "METRICS_PORT": str(self.metrics_port)},
                                   cwd=tmp_path, log=self.log)

    def wait_ready(self, timeout: float = 180) -> None:
        wait_ready(self.process, metrics_port=self.metrics_port, log=self.log, timeout=timeout)

    def outcomes(self) -> list[dict]:
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "bot.questions":
                    found.append(record)
        return found

    def refresh_lines(self) -> str:
        """What this replica logged about index refreshes, for a failure message."""
        return "".join(f"{self.name}: {line[:300]}\n" for line in self.log.read_text().splitlines()
                       if "refresh" in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _record_id(message: dict) -> str:
    for block in message.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == FEEDBACK_UP:
                return element["value"]
    raise AssertionError(f"no feedback button in {message}")


def _wait(condition, what: str | Callable[[], str], timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(interval)


def _env(serve_env, *, milvus_server: str, database_url: str) -> dict:
    """Socket Mode replicas on one Milvus server and one state database ("": SQLite under DATA_DIR)."""
    return serve_env(
        socket_mode=True,
        FEEDBACK_DB=None,
        TORCH_THREADS="1",
        MILVUS_URI=milvus_server,
        MILVUS_COLLECTION="replicas_" + uuid.uuid4().hex[:8],
        DATABASE_URL=database_url,
        OPENAI_API_KEY="sk-test-replicas",
        OPENAI_TIMEOUT="60",
        REINDEX_SCHEDULE=f"every {TICK}s",
        ADMIN_USER_IDS="UADMIN",
        ESCALATION_CONTACTS="*=UEXPERT",
        CLAIM_LEASE_SECONDS=str(LEASE),
        CLAIM_SWEEP_SECONDS=str(SWEEP),
        STREAM_UPDATE_INTERVAL="0.5",
        SHUTDOWN_GRACE_SECONDS="5",
        LOG_FORMAT="json",
    )


def test_two_replicas_share_one_state(tmp_path, postgres_url, milvus_server, fake_slack, fake_openai, serve_env):
    env = _env(serve_env, milvus_server=milvus_server, database_url=postgres_url)
    db = Database(url=database_url(postgres_url, default_path="unused"))
    records = Records(database=db)
    runs = RefreshRuns(database=db, holder="test")
    a = Replica("a", env, tmp_path)
    b = None
    try:
        a.wait_ready()  # builds the index in the Milvus server
        fake_slack.wait_connected(count=1)
        b = Replica("b", env, tmp_path)
        b.wait_ready()  # finds the index built
        fake_slack.wait_connected(count=2)
        both_up = time.time()
        conn_a, conn_b = fake_slack.connections()

        # 1. A question to A while its model call is slow; Slack's retry and the message event of
        #    the same message go to B meanwhile: answered once.
        fake_openai.hang(3.0)
        asked = len(fake_openai.requests)
        question = fake_slack.mention("How does Milvus store data?", channel=CHANNEL)
        fake_slack.send_event(question, event_id="EvREPLICA1", connection=conn_a)
        _wait(lambda: bot_replies(fake_slack, CHANNEL, question["ts"]), "A's placeholder")
        retry = fake_slack.send_event(question, event_id="EvREPLICA1", retry_attempt=1, connection=conn_b)
        fake_slack.wait_ack(retry)
        double = {**question, "type": "message", "channel_type": "channel"}
        fake_slack.wait_ack(fake_slack.send_event(double, event_id="EvREPLICA1M", connection=conn_b))
        [answer] = _wait(lambda: final_answers(fake_slack, CHANNEL, question["ts"]), "the answer")
        time.sleep(SWEEP + LEASE)  # room for a wrong second answer to show up
        assert len(final_answers(fake_slack, CHANNEL, question["ts"])) == 1
        assert len(bot_replies(fake_slack, CHANNEL, question["ts"])) == 1
        assert len(fake_openai.requests) == asked + 1
        assert [o["outcome"] for o in a.outcomes()] == ["answered"] and b.outcomes() == []
        record_id = _record_id(answer)

        # 2. A follow-up, a 👍 and "Ask a human" on A's answer, all sent to B.
        followup = fake_slack.message_event("And how do I back it up?", channel=CHANNEL, thread_ts=question["ts"])
        fake_slack.send_event(followup, connection=conn_b)
        _wait(lambda: len(final_answers(fake_slack, CHANNEL, question["ts"])) == 2, "B's follow-up answer")
        # B logs the outcome after posting the answer and recording where it went (a database write).
        _wait(lambda: b.outcomes(), "B's outcome line")
        assert [o["outcome"] for o in b.outcomes()] == ["answered"]
        fake_slack.send_action(fake_slack.action_payload(FEEDBACK_UP, record_id, channel=CHANNEL, user="U0001",
                                                         message_ts=answer["ts"], thread_ts=question["ts"]),
                               connection=conn_b)
        fake_slack.wait_for("chat.postEphemeral", where=lambda c: "Thanks for the feedback" in c.params.get("text", ""))
        assert records.totals()["helpful"] == 1
        fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, record_id, channel=CHANNEL, user="U0001",
                                                         message_ts=answer["ts"], thread_ts=question["ts"]),
                               connection=conn_b)
        [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: "UEXPERT" in json.dumps(c.params))
        assert handoff.params.get("thread_ts") == question["ts"] and records.handed_off(CHANNEL, question["ts"])

        # 3. /reindex status on each replica: the same scheduled runs, one per tick across both.
        _wait(lambda: runs.last() is not None, "a scheduled refresh", timeout=3 * TICK + 60)
        for connection in (conn_a, conn_b):
            fake_slack.send_command(fake_slack.command_payload("/reindex", "status", channel=CHANNEL, user="UADMIN"),
                                    connection=connection)
        statuses = fake_slack.wait_for("response_url", count=2, where=lambda c: "Index status" in c.params.get("text", ""))
        assert all("by the schedule" in call.params["text"] for call in statuses)

        # 3b. A full rebuild on A switches the alias; B serves the new collection without a restart.
        #     A scheduled refresh may be running on either replica then: the rebuild is queued behind it.
        fake_slack.send_command(fake_slack.command_payload("/reindex", "full", channel=CHANNEL, user="UADMIN"),
                                connection=conn_a)
        fake_slack.wait_for("response_url", where=lambda c: "Refresh started (full rebuild)" in c.params.get("text", "")
                            or "Your full rebuild starts as soon as it ends" in c.params.get("text", ""))
        rebuilt = _wait(lambda: (lambda run: run if run and run.rebuild else None)(runs.last()),
                        lambda: "the rebuild; refreshes logged:\n" + a.refresh_lines() + b.refresh_lines(), timeout=120)
        assert rebuilt.state == "ok" and rebuilt.report["rebuilt"], rebuilt
        after = fake_slack.mention("How does Milvus store data after the rebuild?", channel=CHANNEL)
        fake_slack.send_event(after, connection=conn_b)
        [served] = _wait(lambda: final_answers(fake_slack, CHANNEL, after["ts"]), "B's answer after the rebuild")
        assert "docs.example" in json.dumps(served["blocks"])  # sources from the rebuilt collection
        since = time.time()
        _wait(lambda: (lambda run: run and run.finished_at > since and run.by == "the schedule")(runs.last()),
              "a scheduled refresh after the rebuild", timeout=3 * TICK + 60)
        assert runs.last().state == "ok", runs.last()

        # 4. A question to A whose model call is slow; A is killed after acknowledging it.
        fake_openai.hang(30.0)
        asked = len(fake_openai.requests)
        lost = fake_slack.mention("What is the maximum dimension of a vector?", channel=CHANNEL)
        ack = fake_slack.send_event(lost, connection=conn_a)
        fake_slack.wait_ack(ack)
        _wait(lambda: len(fake_openai.requests) > asked, "A's model call")
        killed_at = time.monotonic()
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        killed_wall = time.time()
        [rescued] = _wait(lambda: final_answers(fake_slack, CHANNEL, lost["ts"]), "B's answer after the kill",
                          timeout=LEASE + SWEEP + 60)
        failover = time.monotonic() - killed_at
        time.sleep(SWEEP + LEASE)
        assert len(final_answers(fake_slack, CHANNEL, lost["ts"])) == 1
        assert len(bot_replies(fake_slack, CHANNEL, lost["ts"])) == 1  # A's placeholder became the answer
        assert section_text(rescued)
        assert [o["outcome"] for o in b.outcomes()] == ["answered"] * 3
        print(f"\nfailover after SIGKILL: {failover:.1f} s (lease {LEASE} s, sweep {SWEEP} s)")

        # 5. One scheduled refresh per tick while both replicas ran.
        with db.begin() as connection:
            from bot.state.tables import refresh_runs
            import sqlalchemy as sa

            rows = connection.execute(sa.select(refresh_runs.c.started_at, refresh_runs.c.holder).where(
                refresh_runs.c.requested_by == "the schedule", refresh_runs.c.started_at >= both_up,
                refresh_runs.c.started_at <= killed_wall)).all()
        starts = sorted(started for started, _ in rows)
        assert starts, "no scheduled refresh ran while both replicas were up"
        assert all(later - earlier > TICK / 2 for earlier, later in zip(starts, starts[1:])), starts
        assert len(starts) <= (killed_wall - both_up) / TICK + 1
        print(f"scheduled refreshes while both ran: {len(starts)} in {killed_wall - both_up:.0f} s "
              f"(every {TICK} s), by {sorted({holder.split(':')[1] for _, holder in rows})}")
    finally:
        for replica in (a, b):
            if replica is not None:
                replica.stop()
        db.close()


def test_two_replicas_starting_together_on_an_empty_index_build_it_once(
        request, tmp_path, postgres_url, milvus_server, fake_slack, fake_openai):
    """`docker compose up` on an empty Milvus server: one replica embeds the corpus under the
    refresh lease, the other waits for it (or finds it built) and serves it; no alias traceback."""
    env = _env(request.getfixturevalue("serve_env"), milvus_server=milvus_server, database_url=postgres_url)
    env["REINDEX_SCHEDULE"] = "never"
    a = Replica("a", env, tmp_path)
    b = Replica("b", env, tmp_path)
    try:
        a.wait_ready()
        b.wait_ready()
        fake_slack.wait_connected(count=2)
        logs = {replica.name: replica.log.read_text() for replica in (a, b)}
    finally:
        for replica in (a, b):
            replica.stop()
    db = Database(url=database_url(postgres_url, default_path="unused"))
    try:
        runs = RefreshRuns(database=db, holder="test")
        last = runs.last()
        assert last is not None and (last.id, last.by, last.state) == (1, "start-up", "ok"), last
        assert runs.get(2) is None  # the one run in a fresh database
    finally:
        db.close()
    builds = {name: log.count("refresh done") for name, log in logs.items()}
    assert sorted(builds.values()) == [0, 1], builds  # the corpus was embedded by one replica only
    waiter = next(name for name, count in builds.items() if count == 0)
    waited = "Waiting for the index refresh by start-up on" in logs[waiter]
    # Both may have created the serving alias at one moment: one line, no pymilvus traceback. (The
    # bundled 2.3 server's refusal of BM25 and of a second vector field still logs pymilvus's own.)
    assert all("[create_alias]" not in log for log in logs.values())
    print(f"\nthe first index was built once; the other replica {'waited for it' if waited else 'found it built'}")


def test_one_process_killed_and_restarted_answers_once(tmp_path, milvus_server, fake_slack, fake_openai, serve_env):
    """The embedded default (SQLite under DATA_DIR): the restarted process finds the claim its
    predecessor left and answers the question once."""
    env = _env(serve_env, milvus_server=milvus_server, database_url="")
    env["REINDEX_SCHEDULE"] = "never"
    first = Replica("a", env, tmp_path)
    second = None
    try:
        first.wait_ready()
        fake_slack.wait_connected(count=1)
        fake_openai.hang(30.0)
        lost = fake_slack.mention("What is the maximum dimension of a vector?", channel=CHANNEL)
        fake_slack.wait_ack(fake_slack.send_event(lost))
        _wait(lambda: fake_openai.requests, "the model call")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        killed_at = time.monotonic()
        second = Replica("a", env, tmp_path)  # the same DATA_DIR, so the same SQLite file
        [answer] = _wait(lambda: final_answers(fake_slack, CHANNEL, lost["ts"]), "the answer after the restart",
                         timeout=180)
        print(f"\nanswered {time.monotonic() - killed_at:.1f} s after the SIGKILL, restart included")
        time.sleep(SWEEP + LEASE)
        assert len(final_answers(fake_slack, CHANNEL, lost["ts"])) == 1
        assert len(bot_replies(fake_slack, CHANNEL, lost["ts"])) == 1
        assert len(fake_openai.requests) == 2 and section_text(answer)
    finally:
        for replica in (first, second):
            if replica is not None:
                replica.stop()


def test_one_persons_questions_sent_to_both_replicas_at_once_are_all_answered_one_at_a_time(
        tmp_path, postgres_url, milvus_server, fake_slack, fake_openai, serve_env):
    """A client asking as one person (USER_MAX_CONCURRENT=1): four questions at once, split
    between the replicas. None is refused: each waits for the person's previous answer on
    whichever replica, is answered once, and the answers come one after another."""
    env = _env(serve_env, milvus_server=milvus_server, database_url=postgres_url)
    env.update(USER_MAX_CONCURRENT="1", USER_QUEUE_SIZE="3", USER_RATE_PER_MINUTE="0", REINDEX_SCHEDULE="never")
    a = Replica("a", env, tmp_path)
    b = None
    try:
        a.wait_ready()
        fake_slack.wait_connected(count=1)
        b = Replica("b", env, tmp_path)
        b.wait_ready()
        fake_slack.wait_connected(count=2)
        connections = fake_slack.connections()
        fake_openai.hang(1.0, times=4)
        asked = len(fake_openai.requests)
        questions = [fake_slack.mention(text, channel=CHANNEL, user="UONE") for text in (
            "How does Milvus store data?", "What is a partition?", "How do I back up a collection?",
            "What is the maximum dimension of a vector?")]
        for number, question in enumerate(questions):
            fake_slack.send_event(question, connection=connections[number % 2])
        for question in questions:
            _wait(lambda question=question: final_answers(fake_slack, CHANNEL, question["ts"]),
                  lambda: f"every answer; outcomes: {a.outcomes() + b.outcomes()}", timeout=90)
        time.sleep(SWEEP + LEASE)  # room for a wrong second reply to show up
        assert [len(bot_replies(fake_slack, CHANNEL, q["ts"])) for q in questions] == [1, 1, 1, 1]
        assert len(fake_openai.requests) == asked + 4
        assert sorted(o["outcome"] for o in a.outcomes() + b.outcomes()) == ["answered"] * 4
        assert a.outcomes() and b.outcomes()  # both replicas answered some
        finals = sorted(c.at for c in fake_slack.calls("chat.update")
                        if c.params.get("channel") == CHANNEL and c.params.get("blocks"))
        gaps = [later - earlier for earlier, later in itertools.pairwise(finals)]
        assert len(finals) == 4 and min(gaps) > 0.8, gaps  # the 1 s model calls never overlapped
    finally:
        for replica in (a, b):
            if replica is not None:
                replica.stop()
