"""`/reindex`: admins refresh the docs index or read its status; every answer is private.

    /reindex          incremental refresh (only changed chunks are embedded)
    /reindex full     rebuild the index from scratch (also: rebuild)
    /reindex status   last and next refresh, running one, chunks and sources
    /reindex help     usage (anything else too)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.admins import AdminCache, is_admin
from bot.services import Services

log = logging.getLogger(__name__)

COMMAND = "/reindex"
USAGE = (
    "*Usage* (admins only):\n"
    "• `/reindex` – refresh the docs index: only changed sections are re-embedded\n"
    "• `/reindex full` – rebuild the whole index (slower; the old one serves until it's done)\n"
    "• `/reindex status` – last and next refresh, chunks in the index, sources"
)
REFUSAL = (
    "Sorry, only admins can refresh the docs index. "
    "If answers look out of date, please tell one of the bot's admins."
)
NOT_AVAILABLE = "Index refresh is not available in this process."
# Slack takes at most 5 messages on a response_url, within 30 minutes.
RESPONSE_URL_USES = 5
RESPONSE_URL_SECONDS = 25 * 60


class PrivateReply:
    """Messages only one person sees: ephemeral via response_url while it lasts, then a DM."""

    def __init__(
        self,
        *,
        respond: Respond,
        client: WebClient,
        user_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._respond = respond
        self._client = client
        self._user_id = user_id
        self._clock = clock
        self._started = clock()
        self._uses = 0
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        """Deliver `text`; failures are logged, never raised (it runs on worker threads)."""
        with self._lock:
            use_url = self._uses < RESPONSE_URL_USES and self._clock() - self._started < RESPONSE_URL_SECONDS
            if use_url:
                self._uses += 1
        if use_url:
            try:
                response = self._respond(text=text, response_type="ephemeral")
                if response.status_code == 200:
                    return
                log.info("response_url answered %s; sending a direct message instead", response.status_code)
            except (SlackClientError, OSError, ValueError) as error:
                log.info("response_url failed (%s); sending a direct message instead", error)
        try:
            # Posting to a user id lands in the app's Messages tab with that person.
            self._client.chat_postMessage(channel=self._user_id, text=text)
        except (SlackApiError, SlackClientError) as error:
            reason = error.response.get("error") if isinstance(error, SlackApiError) else error
            log.warning("could not message %s privately: %s", self._user_id, reason)


def register(app: App, services: Services) -> None:
    admins = AdminCache()

    @app.command(COMMAND)
    def on_reindex(ack: Ack, command: dict, respond: Respond, client: WebClient) -> None:
        ack()  # at once: Slack shows an error after 3 s, and admin checks may call users.info
        user_id = command.get("user_id", "")
        reply = PrivateReply(respond=respond, client=client, user_id=user_id)
        action = " ".join((command.get("text") or "").lower().split())[:40]  # logged below: kept short
        if not is_admin(user_id, settings=services.settings, client=client, cache=admins):
            log.info("%s %r refused for %s (not an admin)", COMMAND, action, user_id)
            reply(REFUSAL)
            return
        # Looked up per call: serve() sets it; apps built elsewhere (tests, tools) may have none.
        refresher = services.refresher
        if refresher is None:
            reply(NOT_AVAILABLE)
            return
        log.info("%s %r by %s", COMMAND, action, user_id)
        if action in ("", "full", "rebuild"):
            answered = threading.Event()

            def notify(text: str) -> None:
                answered.wait(10)  # "Refresh started" first, even when the refresh is quicker
                reply(text)

            reply(refresher.request(action != "", notify, by=f"<@{user_id}>"))
            answered.set()
        elif action == "status":
            reply(refresher.format_status())
        else:
            reply(USAGE)
