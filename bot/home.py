"""The App Home tab: how to ask for everyone; the last days' figures for admins.

Figures come from the records in the state database (bot.state, as for
`supportbot feedback`; questions from private conversations are counted, never
quoted) and the index from the refresher's (or the knowledge base's) status.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from bot.mrkdwn import clip, escape, text_object
from bot.state import Insights

INSIGHT_DAYS = 7
TOP_GAPS = 5
_GAP_WIDTH = 150


def _section(text: str) -> dict:
    return {"type": "section", "text": text_object(clip(text, 3000))}  # holds people's questions


def _header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": text[:150], "emoji": True}}


def _date(timestamp: float | None, fallback: str) -> str:
    """A time Slack shows in the reader's own time zone."""
    if not timestamp:
        return fallback
    utc = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
    return f"<!date^{int(timestamp)}^{{date_short_pretty}} {{time}}|{utc}>"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _GAP_WIDTH else text[: _GAP_WIDTH - 1] + "…"


def guide_blocks(*, bot_user_id: str, auto_channels: Iterable[str], suggested: Iterable[str]) -> list[dict]:
    """How to ask, and a few questions to try."""
    bot = f"<@{bot_user_id}>" if bot_user_id else "the bot"
    ways = [
        f"• Mention {bot} in a channel: the answer comes in a thread, with its sources.",
        "• Send me a direct message, or open me in the assistant pane.",
        "• `/ask your question`: only you see the answer; *Share in channel* posts it for everyone.",
        "• Not helpful? *Ask a human* tags the team's experts in the thread.",
    ]
    channels = sorted(auto_channels)
    if channels:
        ways.append("• In " + ", ".join(f"<#{c}>" for c in channels) + " I answer every question, no mention needed.")
    blocks = [_header("Ask the docs"), _section("\n".join(ways))]
    prompts = [p for p in suggested if p.strip()][:4]
    if prompts:
        blocks.append(_section("*Try asking*\n" + "\n".join(f"• {escape(p)}" for p in prompts)))
    return blocks


def insight_blocks(insights: Insights, index: dict, *, days: int = INSIGHT_DAYS) -> list[dict]:
    """The admin figures: questions and outcomes, 👍/👎, coverage gaps, the index."""
    rated = insights.helpful + insights.not_helpful
    ratio = f"{insights.helpful / rated:.0%} helpful" if rated else "no ratings yet"
    figures = (
        f"*Questions:* {insights.questions}\n"
        f"*Answered:* {insights.answered}   *Not in the docs:* {insights.abstained}   "
        f"*Handed to a human:* {insights.handed_off}\n"
        f"*Feedback:* 👍 {insights.helpful} / 👎 {insights.not_helpful} ({ratio})"
    )
    gaps = "\n".join(f"{n}. {escape(_short(q))}" + (f" _(×{times})_" if times > 1 else "")
                     for n, (q, times) in enumerate(insights.gaps, 1))
    if insights.private_gaps:
        gaps += f"\n_and {insights.private_gaps} asked in private conversations (not shown)_"
        gaps = gaps.lstrip("\n")
    blocks = [
        {"type": "divider"},
        _header(f"Last {days} days (admins)"),
        _section(figures),
        _section("*Top unanswered questions* (coverage gaps)\n" + (gaps or "_none — every question was answered_")),
        _section(index_text(index)),
    ]
    return blocks


def index_text(status: dict) -> str:
    """Index size and refresh times from `Refresher.status()` (or a knowledge base's `status()`)."""
    if status.get("index_error"):
        return f"*Index:* unavailable ({escape(str(status['index_error']))[:300]})"
    chunks = status.get("chunks")
    lines = [f"*Index:* {chunks:,} chunks" if isinstance(chunks, int) else "*Index:* size unknown"]
    last = status.get("last_run")
    if last and last.get("ok"):
        lines.append(f"*Last refresh:* {_date(last.get('finished_at'), 'unknown')}")
    elif last:
        lines.append(f"*Last refresh:* failed {_date(last.get('finished_at'), '')}".rstrip())
    elif status.get("index_last_refresh") or status.get("last_refresh"):
        lines.append("*Last refresh:* at start-up")
    else:
        lines.append("*Last refresh:* none since the bot started")
    if status.get("scheduled"):
        lines.append(f"*Next refresh:* {_date(status.get('next_run_at'), 'not scheduled')}")
    else:
        lines.append("*Next refresh:* not scheduled")
    return "\n".join(lines)


def home_view(
    *,
    bot_user_id: str,
    auto_channels: Iterable[str],
    suggested: Iterable[str],
    insights: Insights | None = None,
    index: dict | None = None,
) -> dict:
    """The Home tab view for views.publish; insights only for admins."""
    blocks = guide_blocks(bot_user_id=bot_user_id, auto_channels=auto_channels, suggested=suggested)
    if insights is not None:
        blocks += insight_blocks(insights, index or {})
    return {"type": "home", "blocks": blocks}
