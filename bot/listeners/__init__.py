"""Slack listeners, one small handler per file; `register` wires them all."""

from __future__ import annotations

import logging

from slack_bolt import App

from bot.listeners import assistant, middleware, unhandled
from bot.listeners.actions import feedback, handoff, learned, share
from bot.listeners.commands import register as register_commands
from bot.listeners.events import member_joined_channel, member_left_channel, subteam_members_changed
from bot.listeners.events import app_home_opened, app_mention, channel_privacy, message, message_edits, reaction_added
from bot.listeners.shortcuts import save_answer
from bot.access import indexed_sources, known_sources
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    middleware.register(app, services)  # first: retries are dropped before any listener
    assistant.register(app, services)  # before `message`: it claims assistant-thread messages
    app_mention.register(app, services)
    message_edits.register(app, services)  # before `message`: edits and deletions of saved replies
    channel_privacy.register(app, services)  # before `message`: a channel made private
    message.register(app, services)
    feedback.register(app, services)
    handoff.register(app, services)
    share.register(app, services)
    app_home_opened.register(app, services)
    member_joined_channel.register(app, services)  # SOURCE_ACCESS membership cache (bot.access)
    member_left_channel.register(app, services)
    subteam_members_changed.register(app, services)
    reaction_added.register(app, services)
    save_answer.register(app, services)
    learned.register(app, services)
    register_commands(app, services)
    unhandled.register(app)  # last: acknowledges what no listener above took
    _check_channel_sources(services)


def _check_channel_sources(services: Services) -> None:
    """Warn about CHANNEL_SOURCES names no source has: a typo there silently empties a channel's answers."""
    known = known_sources(indexed_sources(services.kb, services.settings))
    if known is None:
        return  # reported where the index is built
    unknown = services.rules.unknown_sources(known)
    if unknown:
        log.warning("CHANNEL_SOURCES names %s, which KNOWLEDGE_SOURCES does not define (known: %s)",
                    ", ".join(unknown), ", ".join(sorted(known)))
    # SOURCE_ACCESS naming an unknown source is refused earlier (bot.access.check_source_access).
