"""Slash commands. `/reindex` (in the manifest) is added here by its own module."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    """Register every slash command listener (none yet besides what modules add)."""
