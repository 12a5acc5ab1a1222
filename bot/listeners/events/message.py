"""Messages: every DM is a question (greetings and thanks are small talk: Services.ask); in
channels, follow-ups in threads the bot answered, and every new question in AUTO_ANSWER_CHANNELS.
Threads handed to a human are left to people."""

from __future__ import annotations

import re

from slack_bolt import App, BoltContext

from bot.listeners.middleware import handles_inbox
from bot.listeners.questions import is_from_person, question_from
from bot.services import Services
from bot.triage import looks_like_question


def register(app: App, services: Services) -> None:
    settings = services.settings
    rules = services.rules

    @app.event("message")
    @handles_inbox(services)
    def on_message(event: dict, context: BoltContext) -> None:
        if not is_from_person(event, settings):
            return
        bot_user_id = context.bot_user_id or ""
        if event.get("channel_type") == "im":
            services.ask(question_from(event, bot_user_id=bot_user_id, team=context.team_id or ""))
            return
        thread_ts = event.get("thread_ts")
        mentioned = bool(bot_user_id) and f"<@{bot_user_id}" in event.get("text", "")
        if not thread_ts or thread_ts == event.get("ts"):
            # A new top-level message: only auto-answer channels, and only questions (no model call else).
            if (
                not mentioned
                and not event.get("bot_id")  # other bots never, even when IGNORE_BOT_MESSAGES is off
                and rules.answers_everything(event["channel"])
                and looks_like_question(event.get("text", ""))
            ):
                services.ask(question_from(event, bot_user_id=bot_user_id, team=context.team_id or ""))
            return
        if not settings.answer_thread_followups or mentioned:
            return  # mentions: the app_mention listener answers them
        if services.records.handed_off(event["channel"], thread_ts):
            return  # people took over this thread
        text = event.get("text", "")
        if event.get("bot_id"):
            return  # another bot in the thread: following it up could loop between bots
        if _addresses_someone_else(text, bot_user_id) or not looks_like_question(text):
            return  # "thanks!", remarks and messages to colleagues need no answer (nor a model call)
        if services.in_thread(event["channel"], thread_ts):  # answered, answering or lately replied there
            services.ask(question_from(event, bot_user_id=bot_user_id, team=context.team_id or ""))


# <@U123>, <@U123|name>, <!subteam^S123>: a message for people, not for the bot.
_MENTION = re.compile(r"<(?:@([UW][A-Z0-9]+)|!subteam\^[A-Z0-9]+)[^>]*>")


def _addresses_someone_else(text: str, bot_user_id: str) -> bool:
    return any(match.group(1) != bot_user_id for match in _MENTION.finditer(text))
