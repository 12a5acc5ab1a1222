"""subteam_members_changed: a user group's members changed (bot.access cache)."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    @app.event("subteam_members_changed")
    def on_group_changed(event: dict) -> None:
        if event.get("subteam_id"):
            services.access.group_changed(event["subteam_id"], added=event.get("added_users") or (),
                                          removed=event.get("removed_users") or ())
