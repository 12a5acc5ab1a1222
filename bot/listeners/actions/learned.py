"""Buttons on saved answers: Undo (thread confirmation); Approve / Edit / Reject / Remove (admins' Home)."""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.learned_blocks import (
    ANSWER_INPUT, EDIT_VIEW, LEARN_APPROVE, LEARN_EDIT, LEARN_REJECT, LEARN_REMOVE, LEARN_UNDO, QUESTION_INPUT,
    edit_view,
)
from bot.listeners.events.app_home_opened import publish_home
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    def may_review(user: str, saved_id: str) -> bool:
        """A private or shared channel's answer is reviewed only by admins who are its members
        (its Home entry is hidden from the others; a stale view's button must not do more)."""
        saved = services.learner.store.get(saved_id) if services.learner else None
        if saved is None or services.access.user_may_read(user, saved.source_name):
            return True  # an unknown id: the learner says it is gone
        log.info("review of %s by %s refused: not a member of %s", saved_id, user, saved.channel)
        return False

    @app.action(LEARN_UNDO)
    def on_undo(ack: Ack, body: dict, action: dict, client: WebClient) -> None:
        ack()
        learner = services.learner
        user = (body.get("user") or {}).get("id", "")
        if learner is None:
            return
        outcome = learner.undo(action.get("value", ""), user)
        if not outcome.ok and outcome.message:
            channel = (body.get("channel") or {}).get("id", "")
            thread_ts = (body.get("message") or {}).get("thread_ts")
            _tell(client, channel, user, outcome.message, thread_ts)

    @app.action(re.compile(f"^({LEARN_APPROVE}|{LEARN_REJECT}|{LEARN_REMOVE}|{LEARN_EDIT})$"))
    def on_review(ack: Ack, body: dict, action: dict, client: WebClient, context: BoltContext) -> None:
        ack()
        learner = services.learner
        user = (body.get("user") or {}).get("id", "")
        if learner is None or not learner.is_admin(user):
            log.info("%s on a saved answer by %s, who is not an admin", action.get("action_id"), user)
            return
        saved_id = action.get("value", "")
        kind = action.get("action_id")
        if not may_review(user, saved_id):
            return
        if kind == LEARN_EDIT:
            saved = learner.store.get(saved_id)
            if saved is None:
                return
            try:
                client.views_open(trigger_id=body.get("trigger_id", ""), view=edit_view(saved))
            except (SlackApiError, SlackClientError) as error:
                log.warning("views.open for the edit modal failed: %s", getattr(error, "response", {}) and
                            error.response.get("error"))
            return
        if kind == LEARN_APPROVE:
            learner.approve(saved_id, user)
        elif kind == LEARN_REJECT:
            learner.reject(saved_id, user)
        else:
            learner.remove(saved_id, user, note=f"Removed by <@{user}>: I won't use this answer any more.")
        publish_home(services, client, user, bot_user_id=context.bot_user_id or "")

    @app.view(EDIT_VIEW)
    def on_edit_submitted(ack: Ack, body: dict, view: dict, client: WebClient, context: BoltContext) -> None:
        values = (view.get("state") or {}).get("values") or {}
        question = ((values.get(QUESTION_INPUT) or {}).get(QUESTION_INPUT) or {}).get("value") or ""
        answer = ((values.get(ANSWER_INPUT) or {}).get(ANSWER_INPUT) or {}).get("value") or ""
        errors = {key: "Please fill this in." for key, value in ((QUESTION_INPUT, question), (ANSWER_INPUT, answer))
                  if not value.strip()}
        if errors:
            ack(response_action="errors", errors=errors)
            return
        ack()
        learner = services.learner
        user = (body.get("user") or {}).get("id", "")
        if learner is None or not learner.is_admin(user) or not may_review(user, view.get("private_metadata", "")):
            return
        learner.approve(view.get("private_metadata", ""), user, question=question.strip(), answer=answer.strip())
        publish_home(services, client, user, bot_user_id=context.bot_user_id or "")


def _tell(client: WebClient, channel: str, user: str, text: str, thread_ts: str | None) -> None:
    if not channel or not user:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text, thread_ts=thread_ts)
    except (SlackApiError, SlackClientError) as error:
        log.info("chat.postEphemeral failed: %s", getattr(error, "response", {}) and error.response.get("error"))
