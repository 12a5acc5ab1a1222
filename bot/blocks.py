"""Block Kit messages for an answer: text sections, numbered sources, 👍/👎 buttons.

Slack limits: 3,000 characters per section text, 50 blocks per message, and (not
documented: chat.postMessage answers msg_blocks_too_long) about 12,000 characters of
text in all of a message's blocks. Long answers are split at paragraph, then line
boundaries, never between a heading and its text; a code fence cut by a split is
closed and reopened so each part renders on its own. A source line is kept short
enough that no split ever cuts its link.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.mrkdwn import clip, escape, safe_url, text_object, to_mrkdwn
from knowledge.types import Answer, Citation

SECTION_LIMIT = 3000
BLOCK_LIMIT = 50
MESSAGE_TEXT_LIMIT = 10_000  # of all block text in one message: under Slack's ~12,000, with room to spare
LABEL_WIDTH = 200  # a source's title › headings as listed
URL_WIDTH = 2000  # a longer link is left out: its line must fit a section whole
FALLBACK_LIMIT = 3000  # the notification / screen-reader text
TEXT_LIMIT = 40_000  # a message's text without blocks (Slack: msg_too_long above it)
SOURCES_TITLE = "*Sources*"
FEEDBACK_UP = "feedback_up"
FEEDBACK_DOWN = "feedback_down"
ASK_HUMAN = "ask_human"  # bot.listeners.actions.handoff
SHARE_ANSWER = "share_answer"  # bot.listeners.actions.share: a private /ask answer made public
ABSTAINED_OFFER = "I couldn't find this in the docs. Want a person from the team to take a look?"
_FENCE = "```"
_REOPEN_RESERVE = 2 * (len(_FENCE) + 1)  # room for "```\n" at the start and "\n```" at the end
_HEADING = re.compile(r"\*[^*\n]+\*")  # a Markdown heading as bot.mrkdwn renders it: a bold line of its own


def split_text(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Split mrkdwn into parts of at most `limit` characters, keeping code fences balanced."""
    if not text:
        return []
    if limit <= _REOPEN_RESERVE + 1:
        raise ValueError(f"limit must be more than {_REOPEN_RESERVE + 1} characters")
    raw = _pack(_headed_paragraphs(text.split("\n\n")), "\n\n", limit - _REOPEN_RESERVE)
    return _balance_fences(raw)


def _headed_paragraphs(paragraphs: Sequence[str]) -> list[str]:
    """The paragraphs, each heading joined to what follows it (a part never ends on a heading)."""
    pieces: list[str] = []
    carried = ""
    for paragraph in paragraphs:
        joined = f"{carried}\n\n{paragraph}" if carried else paragraph
        if _HEADING.fullmatch(paragraph.strip()):
            carried = joined
            continue
        pieces.append(joined)
        carried = ""
    if carried:
        pieces.append(carried)
    return pieces


def _pack(pieces: Sequence[str], joiner: str, limit: int) -> list[str]:
    """Greedily join pieces up to `limit`; pieces too long are split at a finer level."""
    parts: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}{joiner}{piece}" if current else piece
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            parts.append(current)
            current = ""
        if len(piece) <= limit:
            current = piece
        elif joiner == "\n\n":
            parts.extend(_pack(piece.split("\n"), "\n", limit))
        else:
            parts.extend(_hard_split(piece, limit))
    if current:
        parts.append(current)
    return parts


