"""Who may run admin commands (/reindex): ADMIN_USER_IDS, else Slack's own admins.

When ADMIN_USER_IDS lists anyone, exactly those users are admins. When it is
empty and ADMINS_FROM_SLACK is true, workspace admins and owners are (users.info
`is_admin` / `is_owner`, needs the users:read scope); answers are cached briefly.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

from cachetools import TTLCache
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.settings import BotSettings

log = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS = 300.0  # a demoted admin loses access within five minutes
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")


class AdminCache:
    """users.info answers (is the user a workspace admin or owner?) for a short time; thread-safe."""

    def __init__(self, *, ttl: float = DEFAULT_CACHE_SECONDS, max_entries: int = 1024) -> None:
        self._cache: TTLCache[str, bool] = TTLCache(maxsize=max_entries, ttl=ttl)
        self._lock = threading.Lock()

    def get(self, user_id: str) -> bool | None:
        with self._lock:
            return self._cache.get(user_id)

    def put(self, user_id: str, is_admin: bool) -> None:
        with self._lock:
            self._cache[user_id] = is_admin


def parse_user_ids(value: str | Iterable[str]) -> frozenset[str]:
    """"U1, U2 <@U3>" (or a list) -> {"U1", "U2", "U3"}; blanks dropped."""
    parts = re.split(r"[\s,;]+", value) if isinstance(value, str) else list(value)
    ids = {part.strip().strip("<>@").split("|")[0].upper() for part in parts}
    ids.discard("")
    for user_id in ids:
        if not _USER_ID.match(user_id):
            log.warning("ADMIN_USER_IDS: %r does not look like a Slack user id (U... or W...)", user_id)
    return frozenset(ids)


def is_admin(user_id: str, *, settings: BotSettings, client: WebClient, cache: AdminCache | None = None) -> bool:
    """True when `user_id` may run admin commands; never raises (a failed lookup means no)."""
    if not user_id:
        return False
    listed = parse_user_ids(settings.admin_user_ids)
    if listed:
        return user_id.upper() in listed
    if not settings.admins_from_slack:
        return False
    known = cache.get(user_id) if cache is not None else None
    if known is not None:
        return known
    try:
        user = client.users_info(user=user_id).get("user") or {}
    except (SlackApiError, SlackClientError) as error:
        reason = error.response.get("error") if isinstance(error, SlackApiError) else error
        # Not cached: the next attempt asks again (a missing users:read scope shows here).
        log.warning("users.info for an admin check failed (%s); treating %s as not an admin", reason, user_id)
        return False
    answer = not user.get("deleted") and bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
    if cache is not None:
        cache.put(user_id, answer)
    return answer
