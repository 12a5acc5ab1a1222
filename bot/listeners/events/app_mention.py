"""@mention in a channel: answer in a thread under the question."""

from __future__ import annotations

from slack_bolt import App, BoltContext

from bot.listeners.middleware import handles_inbox
from bot.listeners.questions import is_from_person, question_from
from bot.services import Services


def register(app: App, services: Services) -> None:
    @app.event("app_mention")
    @handles_inbox(services)
    def on_mention(event: dict, context: BoltContext) -> None:
        if not is_from_person(event, services.settings):
            return
        # The event does not say whether its channel is private (their ids start with C too).
        services.ask(question_from(event, bot_user_id=context.bot_user_id or "", team=context.team_id or "",
                                   lookup=lambda channel: services.kinds.kind(channel, client=context.client)))
