""""Save as answer" (a message shortcut): the asker, a channel expert or an admin saves a reply."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.services import Services

log = logging.getLogger(__name__)

SAVE_ANSWER = "save_as_answer"  # the callback id in manifest.yaml


def register(app: App, services: Services) -> None:
    @app.shortcut(SAVE_ANSWER)
    def on_save_answer(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        learner = services.learner
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id", "")
        message = body.get("message") or {}
        if learner is None:
            _tell(client, channel, user, "Saving answers is turned off here (LEARN_FROM_THREADS).", message)
            return
        outcome = learner.capture(channel=channel, message_ts=message.get("ts") or body.get("message_ts", ""),
                                  marker=user, via="shortcut")
        if not outcome.ok and outcome.message:
            _tell(client, channel, user, outcome.message, message)


def _tell(client: WebClient, channel: str, user: str, text: str, message: dict) -> None:
    if not channel or not user:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=message.get("thread_ts"))
    except (SlackApiError, SlackClientError) as error:
        log.info("chat.postEphemeral failed: %s", getattr(error, "response", {}) and error.response.get("error"))
