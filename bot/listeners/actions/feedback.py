"""👍/👎 on an answer: record it, thank the person privately."""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.blocks import FEEDBACK_DOWN, FEEDBACK_UP
from bot.listeners.private_replies import tell_privately
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.action(re.compile(f"^({FEEDBACK_UP}|{FEEDBACK_DOWN})$"))
    def on_feedback(ack: Ack, body: dict, action: dict, client: WebClient, respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        value = 1 if action.get("action_id") == FEEDBACK_UP else -1
        if not services.records.record_feedback(action.get("value", ""), user_id=user, value=value):
            log.warning("feedback for an unknown answer id %r", action.get("value"))
            return
        if services.learner is not None:  # counted for the saved answers it cited (App Home)
            services.learner.record_feedback(action.get("value", ""), value)
        # Privately, also where the bot is not a member (a private /ask answer): bot.listeners.actions.handoff.
        tell_privately(client, respond, body,
                       "Thanks for the feedback!" if value > 0 else "Thanks — noted, we'll look at this answer.",
                       thread_ts=(body.get("message") or {}).get("thread_ts"))