def _hard_split(line: str, limit: int) -> list[str]:
    """Cut a single over-long line, preferring a space and never inside an &entity;."""
    parts = []
    while len(line) > limit:
        cut = line.rfind(" ", limit // 2, limit)
        if cut <= 0:
            cut = limit
            amp = line.rfind("&", cut - 6, cut)
            if amp > 0 and ";" not in line[amp:cut]:
                cut = amp
        parts.append(line[:cut])
        line = line[cut:].lstrip(" ")
    if line:
        parts.append(line)
    return parts


def _fence_open_at_end(text: str, open_at_start: bool) -> bool:
    inside = open_at_start
    for line in text.split("\n"):
        if line.lstrip("> ").lstrip().startswith(_FENCE):
            inside = not inside
    return inside


def _balance_fences(parts: list[str]) -> list[str]:
    balanced = []
    open_fence = False
    for part in parts:
        starts_open = open_fence
        open_fence = _fence_open_at_end(part, starts_open)
        if starts_open:
            part = f"{_FENCE}\n{part}"
        if open_fence:
            part = f"{part}\n{_FENCE}"
        balanced.append(part)
    return balanced


def section(text: str) -> dict:
    """A section showing `text` as written (verbatim: Slack adds no links or mentions)."""
    return {"type": "section", "text": text_object(text)}


def source_line(citation: Citation) -> str:
    """`[n] <url|Title › Heading>`, plain text when the URL is not http(s) (or too long to show)."""
    label = escape(_shortened(citation.breadcrumb, LABEL_WIDTH))
    url = safe_url(citation.url)
    if url and len(url) <= URL_WIDTH:
        return f"[{citation.number}] <{url}|{label}>"
    return f"[{citation.number}] {label}"


def _shortened(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def sources_blocks(citations: Sequence[Citation]) -> list[dict]:
    if not citations:
        return []
    lines = [source_line(c) for c in sorted(citations, key=lambda c: c.number)]
    return [section(part) for part in split_text(SOURCES_TITLE + "\n" + "\n".join(lines))]


def _button(action_id: str, text: str, record_id: str, *, primary: bool = False) -> dict:
    button = {"type": "button", "action_id": action_id, "value": record_id,
              "text": {"type": "plain_text", "text": text, "emoji": True}}
    if primary:
        button["style"] = "primary"
    return button


def feedback_block(record_id: str, *, share: bool = False, ask_human: bool = True) -> dict:
    """👍/👎 and "Ask a human" (unless `ask_human` is False: an abstention offers it above), and
    "Share in channel" when private; values are the answer record id."""
    shared = [_button(SHARE_ANSWER, "Share in channel", record_id, primary=True)] if share else []
    handoff = [_button(ASK_HUMAN, "🙋 Ask a human", record_id)] if ask_human else []
    return {
        "type": "actions",
        "block_id": "feedback",
        "elements": shared + [
            {
                "type": "button",
                "action_id": FEEDBACK_UP,
                "text": {"type": "plain_text", "text": "👍 Helpful", "emoji": True},
                "value": record_id,
            },
            {
                "type": "button",
                "action_id": FEEDBACK_DOWN,
                "text": {"type": "plain_text", "text": "👎 Not helpful", "emoji": True},
                "value": record_id,
            },
            *handoff,
        ],
    }


def handoff_offer(record_id: str) -> dict:
    """An abstention's invitation to hand the question to a person at once."""
    block = section(ABSTAINED_OFFER)
    block["accessory"] = _button(ASK_HUMAN, "🙋 Ask a human", record_id, primary=True)
    return block


def answer_messages(answer: Answer, *, record_id: str | None = None, private: bool = False) -> list[dict]:
    """The message payloads (`text` + `blocks`) that show one answer, in posting order.

    `private` (a /ask answer only the asker sees) adds a "Share in channel" button.
    """
    # Only the cited sources' URLs may be links: the model cannot plant one of its own.
    body = to_mrkdwn(answer.text, allowed_urls=[c.url for c in answer.citations]) or "_(no answer)_"
    blocks = [section(part) for part in split_text(body)]
    footer = sources_blocks(answer.citations)
    if answer.note:
        footer.append(
            {"type": "context", "elements": [text_object(clip(escape(answer.note), SECTION_LIMIT))]}
        )
    if record_id:
        offered = answer.status == "abstained"
        if offered:
            footer.append(handoff_offer(record_id))
        footer.append(feedback_block(record_id, share=private, ask_human=not offered))
    return _messages(blocks, footer)


def _messages(blocks: list[dict], footer: list[dict]) -> list[dict]:
    """Messages within Slack's limits; the footer (sources, buttons) stays whole at the end
    when it fits there."""
    groups = _grouped(blocks)
    if groups and _fits(groups[-1] + footer):
        groups[-1].extend(footer)
    else:
        tail = _grouped(footer)
        # The answer's last part goes along: no message is buttons alone (nor without a fallback text).
        if groups and tail and len(groups[-1]) > 1 and _fits([groups[-1][-1], *tail[0]]):
            tail[0].insert(0, groups[-1].pop())
        groups += tail
    return [{"text": _fallback(group), "blocks": group} for group in groups]


def _grouped(blocks: list[dict]) -> list[list[dict]]:
    groups: list[list[dict]] = []
    for block in blocks:
        if groups and _fits([*groups[-1], block]):
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups


def _fits(blocks: list[dict]) -> bool:
    return len(blocks) <= BLOCK_LIMIT and sum(map(_text_size, blocks)) <= MESSAGE_TEXT_LIMIT


def _text_size(value: object) -> int:
    """Characters in every `text` of a block (what Slack's total counts)."""
    if isinstance(value, dict):
        own = len(value["text"]) if isinstance(value.get("text"), str) else 0
        return own + sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


def _fallback(blocks: list[dict]) -> str:
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    text = "\n\n".join(texts)
    return text if len(text) <= FALLBACK_LIMIT else text[: FALLBACK_LIMIT - 1] + "…"


def as_text(message: dict) -> dict:
    """The message without blocks, its sections' text as one mrkdwn text: what is posted when
    Slack refuses the blocks themselves (a limit it enforces and we do not know), so the
    answer still arrives, without its buttons."""
    parts = []
    for block in message.get("blocks") or []:
        if block.get("type") in ("section", "header") and isinstance(block.get("text"), dict):
            parts.append(block["text"].get("text", ""))
        elif block.get("type") == "context":
            parts.extend(e.get("text", "") for e in block.get("elements") or [] if isinstance(e, dict))
    text = "\n\n".join(part for part in parts if part) or message.get("text", "")
    return {"text": text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"}


def progress_message(partial_markdown: str, *, placeholder: str) -> dict:
    """The in-progress message while the answer streams in (text only, no buttons)."""
    # Sources are not known yet: no links. A top-level text cannot be verbatim, so bare
    # domains go in code too (Slack would link them).
    body = to_mrkdwn(partial_markdown, allowed_urls=(), auto_linked=True)
    if not body:
        return {"text": escape(placeholder)}
    # Show the newest part when the stream outgrows one section.
    parts = split_text(body)
    return {"text": (parts[-1] if len(parts) > 1 else body) + " …"}
