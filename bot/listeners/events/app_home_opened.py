"""The Home tab opened: publish how to ask (and, for admins, the last days' figures)."""

from __future__ import annotations

import logging
import time

from slack_bolt import App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.admins import AdminCache, is_admin
from bot.home import INSIGHT_DAYS, TOP_GAPS, home_view
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    rules = services.rules
    admins = AdminCache()

    @app.event("app_home_opened")
    def on_home_opened(event: dict, context: BoltContext, client: WebClient) -> None:
        user = event.get("user", "")
        if event.get("tab", "home") != "home" or not user:
            return  # the Messages tab needs no view
        insights = index = None
        if is_admin(user, settings=services.settings, client=client, cache=admins):
            insights = services.records.insights(since=time.time() - INSIGHT_DAYS * 86400, top=TOP_GAPS)
            index = _index_status(services)
        view = home_view(
            bot_user_id=context.bot_user_id or "",
            auto_channels=rules.auto_answer,
            suggested=services.settings.suggested_prompts,
            insights=insights,
            index=index,
        )
        try:
            client.views_publish(user_id=user, view=view)
        except (SlackApiError, SlackClientError) as error:
            reason = error.response.get("error") if isinstance(error, SlackApiError) else error
            log.warning("views.publish for %s failed: %s", user, reason)


def _index_status(services: Services) -> dict:
    """The refresher's status where it runs (serve), else the knowledge base's own."""
    if services.refresher is not None:
        return services.refresher.status()
    try:
        return services.kb.status()
    except Exception as error:  # noqa: BLE001 - the Home tab must render even when Milvus does not
        return {"index_error": type(error).__name__}
