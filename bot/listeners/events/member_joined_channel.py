"""member_joined_channel: the person may now read the channel's restricted sources (bot.access cache)."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    @app.event("member_joined_channel")
    def on_member_joined(event: dict) -> None:
        if event.get("channel") and event.get("user"):
            services.access.member_joined(event["channel"], event["user"])
