"""Replies only the person who clicked or used a shortcut sees, also where the bot is not a member."""

from __future__ import annotations

import logging

from slack_bolt import Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.responder import slack_error_code

log = logging.getLogger(__name__)

# Slack's answer when the bot is not in the conversation: not_in_channel (a public channel),
# channel_not_found (a private channel or a direct message between people it cannot see).
NOT_A_MEMBER = frozenset({"not_in_channel", "channel_not_found"})


def tell_privately(client: WebClient, respond: Respond | None, body: dict, text: str, *,
                   thread_ts: str | None = None, if_not_member: str = "") -> None:
    """Say `text` so that only the person behind `body` (a click or a message shortcut) sees it.

    chat.postEphemeral needs the bot in the conversation; the payload's response_url does not
    (Slack sends one with clicks on messages and with message shortcuts). A click on an ephemeral
    message (a private /ask answer, often where the bot is not a member) is answered through the
    response_url; otherwise chat.postEphemeral, and the response_url when Slack refuses it, with
    `if_not_member` instead of `text` (when given) if the bot is not in that conversation.
    """
    user = (body.get("user") or {}).get("id", "")
    channel = (body.get("channel") or {}).get("id", "")
    if channel and user and not (body.get("container") or {}).get("is_ephemeral"):
        try:
            client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts or None)
            return
        except (SlackApiError, SlackClientError) as error:
            code = slack_error_code(error)
            log.info("chat.postEphemeral in %s failed (%s): replying through the response_url", channel, code)
            if code in NOT_A_MEMBER and if_not_member:
                text = if_not_member
    respond_privately(respond, text, thread_ts=thread_ts)


def respond_privately(respond: Respond | None, text: str, *, thread_ts: str | None = None) -> None:
    """`text` through the payload's response_url, as a new ephemeral message; failures are logged."""
    if respond is None or respond.response_url is None:
        log.info("no response_url to reply through: the person is not told %r", text[:60])
        return
    try:
        response = respond(text=text, response_type="ephemeral", replace_original=False, thread_ts=thread_ts or None)
        if response.status_code != 200:
            log.warning("response_url answered %s", response.status_code)
    except Exception as error:  # noqa: BLE001 - a listener must not fail on a dropped connection
        log.warning("replying through the response_url failed: %s", type(error).__name__)
