"""Turning Slack message events into `Question`s, and which ones to ignore."""

from __future__ import annotations

from collections.abc import Callable

from bot.history import clean_text
from bot.responder import Question
from bot.settings import BotSettings

# Edits, deletions, joins... are not questions; these subtypes carry a person's (or a bot's) text.
_QUESTION_SUBTYPES = {None, "file_share", "thread_broadcast", "bot_message"}


def may_be_question(event: dict) -> bool:
    """A message or @mention with a person's (or a bot's) text: kept in the inbox until handled."""
    return event.get("type") in ("message", "app_mention") and event.get("subtype") in _QUESTION_SUBTYPES


def is_from_person(event: dict, settings: BotSettings) -> bool:
    """False for edits, deletions and other subtypes, and for bots when they are ignored."""
    if event.get("subtype") not in _QUESTION_SUBTYPES:
        return False
    if event.get("bot_id") or event.get("subtype") == "bot_message":
        return not settings.ignore_bot_messages
    return bool(event.get("user"))


# Slack's channel_type -> the kind recorded with the answer (bot.state.records.PRIVATE_CONVERSATIONS).
_CONVERSATIONS = {"channel": "channel", "group": "private", "im": "im", "mpim": "mpim"}


def conversation_kind(event: dict, *, assistant: bool = False, lookup: Callable[[str], str] | None = None) -> str:
    """channel, private, im, mpim or assistant. app_mention events carry no channel_type: a `D`
    id is a DM and a `G` id private; any other id is asked of `lookup` (bot.conversations),
    and counts as private without one, since private channels have `C` ids too."""
    if assistant:
        return "assistant"
    kind = _CONVERSATIONS.get(event.get("channel_type") or "")
    if kind:
        return kind
    channel = event.get("channel", "")
    if channel.startswith("D"):
        return "im"
    if channel.startswith("G") or lookup is None:
        return "private"
    return lookup(channel)


def question_from(event: dict, *, bot_user_id: str, assistant: bool = False, team: str = "",
                  lookup: Callable[[str], str] | None = None) -> Question:
    ts = event["ts"]
    return Question(
        text=clean_text(event.get("text", ""), bot_user_id=bot_user_id),
        channel=event["channel"],
        user=event.get("user") or event.get("bot_id", ""),
        thread_ts=event.get("thread_ts") or ts,
        message_ts=ts,
        assistant=assistant,
        team=team or event.get("team", ""),
        conversation=conversation_kind(event, assistant=assistant, lookup=lookup),
        files=bool(event.get("files")),
    )
