"""member_left_channel: the person no longer reads the channel's restricted sources (bot.access cache)."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    @app.event("member_left_channel")
    def on_member_left(event: dict) -> None:
        if event.get("channel") and event.get("user"):
            services.access.member_left(event["channel"], event["user"])
