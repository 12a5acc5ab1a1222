"""A channel made private (channel_convert_to_private) or shared with another organisation
(channel_shared): the replies saved there stop being the whole team's answers."""

from __future__ import annotations

from slack_bolt import App

from bot.services import Services


def register(app: App, services: Services) -> None:
    """Register before bot.listeners.events.message: Bolt runs the first listener that matches."""

    def became_private(event: dict) -> None:
        channel = event.get("channel") or ""
        if not channel:
            return
        services.kinds.forget(channel)  # its next questions count as private ones
        services.access.channel_changed(channel)  # on the other replicas too, at their next beat
        if services.learner is not None:
            services.learner.channel_became_private(channel)

    app.event({"type": "message", "subtype": "channel_convert_to_private"})(became_private)
    app.event("channel_shared")(became_private)
