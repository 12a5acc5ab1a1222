"""Edits and deletions of a saved reply (message_changed / message_deleted): the saved answer follows."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    """Register before bot.listeners.events.message: Bolt runs the first listener that matches."""

    @app.event({"type": "message", "subtype": "message_changed"})
    def on_message_changed(event: dict) -> None:
        message = event.get("message") or {}
        if services.learner is not None and event.get("channel") and message.get("ts"):
            services.learner.message_changed(event["channel"], message["ts"], message.get("text", ""))

    @app.event({"type": "message", "subtype": "message_deleted"})
    def on_message_deleted(event: dict) -> None:
        ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
        if services.learner is not None and event.get("channel") and ts:
            services.learner.message_deleted(event["channel"], ts)
