"""RESOLVED_REACTION on a reply in the bot's thread: save it as an answer (if the person may)."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    wanted = services.settings.resolved_reaction

    @app.event("reaction_added")
    def on_reaction_added(event: dict) -> None:
        item = event.get("item") or {}
        # "white_check_mark::skin-tone-2" is the same reaction.
        if services.learner is None or event.get("reaction", "").split("::")[0] != wanted:
            return
        if item.get("type") != "message" or not item.get("channel") or not item.get("ts"):
            return
        # Silent when it does not qualify: people react with ✅ for many reasons.
        services.learner.capture(channel=item["channel"], message_ts=item["ts"], marker=event.get("user", ""),
                                 via="reaction")
