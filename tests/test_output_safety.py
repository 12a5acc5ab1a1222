"""What the bot posts can never ping people or carry links beyond the cited sources'."""

from __future__ import annotations

import re

import pytest

from bot.blocks import answer_messages, progress_message
from bot.mrkdwn import to_mrkdwn
from knowledge.types import Answer, Citation

CITED = "https://docs.example/storage#where-data-lives"
OTHER_SOURCE = "https://docs.example/other#x"  # retrieved but not cited


def _answer(text: str) -> Answer:
    citation = Citation(number=1, title="Storage", heading_path=("Where data lives",), url=CITED, source="s.md")
    return Answer(question="q", text=text, status="answered", citations=[citation])


def _links(mrkdwn: str) -> list[str]:
    """The URLs Slack would make clickable: <url|label>/<url> links and bare URLs outside code."""
    outside_code = re.sub(r"`[^`]*`", "", mrkdwn)
    linked = re.findall(r"<(https?://[^|>]+)(?:\|[^>]*)?>", outside_code)
    bare = re.findall(r"(?<![<|])\bhttps?://[^\s<>|`]+|\bwww\.[^\s<>|`]+", re.sub(r"<[^>]*>", "", outside_code))
    return linked + bare


def _body(answer: Answer) -> str:
    [message] = answer_messages(answer)
    return "\n".join(b["text"]["text"] for b in message["blocks"] if b["type"] == "section")


@pytest.mark.parametrize(
    "text",
    [
        "Read [this](https://evil.example/phish) first [1].",
        "Go to <https://evil.example/phish> now [1].",
        "Bare https://evil.example/phish and www.evil.example here [1].",
        "![logo](https://evil.example/pixel.png) [1]",
        "Mixed: [docs](%s) and [click](https://evil.example/x) [1]." % CITED,
        "[https://evil.example/a](https://evil.example/a) [1]",
        "<https://evil.example|click> <!channel> <!here> <@U123> <#C123> <!subteam^S1> [1]",
        "javascript:alert(1) [x](javascript:alert(1)) [1]",
    ],
)
def test_answer_links_only_to_cited_sources_and_pings_nobody(text):
    body = _body(_answer(text))
    assert set(_links(body)) <= {CITED}, body
    # Slack's control sequences (<!channel>, <@U…>, <#C…>, <!subteam…>) never appear raw.
    assert not re.search(r"<[!@#]", body), body
    sources = answer_messages(_answer(text))[0]["blocks"]
    assert any(CITED in b["text"]["text"] for b in sources if b["type"] == "section" and "*Sources*" in b["text"]["text"])


def test_cited_link_stays_a_link_and_refused_ones_keep_their_text():
    body = to_mrkdwn(f"See [the storage docs]({CITED}) or [this page]({OTHER_SOURCE}).", allowed_urls=[CITED])
    assert body == f"See <{CITED}|the storage docs> or this page."
    assert to_mrkdwn("Plain https://evil.example/x.", allowed_urls=[CITED]) == "Plain `https://evil.example/x`."
    assert to_mrkdwn(f"Plain {CITED}.", allowed_urls=[CITED]) == f"Plain {CITED}."


def test_without_an_allow_list_http_links_still_work():
    assert to_mrkdwn("[x](https://a.example/)") == "<https://a.example/|x>"


def test_streamed_progress_has_no_links_yet():
    message = progress_message(f"Partial [1] with [a link]({CITED}) and https://evil.example", placeholder="…")
    assert _links(message["text"]) == []
    assert "a link" in message["text"]
