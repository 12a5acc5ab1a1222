"""Block Kit for saved answers: the thread confirmation (with Undo), the admins' App Home list
(pending: Approve / Edit / Reject; in use: Remove) and the Edit modal.

Text people wrote (questions, replies) is escaped and sent with "verbatim": true, so
Slack neither links nor mentions anything in it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bot.mrkdwn import clip, escape, safe_url, text_object
from bot.state.saved_answers import PENDING, SavedAnswer, Usage

LEARN_UNDO = "learned_undo"
LEARN_APPROVE = "learned_approve"
LEARN_EDIT = "learned_edit"
LEARN_REJECT = "learned_reject"
LEARN_REMOVE = "learned_remove"
EDIT_VIEW = "learned_edit_view"  # the Edit modal's callback id
QUESTION_INPUT = "question"
ANSWER_INPUT = "answer"
HOME_LIMIT = 10  # of each list; `supportbot answers list` shows them all
_QUOTE = 300


def _text(text: str) -> dict:
    return text_object(clip(text, 3000))  # Slack refuses a section text over 3,000 characters


def _button(action_id: str, label: str, value: str, *, style: str = "") -> dict:
    button = {"type": "button", "action_id": action_id, "value": value,
              "text": {"type": "plain_text", "text": label, "emoji": True}}
    if style:
        button["style"] = style
    return button


def _short(text: str, width: int = _QUOTE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def confirmation_message(saved: SavedAnswer, *, title: str) -> dict:
    """The thread message saying the reply was saved (or waits for review), with an Undo button."""
    who = escape(saved.answered_by_name or saved.answered_by)
    question = escape(_short(saved.question))
    if saved.status == PENDING:
        head = (f"📌 Saved @{who}'s reply for review: once an admin approves it in my App Home, "
                f"I'll use it when someone asks “{question}”.")
    else:
        head = (f"📌 Saved @{who}'s reply as an answer: next time someone asks “{question}”, "
                f"I'll use it and cite it as _{escape(title)}_.")
    blocks = [
        {"type": "section", "text": _text(head)},
        {"type": "actions", "block_id": "learned", "elements": [_button(LEARN_UNDO, "Undo", saved.id)]},
    ]
    return {"text": head, "blocks": blocks}


def removed_message(note: str) -> dict:
    """What the confirmation becomes once the saved answer is undone, rejected or removed."""
    text = f"📌 {note}"
    return {"text": text, "blocks": [{"type": "context", "elements": [_text(text)]}]}


def _origin(saved: SavedAnswer) -> str:
    where = f"#{escape(saved.channel_name)}" if saved.channel_name else "Slack"
    date = time.strftime("%Y-%m-%d", time.gmtime(saved.answered_at))
    origin = f"{where} by @{escape(saved.answered_by_name or saved.answered_by)}, {date}"
    url = safe_url(saved.permalink)
    return f"<{url}|{origin}>" if url else origin


def home_blocks(*, pending: Sequence[SavedAnswer], active: Sequence[SavedAnswer], active_count: int,
                usage: dict[str, Usage], hidden: int = 0) -> list[dict]:
    """The admins' "Learned answers" section of the App Home; `hidden`: answers from channels the
    admin is not in, counted only."""
    blocks: list[dict] = [
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": "Learned answers (admins)", "emoji": True}},
        {"type": "section", "text": _text(
            f"*In use:* {active_count}   *Waiting for review:* {len(pending)}\n"
            "Replies saved from the bot's threads (✅ or *Save as answer*); cited as the team's answers.")},
    ]
    if hidden:
        blocks.append({"type": "context", "elements": [_text(
            f"{hidden} more from private or shared channels you are not in: admins who are members see and "
            "review them here (or the operator with `supportbot answers list`).")]})
    for saved in list(pending)[:HOME_LIMIT]:  # counted above in full
        blocks.append({"type": "section", "text": _text(
            f"*Pending:* {escape(_short(saved.question, 150))}\n> {escape(_short(saved.answer))}\n{_origin(saved)}")})
        blocks.append({"type": "actions", "block_id": f"review_{saved.id}", "elements": [
            _button(LEARN_APPROVE, "Approve", saved.id, style="primary"),
            _button(LEARN_EDIT, "Edit", saved.id),
            _button(LEARN_REJECT, "Reject", saved.id, style="danger"),
        ]})
    for saved in list(active)[:HOME_LIMIT]:
        used = usage.get(saved.id, Usage())
        figures = f"answered {used.answers} question(s) since · 👍 {used.helpful} / 👎 {used.not_helpful}"
        asked = "".join(f"\n• _{escape(_short(question, 120))}_" for question in used.questions)
        section = {"type": "section", "text": _text(
            f"{escape(_short(saved.question, 150))}\n{_origin(saved)} · {figures}{asked}")}
        section["accessory"] = _button(LEARN_REMOVE, "Remove", saved.id, style="danger")
        blocks.append(section)
    if not pending and not active and not hidden:
        blocks.append({"type": "context", "elements": [_text("_None yet._")]})
    return blocks


def edit_view(saved: SavedAnswer) -> dict:
    """The Edit modal for a pending answer: question and reply text; submitting approves it."""
    def field(block_id: str, label: str, value: str, *, multiline: bool) -> dict:
        return {"type": "input", "block_id": block_id, "label": {"type": "plain_text", "text": label},
                "element": {"type": "plain_text_input", "action_id": block_id, "multiline": multiline,
                            "initial_value": value[:3000]}}

    return {
        "type": "modal", "callback_id": EDIT_VIEW, "private_metadata": saved.id,
        "title": {"type": "plain_text", "text": "Edit saved answer"},
        "submit": {"type": "plain_text", "text": "Save and approve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [field(QUESTION_INPUT, "Question", saved.question, multiline=False),
                   field(ANSWER_INPUT, "Answer", saved.answer, multiline=True)],
    }
