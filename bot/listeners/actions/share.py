""""Share in channel" on a private /ask answer: post it publicly where it was asked."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.blocks import SHARE_ANSWER, answer_messages
from bot.handoff import UNKNOWN_ANSWER, citations_from
from bot.mrkdwn import escape, text_object
from bot.services import Services
from knowledge.types import Answer

log = logging.getLogger(__name__)

NOT_IN_CHANNEL = "I can't post in this channel. Invite me first (`/invite @docsbot`), then share again."
ALREADY_SHARED = "This answer was already shared."
RESTRICTED = "I can't share this answer here: it cites {names}, which not everyone in this channel may read."
QUESTION_LIMIT = 500


def register(app: App, services: Services) -> None:
    records = services.records

    @app.action(SHARE_ANSWER)
    def on_share(ack: Ack, body: dict, action: dict, client: WebClient, respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        channel = (body.get("channel") or {}).get("id", "")
        row = records.answer(action.get("value", ""))
        if row is None or not channel:
            respond(text=UNKNOWN_ANSWER, response_type="ephemeral", replace_original=False)
            return
        if row.thread_ts:  # moved into a channel thread by an earlier click
            respond(text=ALREADY_SHARED, response_type="ephemeral", replace_original=False)
            return
        citations = citations_from(row.sources)
        hidden = sorted({c.source_name or "an unnamed source" for c in citations
                         if not services.access.conversation_may_read(channel, user, c.source_name)})
        if hidden:
            log.info("share in %s refused: cites restricted %s", channel, ", ".join(hidden))
            respond(text=RESTRICTED.format(names=", ".join(f"`{escape(n)}`" for n in hidden)),
                    response_type="ephemeral", replace_original=False)
            return
        # One click wins, on whichever replica it lands, so a double click cannot post it twice.
        if not records.claim_share(row.id):
            respond(text=ALREADY_SHARED, response_type="ephemeral", replace_original=False)
            return
        answer = Answer(question=row.question, text=row.answer_text, status=row.status,
                        citations=citations, note=row.note)
        messages = answer_messages(answer, record_id=row.id)
        asked = escape(" ".join(row.question.split()))[:QUESTION_LIMIT]
        header = {"type": "context", "elements": [text_object(f"<@{user}> asked: {asked}")]}
        messages[0] = {**messages[0], "blocks": [header, *messages[0]["blocks"]]}
        try:
            first = client.chat_postMessage(channel=channel, **messages[0])
            first_ts = first.get("ts", "")
            for message in messages[1:]:
                client.chat_postMessage(channel=channel, thread_ts=first_ts, **message)
        except SlackApiError as error:
            records.unclaim_share(row.id)
            code = error.response.get("error")
            log.info("sharing an answer in %s failed: %s", channel, code)
            text = NOT_IN_CHANNEL if code in ("not_in_channel", "channel_not_found") else (
                f"Sorry, I couldn't share the answer ({code}).")
            respond(text=text, response_type="ephemeral", replace_original=False)
            return
        except SlackClientError as error:
            records.unclaim_share(row.id)
            log.warning("sharing an answer in %s failed: %s", channel, error)
            return
        # Replies under the shared answer are follow-ups the bot answers, as for any answer.
        records.move_answer(row.id, channel=channel, thread_ts=first_ts, message_ts=first_ts)
        respond(delete_original=True)
