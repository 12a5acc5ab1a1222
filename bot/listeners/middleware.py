"""Drop retried Events API deliveries so a question is never answered twice."""

from __future__ import annotations

import logging

from slack_bolt import App, BoltRequest, BoltResponse

from bot.services import Services
from bot.state import StateError

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.middleware
    def drop_retries(request: BoltRequest, body: dict, next) -> BoltResponse | None:
        if body.get("type") != "event_callback":
            return next()
        retry = (request.headers.get("x-slack-retry-num") or ["0"])[0]
        event_id = body.get("event_id", "")
        try:
            first = services.claims.first_delivery(event_id)  # durable: a retry on any replica is caught
        except StateError as error:
            # Better a rare duplicate answer than a question lost while the database blips.
            log.warning("cannot record event %s (%s): handling it", event_id, error)
            first = True
        if not first:
            # Slack retries when an ack was late; the first delivery is (being) answered.
            log.info("retried event %s (retry %s) acknowledged and dropped", event_id, retry)
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
