"""Acknowledge what no other listener took: events the bot does not use, and buttons, selects,
shortcuts or modals it no longer has (an older message's). Bolt answers those 404 and, in
Socket Mode, never acknowledges them: Slack then re-sends them and shows people an error."""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack, App

log = logging.getLogger(__name__)

_ANY = re.compile(".*")


def register(app: App) -> None:
    """Register last: Bolt runs the first listener that matches a request."""

    @app.event(_ANY)
    def on_other_event(event: dict) -> None:
        log.debug("event %s not used", event.get("type"))

    @app.action(_ANY)
    def on_other_action(ack: Ack, action: dict) -> None:
        ack()
        log.info("button %r has no listener (an older message's?)", action.get("action_id"))

    @app.shortcut(_ANY)
    def on_other_shortcut(ack: Ack, shortcut: dict) -> None:
        ack()
        log.info("shortcut %r has no listener", shortcut.get("callback_id"))

    @app.view(_ANY)
    def on_other_view(ack: Ack, view: dict) -> None:
        ack()
        log.info("view %r has no listener", view.get("callback_id"))

    @app.view_closed(_ANY)
    def on_view_closed(ack: Ack, view: dict) -> None:
        ack()  # a modal closed without submitting: nothing to do
        log.debug("view %r closed", view.get("callback_id"))

    @app.options(_ANY)
    def on_other_options(ack: Ack, payload: dict) -> None:
        ack(options=[])  # an external select the bot does not serve: no options rather than an error
        log.info("options for %r have no listener", payload.get("action_id"))
