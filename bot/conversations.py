"""What kind of conversation a Slack channel id is, for events that do not say (app_mention).

The kind decides whether a question's text is private: private ones are never quoted to
admins and are blanked after a day (bot.state.records.PRIVATE_CONVERSATIONS). Private
channels created since 2021 have `C…` ids like public ones, so the id cannot tell; Slack's
conversations.info does, and it is cached. When Slack cannot say, the answer is "private"
(fail closed: a public question kept quiet costs little, a private one quoted costs a lot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)

KIND_SECONDS = 3600.0  # a channel turned private is seen as such within the hour
_SHARED = ("is_shared", "is_ext_shared", "is_org_shared", "is_pending_ext_shared")  # conversations.info flags


def kept_to_members(info: dict, channel: str) -> bool:
    """Whether a conversation (conversations.info's `channel`) is read by its members only: private,
    a group DM, or shared with another organisation or workspace (one customer's thread is never
    shown to another)."""
    return bool(info.get("is_private") or info.get("is_group") or info.get("is_mpim")
                or any(info.get(flag) for flag in _SHARED) or channel.startswith("G"))


class ConversationKinds:
    """channel, private, im or mpim per channel id, from conversations.info (cached)."""

    def __init__(self, *, ttl: float = KIND_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        # One lookup per channel at a time: mentions arriving together wait for the first one's.
        self._lookups: dict[str, threading.Lock] = {}

    def kind(self, channel: str, *, client: WebClient) -> str:
        """The conversation's kind; "private" when Slack does not answer (not cached then)."""
        if channel.startswith("D"):
            return "im"
        known = self._cached(channel)
        if known:
            return known
        with self._lock:
            lookup = self._lookups.setdefault(channel, threading.Lock())
        with lookup:
            return self._cached(channel) or self._look_up(channel, client)

    def _cached(self, channel: str) -> str:
        with self._lock:
            known = self._known.get(channel)
        return known[0] if known is not None and known[1] > self._clock() else ""

    def _look_up(self, channel: str, client: WebClient) -> str:
        try:
            info = client.conversations_info(channel=channel).get("channel") or {}
        except (SlackApiError, SlackClientError, OSError) as error:
            reason = error.response.get("error") if isinstance(error, SlackApiError) else type(error).__name__
            log.info("conversations.info for %s failed (%s): its questions count as private", channel, reason)
            return "private"
        kind = ("im" if info.get("is_im") else "mpim" if info.get("is_mpim")
                else "private" if kept_to_members(info, channel) else "channel")
        with self._lock:
            self._known[channel] = (kind, self._clock() + self._ttl)
        return kind

    def forget(self, channel: str) -> None:
        """Slack said the channel changed (made private, shared): ask again at its next question."""
        with self._lock:
            self._known.pop(channel, None)
