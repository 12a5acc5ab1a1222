"""The durable event inbox through the Bolt app and the fake Slack: a replica that dies after
acknowledging an event and before claiming its question loses nothing (bot.state.claims)."""

from __future__ import annotations

import threading
import time

from tests.bot_helpers import bot_replies, final_answers, outcomes, start_bot  # noqa: F401  (fixtures)

LEASE = 1.0  # seconds (the smallest CLAIM_LEASE_SECONDS)


def test_an_event_whose_replica_died_before_claiming_it_is_answered_once_by_another(
        make_kb, fake_slack, start_bot, outcomes, tmp_path, monkeypatch):
    kb = make_kb(abstain_threshold=0.0)
    # Two replicas, one state database; a signing secret, so the apps verify requests as in HTTP mode.
    settings = dict(feedback_db=tmp_path / "shared.sqlite", claim_lease_seconds=LEASE, slack_signing_secret="s3cret")
    a = start_bot(kb, **settings)
    b = start_bot(kb, **settings)
    fake_slack.wait_connected(count=2)
    conn_a, conn_b = fake_slack.connections()
    died = threading.Event()

    def dies(question):  # A's listener thread ends after Bolt's ack, before the question is claimed
        died.set()
        raise RuntimeError("replica A died")

    monkeypatch.setattr(a.services, "ask", dies)
    mention = fake_slack.mention("How does Milvus store data?", channel="CIN")
    fake_slack.wait_ack(fake_slack.send_event(mention, event_id="EvINBOX1", connection=conn_a))
    assert died.wait(10)
    time.sleep(LEASE + 0.1)  # A's lease on the event runs out
    assert b.services.take_over() == 1  # B's sweeper dispatches it again through B's app
    assert [r.outcome for r in outcomes.wait(1)] == ["answered"]
    assert len(final_answers(fake_slack, "CIN", mention["ts"])) == 1

    # Slack's retry of the acknowledged event, on either replica: dropped.
    for connection in (conn_a, conn_b):
        fake_slack.wait_ack(fake_slack.send_event(mention, event_id="EvINBOX1", retry_attempt=1,
                                                  connection=connection))
    # Handled events are not dispatched again: a question B answered, a remark not for the bot.
    asked = fake_slack.mention("How is it backed up?", channel="CIN")
    fake_slack.wait_ack(fake_slack.send_event(asked, event_id="EvINBOX2", connection=conn_b))
    remark = fake_slack.message_event("lunch at noon", channel="CIN")
    fake_slack.wait_ack(fake_slack.send_event(remark, event_id="EvINBOX3", connection=conn_b))
    assert [r.outcome for r in outcomes.wait(2)] == ["answered", "answered"]
    deadline = time.monotonic() + 10
    while b.services.claims.state("event:EvINBOX3")[0] != "done":  # the listener returns after the ack
        assert time.monotonic() < deadline, b.services.claims.state("event:EvINBOX3")
        time.sleep(0.05)
    time.sleep(LEASE + 0.1)
    assert a.services.take_over() == 0 and b.services.take_over() == 0
    time.sleep(0.5)
    assert len(outcomes.records) == 2
    assert len(bot_replies(fake_slack, "CIN", mention["ts"])) == 1
    assert len(bot_replies(fake_slack, "CIN", asked["ts"])) == 1
    assert [b.services.claims.state(f"event:EvINBOX{n}") for n in (1, 2)] == [("done", "", 2), ("done", "", 1)]
