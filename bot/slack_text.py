"""A Slack message's mrkdwn as plain text, with people's names instead of user ids.

For saved answers: what gets indexed and shown to the model must read like prose
(`@Dana`, `#support`, link labels with their URLs), not like Slack markup. Code
spans and blocks keep their backticks (identifiers are what people search for).
"""

from __future__ import annotations

import html
import logging
import re
import threading
from collections.abc import Callable

from cachetools import TTLCache
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)

_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)
_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SUBTEAM = re.compile(r"<!subteam\^([A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
# Slack's other links (a phone number it auto-linked, slack://...): their label is the words.
_OTHER_LINK = re.compile(r"<[a-z][a-z0-9+.-]*:[^|>]*\|([^>]*)>|<([a-z][a-z0-9+.-]*:[^|>]+)>", re.IGNORECASE)
# *bold*, _italic_, ~strike~ between word boundaries (snake_case and 2*3 stay as they are).
_EMPHASIS = [re.compile(rf"(?<![\w{m}]){m}(?=\S)([^{m}\n]+?)(?<=\S){m}(?![\w{m}])") for m in (r"\*", "_", "~")]


def plain_text(text: str, *, user_name: Callable[[str], str] = lambda user: user) -> str:
    """Slack mrkdwn -> plain text: mentions become @name, links `label (url)`, emphasis dropped."""
    if not text:
        return ""
    pieces: list[str] = []
    last = 0
    for match in _CODE.finditer(text):  # code is kept verbatim (only entities decoded)
        pieces.append(_prose(text[last:match.start()], user_name))
        pieces.append(html.unescape(match.group(0)))
        last = match.end()
    pieces.append(_prose(text[last:], user_name))
    return re.sub(r"[ \t]+\n", "\n", "".join(pieces)).strip()


def _prose(text: str, user_name: Callable[[str], str]) -> str:
    text = _USER.sub(lambda m: "@" + (m.group(2) or user_name(m.group(1))), text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SUBTEAM.sub(lambda m: m.group(2) or "@" + m.group(1), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    text = _DATE.sub(r"\1", text)
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) and m.group(2) != m.group(1)
                     else m.group(1), text)
    text = _OTHER_LINK.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    for pattern in _EMPHASIS:
        text = pattern.sub(r"\1", text)
    return html.unescape(text)


class UserNames:
    """users.info display names, cached for an hour; the id itself when Slack cannot say."""

    def __init__(self, client: WebClient, *, ttl: float = 3600.0, max_entries: int = 2048) -> None:
        self._client = client
        self._cache: TTLCache[str, str] = TTLCache(maxsize=max_entries, ttl=ttl)
        self._lock = threading.Lock()

    def __call__(self, user_id: str) -> str:
        if not user_id:
            return ""
        with self._lock:
            known = self._cache.get(user_id)
        if known is not None:
            return known
        try:
            user = self._client.users_info(user=user_id).get("user") or {}
        except (SlackApiError, SlackClientError, OSError) as error:
            log.info("users.info for %s failed: %s", user_id, getattr(error, "response", {}) and
                     error.response.get("error"))
            return user_id  # not cached: asked again next time
        profile = user.get("profile") or {}
        name = (profile.get("display_name") or profile.get("real_name") or user.get("real_name")
                or user.get("name") or user_id)
        with self._lock:
            self._cache[user_id] = name
        return name
