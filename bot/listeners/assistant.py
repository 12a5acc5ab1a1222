"""The Slack assistant pane: suggested prompts when a thread starts, answers with a status line."""

from __future__ import annotations

import logging

from slack_bolt import App, Assistant, BoltContext, SetSuggestedPrompts

from bot.listeners.middleware import handles_inbox
from bot.listeners.questions import is_from_person, question_from
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    assistant = Assistant()

    @assistant.thread_started
    def start_thread(set_suggested_prompts: SetSuggestedPrompts) -> None:
        prompts = list(services.settings.suggested_prompts)[:4]  # Slack shows at most 4
        if prompts:
            set_suggested_prompts(prompts=prompts, title="Ask me about the docs")

    @assistant.thread_context_changed
    def context_changed() -> None:
        """The person moved to another channel beside the pane: answers do not use it, so nothing is
        kept (Bolt's default rewrites the bot's first reply in the thread to store it there)."""

    @assistant.user_message
    @handles_inbox(services)
    def on_user_message(event: dict, context: BoltContext) -> None:
        if not is_from_person(event, services.settings):
            return
        services.ask(
            question_from(event, bot_user_id=context.bot_user_id or "", assistant=True, team=context.team_id or "")
        )

    app.use(assistant)
