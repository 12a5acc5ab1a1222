"""Slack events: drop retried deliveries, and keep those that can carry a question in the
durable inbox until a listener handled them (bot.state.claims), so a replica dying between
Bolt's ack and claiming the question loses nothing: another one dispatches it again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt import App, BoltContext, BoltRequest, BoltResponse

from bot.listeners.questions import may_be_question
from bot.services import Services
from bot.state import StateError

log = logging.getLogger(__name__)

REDELIVERED = "supportbot_redelivered"  # context key of an event dispatched again from the inbox


def register(app: App, services: Services) -> None:
    @app.middleware
    def drop_retries(request: BoltRequest, body: dict, context: BoltContext, next) -> BoltResponse | None:
        if body.get("type") != "event_callback" or context.get(REDELIVERED):
            return next()  # a redelivered event's row is this replica's now (take_lapsed_events)
        retry = (request.headers.get("x-slack-retry-num") or ["0"])[0]
        event_id = body.get("event_id", "")
        payload = body if may_be_question(body.get("event") or {}) else None
        try:
            first = services.claims.first_delivery(event_id, payload=payload)  # durable: any replica sees it
        except StateError as error:
            # Better a rare duplicate answer than a question lost while the database blips.
            log.warning("cannot record event %s (%s): handling it", event_id, error)
            first = True
        if not first:
            # Slack retries when an ack was late, and may deliver one event to two replicas (or both
            # connections); the first delivery is (being) answered.
            log.info("event %s seen before (%s) acknowledged and dropped", event_id,
                     f"retry {retry}" if retry not in ("", "0") else "delivered again")
            return BoltResponse(status=200, body="")
        if retry not in ("", "0"):
            event = body.get("event") or {}
            if services.records.answered_question(event.get("channel", ""), event.get("ts", "")):
                # Answered before this process restarted: the record outlives the in-memory set.
                log.info("retried event %s (retry %s) was answered before; dropped", event_id, retry)
                return BoltResponse(status=200, body="")
            # The first delivery never reached this process (a restart, a deploy): answer this one.
            log.info("retried event %s (retry %s) is the first seen here: handling it", event_id, retry)
        return next()

    @app.middleware
    def note_rate_limited(body: dict, next) -> BoltResponse | None:
        # Slack's own notice that it holds back this app's events (over 30,000 an hour in a
        # workspace): no listener type fits it, and Bolt would answer 404.
        if body.get("type") != "app_rate_limited":
            return next()
        log.warning("Slack is holding back this app's events for team %s (over its hourly limit) from minute %s",
                    body.get("team_id", "?"), body.get("minute_rate_limited", "?"))
        return BoltResponse(status=200, body="")

    def redeliver(body: dict) -> None:
        # Socket Mode form: the body was verified when Slack sent it, and is a dict now.
        app.dispatch(BoltRequest(body=body, mode="socket_mode", context={REDELIVERED: True}))

    services.redeliver = redeliver


def handles_inbox(services: Services) -> Callable[[Callable[[dict, BoltContext], None]], Callable]:
    """Decorate a listener of events kept in the inbox: when it returns, the event is handled.

    Raising leaves the event to be dispatched again once its lease ran out (up to
    bot.state.claims.MAX_ATTEMPTS times).
    """

    def decorate(listener: Callable[[dict, BoltContext], None]) -> Callable:
        def run(event: dict, context: BoltContext, body: dict) -> None:  # Bolt passes arguments by name
            listener(event, context)
            if may_be_question(event):  # the others were never kept
                services.handled(body.get("event_id", ""))

        return run

    return decorate
