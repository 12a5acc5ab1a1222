"""Messages: every DM is a question; in channels, follow-ups in threads the bot answered."""

from __future__ import annotations

from slack_bolt import App, BoltContext

from bot.listeners.questions import is_from_person, question_from
from bot.services import Services


def register(app: App, services: Services) -> None:
    settings = services.settings

    @app.event("message")
    def on_message(event: dict, context: BoltContext) -> None:
        if not is_from_person(event, settings):
            return
        bot_user_id = context.bot_user_id or ""
        if event.get("channel_type") == "im":
            services.ask(question_from(event, bot_user_id=bot_user_id, team=context.team_id or ""))
            return
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts") or not settings.answer_thread_followups:
            return
        if bot_user_id and f"<@{bot_user_id}" in event.get("text", ""):
            return  # the app_mention listener answers it
        if services.records.answered_thread(event["channel"], thread_ts):
            services.ask(question_from(event, bot_user_id=bot_user_id, team=context.team_id or ""))
