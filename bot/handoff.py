"""Hand a question to people: the thread message that tags the channel's experts."""

from __future__ import annotations

from collections.abc import Callable

from bot.blocks import source_line
from bot.channels import mention
from bot.mrkdwn import clip, escape, text_object
from knowledge.types import Citation

NO_CONTACTS = "No experts are configured for this channel: anyone who knows, please jump in."
ALREADY = "A person was already asked to help in this thread."
UNKNOWN_ANSWER = "Sorry, I can't find that answer any more, so I can't hand it over."
POST_FAILED = "Sorry, I couldn't post in this channel to reach the team. Please ask them directly."
QUOTE_LIMIT = 1500  # the question as quoted; Slack sections take 3,000
SOURCES_LIMIT = 3000  # Slack's section text
NOT_HERE = "I'm not a member of this channel, so I couldn't ask the team here."
NOT_IN_DMS = "I can't post in a direct message between people, so I couldn't ask the team here."


def citations_from(sources: list[dict]) -> list[Citation]:
    """The citations stored with an answer (bot.records) as `Citation`s; malformed entries are skipped."""
    citations = []
    for item in sources or []:
        try:
            citations.append(
                Citation(
                    number=int(item["number"]),
                    title=str(item.get("title", "")),
                    heading_path=tuple(item.get("heading_path") or ()),
                    url=str(item.get("url", "")),
                    source=str(item.get("source", "")),
                    source_name=str(item.get("source_name", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return citations


def not_in_conversation(*, channel: str, contacts: tuple[str, ...], bot_name: str = "") -> str:
    """What the person is told when the bot may not post the hand-off where they asked (it is not
    a member): why, and what they can do (clicking again tries again)."""
    reach = f" You can also reach the team directly: {' '.join(mention(c) for c in contacts)}." if contacts else ""
    if channel.startswith("D"):  # a direct message between people: no app can be added to it
        return (f"{NOT_IN_DMS} Ask in a channel I'm in (mention me there, or use `/ask`) "
                f"and click *Ask a human* on that answer.{reach}")
    invite = f"Invite me (`/invite @{bot_name}`)" if bot_name else "Invite me to it"
    return f"{NOT_HERE} {invite} and click *Ask a human* again, or ask in a channel I'm in.{reach}"


def handoff_message(*, question: str, requested_by: str, contacts: tuple[str, ...], sources: list[dict],
                    may_read: Callable[[str], bool] | None = None) -> dict:
    """The `text` + `blocks` posted in the thread: who asked, who is tagged, the question, the bot's sources.

    `may_read(source_name)` says whether the channel may read a source (bot.access); the
    sources it may not read are left out of the message.
    """
    tags = " ".join(mention(contact) for contact in contacts)
    who = f"<@{requested_by}> asked for a person to help" if requested_by else "A person was asked to help"
    head = f"🙋 {who}: {tags}" if tags else f"🙋 {who}. {NO_CONTACTS}"
    body = f"*Question*\n> {_quoted(question)}"
    citations = [c for c in citations_from(sources) if may_read is None or may_read(c.source_name)]
    lines = [source_line(c) for c in sorted(citations, key=lambda c: c.number)]
    found = _listed("*What the bot looked at*", lines) if lines else "_The bot found nothing relevant in the docs._"
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": head}},
        {"type": "section", "text": text_object(body)},  # the asker's words: shown as written
        {"type": "section", "text": text_object(found)},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "The bot stays quiet in this thread now."}]},
    ]
    return {"text": f"{head}\n{body}", "blocks": blocks}


def _quoted(question: str) -> str:
    """The question on one line, escaped, cut to QUOTE_LIMIT without leaving half an entity."""
    return clip(escape(" ".join(question.split())), QUOTE_LIMIT)


def _listed(title: str, lines: list[str]) -> str:
    """`title` and as many whole lines as fit one section (a cut line would break its link)."""
    shown = title
    for n, line in enumerate(lines):
        more = f"\n_and {len(lines) - n - 1} more_" if n < len(lines) - 1 else ""
        rest = f"\n_and {len(lines) - n} more_"
        if len(f"{shown}\n{line}{more}") > SOURCES_LIMIT:
            return shown + rest
        shown = f"{shown}\n{line}"
    return shown
