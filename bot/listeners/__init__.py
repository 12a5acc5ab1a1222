"""Slack listeners, one small handler per file; `register` wires them all."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import assistant, middleware
from bot.listeners.actions import feedback, handoff, share
from bot.listeners.commands import register as register_commands
from bot.listeners.events import app_home_opened, app_mention, message
from bot.services import Services


def register(app: App, services: Services) -> None:
    middleware.register(app, services)  # first: retries are dropped before any listener
    assistant.register(app, services)  # before `message`: it claims assistant-thread messages
    app_mention.register(app, services)
    message.register(app, services)
    feedback.register(app, services)
    handoff.register(app, services)
    share.register(app, services)
    app_home_opened.register(app, services)
    register_commands(app, services)
