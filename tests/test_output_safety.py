"""What the bot posts can never ping people or carry links beyond the cited sources'."""

from __future__ import annotations

import re

import pytest

from bot.blocks import answer_messages, progress_message
from bot.mrkdwn import to_mrkdwn
from knowledge.types import Answer, Citation
from tests.bot_helpers import start_bot  # noqa: F401  (fixture)

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


# ---- what actually reaches Slack -------------------------------------------------------

EVIL_ANSWER = (
    "Log in at evil.example/login first, or see <https://evil|docs> and [docs](https://evil.example/x). "
    "<!channel> <!here> @here @channel @Everyone <@U123> #general. `code @here` [1]"
)
_RAW_BROADCAST = re.compile(r"(?<![\w@])@(here|channel|everyone)\b", re.IGNORECASE)


def _payload_blocks(params: dict) -> list[dict]:
    import json

    blocks = params.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def _text_objects(blocks: list[dict]) -> list[dict]:
    """Every mrkdwn text object of a message: section texts and context elements."""
    found = []
    for block in blocks:
        if isinstance(block.get("text"), dict):
            found.append(block["text"])
        found += [e for e in block.get("elements", []) if e.get("type") == "mrkdwn"]
    return [t for t in found if t.get("type") == "mrkdwn"]


def _assert_safe(params: dict, *, allowed: set[str], verbatim_needed: bool = True) -> None:
    texts = [params.get("text", "")] + [t["text"] for t in _text_objects(_payload_blocks(params))]
    for text in texts:
        assert not _RAW_BROADCAST.search(re.sub(r"`[^`]*`", "", text)), text  # pings nobody
        assert not re.search(r"<[!#]|<@U123", text), text  # no raw <!channel>, <#C…>, planted <@U…>
        assert set(_links(text)) <= allowed, text
        assert "<https://evil" not in text, text  # no disguised link
    if verbatim_needed:
        for text_object in _text_objects(_payload_blocks(params)):
            assert text_object.get("verbatim") is True, text_object
    if not _payload_blocks(params):
        # A top-level text alone (streaming progress): Slack links bare domains there itself.
        assert "evil.example/login" not in re.sub(r"`[^`]*`", "", params.get("text", "")), params["text"]


def test_payloads_sent_to_slack_are_verbatim_link_only_sources_and_ping_nobody(
    make_kb, fake_openai, fake_slack, start_bot
):
    from bot.blocks import ASK_HUMAN

    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = EVIL_ANSWER
    bot = start_bot(kb, escalation_contacts="*=U5")  # the first streamed delta is always shown
    question = "@here is evil.example/login safe? <!channel>"
    mention = fake_slack.mention(question, channel="CSAFE", user="U1")
    fake_slack.send_event(mention)

    def answer_calls():
        return [c for m in ("chat.update", "chat.postMessage") for c in fake_slack.calls(m)
                if c.params.get("channel") == "CSAFE"
                and any(b["type"] == "actions" for b in _payload_blocks(c.params))]

    import time

    deadline = time.monotonic() + 60
    while not answer_calls():
        assert time.monotonic() < deadline, "no answer was posted"
        time.sleep(0.05)
    [answer] = answer_calls()
    sources = {b["text"]["text"] for b in _payload_blocks(answer.params) if b["type"] == "section"}
    cited = set(re.findall(r"<(https://docs\.example/[^|>]+)\|", "\n".join(sources)))
    assert cited, sources
    progress = [c for c in fake_slack.calls("chat.update")
                if c.params.get("channel") == "CSAFE" and not _payload_blocks(c.params)]
    assert progress, "the answer streamed no update"
    for call in [*progress, answer]:
        _assert_safe(call.params, allowed=cited)
    body = "\n".join(sources)
    assert "@\u200bhere" in body and "@\u200bchannel" in body and "`code @here`" in body

    # The hand-off quotes the asker's own words: verbatim, pinging nobody either.
    record_id = next(e["value"] for b in _payload_blocks(answer.params) if b["type"] == "actions"
                     for e in b["elements"] if e["action_id"] == ASK_HUMAN)
    fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, record_id, channel="CSAFE", user="U1",
                                                     message_ts=answer.params["ts"], thread_ts=mention["ts"]))
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: "asked for a person" in c.params.get("text", ""))
    blocks = _payload_blocks(handoff.params)
    quoted = [t for t in _text_objects(blocks) if "evil.example" in t["text"]]
    assert quoted and all(t.get("verbatim") is True for t in quoted)
    assert not any(_RAW_BROADCAST.search(t["text"]) for t in _text_objects(blocks))
    assert bot is not None
