"""`/ask QUESTION`: a private answer (only the asker sees it) with a "Share in channel" button.

The answer uses the channel's sources (CHANNEL_SOURCES) like a public one, is
recorded like one, and arrives through the command's response_url.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable

from slack_bolt import Ack, App, BoltContext, Respond

from bot.blocks import answer_messages
from bot.channels import ChannelRules
from bot.mrkdwn import escape
from bot.responder import BUSY_TEXT
from bot.history import clean_text
from bot.services import BUSY, SHUTTING_DOWN_TEXT, Services
from bot.triage import is_small_talk
from knowledge.errors import KnowledgeError
from knowledge.types import Answer, Citation

log = logging.getLogger(__name__)

COMMAND = "/ask"
USAGE = "Ask me about the docs: `/ask how do I create a collection?` — only you see the answer."


def register(app: App, services: Services) -> None:
    rules = services.rules

    @app.command(COMMAND)
    def on_ask(ack: Ack, command: dict, respond: Respond, context: BoltContext) -> None:
        # Slack escapes &, < and > in command text like in messages: read it as the person wrote it,
        # without the bot's own mention ("/ask @docsbot" alone asks nothing).
        text = _without_handle(clean_text(command.get("text") or "", bot_user_id=context.bot_user_id or ""),
                               services.bot_name)
        if not text or is_small_talk(text):  # "/ask hi" to try it out: how to ask
            ack(text=USAGE, response_type="ephemeral")
            return
        if services.stopping:
            ack(text=SHUTTING_DOWN_TEXT, response_type="ephemeral")
            return
        # The placeholder rides on the acknowledgement: no extra call, shown at once.
        ack(text=escape(services.settings.placeholder_text), response_type="ephemeral")
        user, channel = command.get("user_id", ""), command.get("channel_id", "")
        user_key = f"{command.get('team_id', '')}:{user}"
        services.metrics.questions.inc()

        def answer() -> None:  # on a worker, holding the person's slot
            try:
                # The kind may take a conversations.info call.
                _answer(services, rules, respond, text=text, user=user, channel=channel,
                        conversation=_conversation(command, lookup=lambda channel: services.kinds.kind(
                            channel, client=context.client)))
            finally:
                services.release_slot(user_key)

        waiting = services.waiting
        decision = BUSY if waiting is not None and waiting.has(user_key) else services.limiter.try_acquire(user_key)
        if not decision.allowed:
            # As in threads: it waits for the person's earlier answer (or their minute) while their line has room.
            if waiting is None or not waiting.join(
                    user_key, start=lambda: services.pool.submit(answer) is not None,
                    give_up=lambda reason: _reply(respond, [{"text": SHUTTING_DOWN_TEXT if reason == "stopping"
                                                             else BUSY_TEXT}])):
                _reply(respond, [{"text": escape(decision.message)}])
            return
        if services.pool.submit(answer) is None:
            services.release_slot(user_key)
            services.metrics.record_error("pool_full")
            _reply(respond, [{"text": BUSY_TEXT}])


def _without_handle(text: str, handle: str) -> str:
    """Without a leading "@docsbot": a command whose text Slack does not escape sends the mention as typed."""
    if not handle:
        return text
    return re.sub(rf"^@{re.escape(handle)}(?![\w.-])[\s,:]*", "", text, flags=re.IGNORECASE).strip()


def _conversation(command: dict, *, lookup: Callable[[str], str]) -> str:
    """The kind of conversation /ask was typed in (private ones are never quoted to admins).

    `channel_name` is only a hint: a private channel's id starts with C and its name is its own,
    so what the payload does not settle is looked up (`lookup`: private when Slack cannot say)."""
    name, channel = command.get("channel_name") or "", command.get("channel_id") or ""
    if name == "directmessage" or channel.startswith("D"):
        return "im"
    if name.startswith("mpdm-"):
        return "mpim"
    if name == "privategroup" or channel.startswith("G"):
        return "private"
    return lookup(channel) if channel else "private"


def _answer(services: Services, rules: ChannelRules, respond: Respond, *, text: str, user: str, channel: str,
            conversation: str = "channel") -> None:
    """Runs on a worker: answer, record, replace the placeholder; errors become a short reply."""
    try:
        # Only the asker sees the answer: their own access counts (sharing it is checked again).
        sources = services.responder.source_names(channel, user, private=True)
        answer = services.kb.ask(text, source_names=sources)
    except KnowledgeError as error:
        services.metrics.record_error(type(error).__name__)
        _reply(respond, [{"text": escape(str(error))}])
        return
    except Exception:
        error_id = uuid.uuid4().hex[:8]
        services.metrics.record_error("unexpected")
        log.exception("/ask failed error_id=%s channel=%s", error_id, channel)
        _reply(respond, [{"text": f"Sorry, something went wrong while answering. (error id: `{error_id}`)"}])
        return
    # No thread yet: a shared answer gets one (bot.listeners.actions.share). The record also
    # lists uncited passages the channel may not read, so "Share in channel" refuses them too.
    recorded = with_restricted_passages(answer, lambda name: services.access.conversation_may_read(channel, user, name))
    record_id = services.records.record_answer(recorded, user_id=user, channel=channel, thread_ts="",
                                               conversation=conversation)
    _reply(respond, answer_messages(answer, record_id=record_id, private=True))
    services.metrics.observe_answer(answer)


def with_restricted_passages(answer: Answer, may_read) -> Answer:
    """The answer with every passage it was built from that `may_read(source_name)` refuses
    among its citations: the text may draw on a passage it does not cite."""
    cited = {c.number for c in answer.citations}
    extra = [
        Citation(number=n, title=p.chunk.title, heading_path=p.chunk.heading_path, url=p.chunk.url,
                 source=p.chunk.source, source_name=p.chunk.source_name)
        for n, p in enumerate(answer.passages, start=1)
        if n not in cited and not may_read(p.chunk.source_name)
    ]
    return dataclasses.replace(answer, citations=[*answer.citations, *extra]) if extra else answer


def _reply(respond: Respond, messages: list[dict]) -> None:
    """Replace the ephemeral placeholder with the first message, add the rest; failures are logged."""
    for index, message in enumerate(messages):
        try:
            response = respond(**message, response_type="ephemeral", replace_original=index == 0)
            if response.status_code != 200:
                log.warning("/ask response_url answered %s", response.status_code)
        except Exception as error:  # noqa: BLE001 - a worker must not die on a dropped connection
            log.warning("/ask reply failed: %s", type(error).__name__)
