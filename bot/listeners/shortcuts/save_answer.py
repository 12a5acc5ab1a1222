""""Save as answer" (a message shortcut): the asker, a channel expert or an admin saves a reply."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.learning import ALREADY_SAVED, NO_DMS
from bot.listeners.private_replies import tell_privately
from bot.services import Services

log = logging.getLogger(__name__)

SAVE_ANSWER = "save_as_answer"  # the callback id in manifest.yaml
NOT_A_MEMBER_TEXT = "I'm not a member of this channel, so I can't read its threads: {invite} and try again."


def register(app: App, services: Services) -> None:
    @app.shortcut(SAVE_ANSWER)
    def on_save_answer(ack: Ack, body: dict, client: WebClient, respond: Respond) -> None:
        ack()
        learner = services.learner
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id", "")
        message = body.get("message") or {}
        if learner is None:
            tell_privately(client, respond, body, "Saving answers is turned off here (LEARN_FROM_THREADS).",
                           thread_ts=message.get("thread_ts"))
            return
        outcome = learner.capture(channel=channel, message_ts=message.get("ts") or body.get("message_ts", ""),
                                  marker=user, via="shortcut")
        if outcome.ok or not outcome.message:
            return
        # Where the bot is not a member it can neither read the thread nor post there: the reply goes
        # through the shortcut's response_url, saying what to do.
        invite = f"invite me (`/invite @{services.bot_name}`)" if services.bot_name else "invite me"
        hint = "" if outcome.message in (NO_DMS, ALREADY_SAVED) else (
            f"{outcome.message}\n{NOT_A_MEMBER_TEXT.format(invite=invite)}")
        tell_privately(client, respond, body, outcome.message, thread_ts=message.get("thread_ts"),
                       if_not_member=hint)
