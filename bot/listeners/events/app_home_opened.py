"""The Home tab opened: publish how to ask (and, for admins, the last days' figures)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_bolt import App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.admins import AdminCache, is_admin
from bot.home import INSIGHT_DAYS, TOP_GAPS, home_view
from bot.services import Services
from bot.state.saved_answers import ACTIVE, PENDING, SavedAnswer

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    admins = AdminCache()

    @app.event("app_home_opened")
    def on_home_opened(event: dict, context: BoltContext, client: WebClient) -> None:
        user = event.get("user", "")
        if event.get("tab", "home") != "home" or not user:
            return  # the Messages tab needs no view
        publish_home(services, client, user, bot_user_id=context.bot_user_id or "", admins=admins)


def publish_home(services: Services, client: WebClient, user: str, *, bot_user_id: str,
                 admins: AdminCache | None = None) -> None:
    """Build and publish `user`'s Home tab (admins also get the figures and the learned answers)."""
    insights = index = None
    extra: list[dict] = []
    if is_admin(user, settings=services.settings, client=client, cache=admins):
        insights = services.records.insights(since=time.time() - INSIGHT_DAYS * 86400, top=TOP_GAPS)
        index = _index_status(services)
        if services.learner is not None:
            # A private or shared channel's answers only for the admins who are its members.
            extra = learned_home_blocks(services.learner.store,
                                        readable=lambda saved: services.access.user_may_read(user, saved.source_name))
    view = home_view(
        bot_user_id=bot_user_id,
        auto_channels=services.rules.auto_answer,
        suggested=services.settings.suggested_prompts,
        insights=insights,
        index=index,
    )
    view["blocks"] = (view["blocks"] + extra)[:100]  # Slack's limit for a Home tab
    try:
        client.views_publish(user_id=user, view=view)
    except (SlackApiError, SlackClientError) as error:
        reason = error.response.get("error") if isinstance(error, SlackApiError) else error
        log.warning("views.publish for %s failed: %s", user, reason)


def learned_home_blocks(store, *, readable: Callable[[SavedAnswer], bool] = lambda saved: True) -> list[dict]:
    """The learned answers for the admins' Home: pending ones to review, the ones in use with their
    figures; those `readable` refuses are only counted."""
    from bot.learned_blocks import HOME_LIMIT, home_blocks

    listed = store.list((PENDING, ACTIVE))  # all: admin-only and small rows; the filter needs them
    shown = [saved for saved in listed if readable(saved)]
    pending = [saved for saved in shown if saved.status == PENDING]
    active = [saved for saved in shown if saved.status == ACTIVE][:HOME_LIMIT]
    return home_blocks(pending=pending, active=active, active_count=len(shown) - len(pending),
                       usage=store.usage([saved.id for saved in active]), hidden=len(listed) - len(shown))


def _index_status(services: Services) -> dict:
    """The refresher's status where it runs (serve), else the knowledge base's own."""
    if services.refresher is not None:
        return services.refresher.status()
    try:
        return services.kb.status()
    except Exception as error:  # noqa: BLE001 - the Home tab must render even when Milvus does not
        return {"index_error": type(error).__name__}
