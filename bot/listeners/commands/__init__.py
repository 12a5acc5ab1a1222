"""Slash commands, one module each; `register` wires them all."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners.commands import ask, reindex
from bot.services import Services


def register(app: App, services: Services) -> None:
    """Register every slash command listener."""
    reindex.register(app, services)
    ask.register(app, services)
