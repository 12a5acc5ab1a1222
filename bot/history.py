"""Earlier turns of a Slack thread as `Turn`s, within a message and character budget."""

from __future__ import annotations

import logging
import re

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.slack_text import plain_text
from knowledge.types import Turn

log = logging.getLogger(__name__)

SOURCES_HEADING = "\n\n*Sources*\n"  # as bot.blocks writes it into the fallback text
_REPLIES_PAGE = 200
_MAX_PAGES = 5  # replies come oldest first: long threads need later pages for recent context


def clean_text(text: str, *, bot_user_id: str = "") -> str:
    """A Slack message as plain text: the bot's mention removed, entities decoded."""
    if not text:
        return ""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text)
    # <https://x|label> -> label (https://x); <@U1> -> @U1; <#C1|> -> #C1; <!here> -> @here; dates, groups...
    return re.sub(r"[ \t]{2,}", " ", plain_text(text)).strip()


def thread_history(
    client: WebClient,
    *,
    channel: str,
    thread_ts: str,
    before_ts: str,
    bot_user_id: str,
    bot_id: str = "",
    skip_texts: frozenset[str] = frozenset(),
    include_other_bots: bool = False,
    max_messages: int = 12,
    max_chars: int = 6000,
) -> list[Turn]:
    """The thread's messages before `before_ts`, newest kept first within the budget.

    Slack API failures give an empty history (logged): answering without context
    beats not answering.
    """
    if max_messages <= 0 or not thread_ts:
        return []
    try:
        messages = _replies(client, channel=channel, thread_ts=thread_ts)
    except SlackApiError as error:
        log.warning("conversations.replies failed for %s/%s: %s", channel, thread_ts, error.response.get("error"))
        return []
    except (SlackClientError, OSError) as error:  # Slack unreachable: answer without context
        log.warning("conversations.replies failed for %s/%s: %s", channel, thread_ts, type(error).__name__)
        return []
    turns: list[Turn] = []
    used = 0
    for message in reversed(messages):
        if float(message.get("ts", "0")) >= float(before_ts):
            continue  # the question itself and the bot's placeholder for it
        if message.get("subtype") not in (None, "bot_message", "thread_broadcast", "file_share"):
            continue
        own = message.get("user") == bot_user_id or (bot_id and message.get("bot_id") == bot_id)
        if not own and message.get("bot_id") and not include_other_bots:
            continue
        text = message.get("text", "")
        if own:
            # The answer's source list is noise for the rewrite; the [n] markers stay.
            text = text.split(SOURCES_HEADING, 1)[0]
        text = clean_text(text, bot_user_id=bot_user_id)
        if not text or text in skip_texts:
            continue
        if len(turns) >= max_messages or used + len(text) > max_chars:
            break
        used += len(text)
        turns.append(Turn(role="assistant" if own else "user", text=text))
    turns.reverse()
    return turns


def _replies(client: WebClient, *, channel: str, thread_ts: str) -> list[dict]:
    """The thread's messages, oldest first, following the cursor for up to _MAX_PAGES pages."""
    return read_thread(client, channel=channel, thread_ts=thread_ts)[0]


def read_thread(client: WebClient, *, channel: str, thread_ts: str, max_pages: int = _MAX_PAGES,
                page_size: int = _REPLIES_PAGE) -> tuple[list[dict], bool]:
    """The thread's messages, oldest first, following the cursor for up to `max_pages` pages, and
    whether that was all of it. Raises what the Slack client raises."""
    messages: list[dict] = []
    cursor = None
    for _ in range(max_pages):
        response = client.conversations_replies(channel=channel, ts=thread_ts, limit=page_size, cursor=cursor)
        messages.extend(response.get("messages") or [])
        cursor = (response.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return messages, True
    return messages, False
