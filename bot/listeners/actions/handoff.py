""""Ask a human" on an answer: tag the channel's experts in the thread and record the hand-off."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks import ASK_HUMAN
from bot.handoff import (
    ALREADY,
    POST_FAILED,
    UNKNOWN_ANSWER,
    handoff_message,
    not_in_conversation,
)
from bot.listeners.private_replies import NOT_A_MEMBER, tell_privately
from bot.responder import slack_error_code
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    rules = services.rules
    records = services.records

    @app.action(ASK_HUMAN)
    def on_ask_human(ack: Ack, body: dict, action: dict, client: WebClient, respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id", "")
        row = records.answer(action.get("value", ""))
        if row is None or not channel:
            tell_privately(client, respond, body, UNKNOWN_ANSWER)
            return
        message = body.get("message") or {}
        # The record knows the thread of a public answer; a private /ask answer has none yet.
        thread_ts = row.thread_ts if row.channel == channel and row.thread_ts else (
            message.get("thread_ts") or message.get("ts") or "")
        contacts = rules.contacts_for(channel)
        payload = handoff_message(question=row.question, requested_by=user, contacts=contacts, sources=row.sources,
                                  may_read=lambda name: services.access.conversation_may_read(channel, user, name))
        # A double click (on any replica) must not tag people twice: the database decides who
        # posts, before posting. A private answer's thread exists only once the message is posted.
        if thread_ts:
            already = not records.record_handoff(row.id, channel=channel, thread_ts=thread_ts, user_id=user,
                                                 contacts=contacts)
        else:
            already = not records.claim_handoff(row.id, channel=channel, user_id=user, contacts=contacts)
        if already:
            tell_privately(client, respond, body, ALREADY, thread_ts=thread_ts)
            return
        try:
            posted = client.chat_postMessage(channel=channel, thread_ts=thread_ts or None, **payload)
        except (SlackApiError, SlackClientError) as error:
            code = slack_error_code(error)
            log.warning("could not post the hand-off in %s: %s", channel, code)
            records.release_handoff(row.id, channel=channel, thread_ts=thread_ts)  # a click again tries again
            # Where the bot is not a member (an /ask answer often is), say so and what to do.
            text = not_in_conversation(channel=channel, contacts=contacts, bot_name=services.bot_name) \
                if code in NOT_A_MEMBER else POST_FAILED
            tell_privately(client, respond, body, text, thread_ts=thread_ts)
            return
        if not thread_ts:  # a new top-level message: its thread is where people answer
            records.finish_handoff(row.id, channel=channel, thread_ts=posted.get("ts", ""))
        log.info("hand-off in %s/%s to %d contact(s) by %s", channel, thread_ts or posted.get("ts"), len(contacts), user)
