"""Block Kit at Slack's limits: the fake Slack refuses what Slack refuses, and the bot, pushed
to the limits (huge answers, many long sources, long questions handed off, a Home with 200
saved answers, Chinese text), sends only what Slack accepts."""

from __future__ import annotations

import json
import re
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.blocks import ASK_HUMAN, BLOCK_LIMIT, SECTION_LIMIT
from bot.state.saved_answers import ACTIVE, PENDING, SavedAnswer, new_id
from knowledge.types import Answer, Citation
from tests.bot_helpers import final_answers, start_bot  # noqa: F401  (fixture)
from tests.fixtures.slack_fake import BOT_USER_ID

pytestmark = pytest.mark.timeout(120)


def _section(text: str, **extra) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **extra}


def _button(text: str = "Go", **extra) -> dict:
    return {"type": "button", "action_id": "go", "value": "v", "text": {"type": "plain_text", "text": text}, **extra}


def _client(fake) -> WebClient:
    return WebClient(token=fake.bot_token, base_url=fake.api_url)


# -- the fake refuses what Slack refuses -------------------------------------------------

REFUSED = {
    "section over 3,000": [_section("x" * 3001)],
    "empty text": [_section("")],
    "verbatim on plain_text": [{"type": "section", "text": {"type": "plain_text", "text": "x", "verbatim": True}}],
    "header over 150": [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}],
    "mrkdwn header": [{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}],
    "button text over 75": [{"type": "actions", "elements": [_button("x" * 76)]}],
    "button value over 2,000": [{"type": "actions", "elements": [_button(value="v" * 2001)]}],
    "button url over 3,000": [_section("x", accessory=_button(url="https://x.example/" + "p" * 3000))],
    "26 actions": [{"type": "actions", "elements": [_button(action_id=f"a{n}") for n in range(26)]}],
    "11 context elements": [{"type": "context", "elements": [{"type": "mrkdwn", "text": "x"}] * 11}],
    "image without alt_text": [{"type": "image", "image_url": "https://x.example/a.png"}],
    "unknown property": [_section("x", colour="red")],
    "51 blocks": [_section(f"{n}") for n in range(51)],
    "duplicate block_id": [_section("a", block_id="same"), _section("b", block_id="same")],
    "duplicate action_id in a block": [{"type": "actions", "elements": [_button(), _button()]}],
}


@pytest.mark.parametrize("blocks", REFUSED.values(), ids=REFUSED.keys())
def test_the_fake_refuses_blocks_slack_refuses(fake_slack, blocks):
    for method in ("chat_postMessage", "chat_postEphemeral"):
        with pytest.raises(SlackApiError) as refused:
            getattr(_client(fake_slack), method)(channel="C1", user="U1", text="fallback", blocks=blocks)
        assert refused.value.response["error"] == "invalid_blocks"
        assert all("[json-pointer:/blocks" in error for error in refused.value.response["errors"])
    assert len(fake_slack.block_kit_rejections) == 2
    assert not fake_slack.messages("C1")  # nothing was posted
    fake_slack.block_kit_rejections.clear()  # refused on purpose


def test_the_fake_refuses_more_block_text_than_slack_takes_in_one_message(fake_slack):
    blocks = [_section("x" * 3000) for _ in range(5)]  # each section fine, 15,000 characters in all
    with pytest.raises(SlackApiError) as refused:
        _client(fake_slack).chat_postMessage(channel="C1", text="fallback", blocks=blocks)
    assert refused.value.response["error"] == "msg_blocks_too_long"
    posted = _client(fake_slack).chat_postMessage(channel="C1", text="fallback", blocks=blocks[:3])
    with pytest.raises(SlackApiError) as refused:
        _client(fake_slack).chat_update(channel="C1", ts=posted["ts"], text="fallback", blocks=blocks)
    assert refused.value.response["error"] == "msg_blocks_too_long"
    # A response_url takes them (like Slack's).
    assert WebhookClient(fake_slack.api_url + "response_url").send(text="fallback", blocks=blocks).status_code == 200
    fake_slack.block_kit_rejections.clear()


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_the_fake_refuses_a_message_without_text_or_blocks_and_text_over_40000(fake_slack):
    with pytest.raises(SlackApiError, match="no_text"):
        _client(fake_slack).chat_postMessage(channel="C1", text="")
    with pytest.raises(SlackApiError, match="msg_too_long"):
        _client(fake_slack).chat_postMessage(channel="C1", text="x" * 40_001)
    fake_slack.block_kit_rejections.clear()


def test_the_response_url_answers_400_for_blocks_slack_refuses(fake_slack):
    response = WebhookClient(fake_slack.api_url + "response_url").send(text="x", blocks=[_section("x" * 3001)])
    assert (response.status_code, response.body) == (400, "invalid_blocks")
    assert WebhookClient(fake_slack.api_url + "response_url").send(delete_original=True).status_code == 200
    fake_slack.block_kit_rejections.clear()


def test_views_are_checked_too(fake_slack):
    client = _client(fake_slack)
    for view in ({"type": "home", "blocks": [_section(f"{n}") for n in range(101)]},
                 {"type": "home", "blocks": [_section("x" * 3001)]},
                 {"type": "modal", "title": {"type": "plain_text", "text": "x" * 25}, "blocks": [_section("x")]}):
        with pytest.raises(SlackApiError) as refused:
            client.views_publish(user_id="U1", view=view)
        assert refused.value.response["error"] == "invalid_arguments"
    client.views_publish(user_id="U1", view={"type": "home", "blocks": [_section(f"{n}") for n in range(100)]})
    assert len(fake_slack.block_kit_rejections) == 3
    fake_slack.block_kit_rejections.clear()


def test_what_slack_takes_passes_and_a_test_can_turn_the_checks_off(fake_slack):
    client = _client(fake_slack)
    client.chat_postMessage(channel="C1", text="ok", blocks=[
        {"type": "header", "text": {"type": "plain_text", "text": "Title", "emoji": True}},
        _section("*bold*", accessory=_button(style="danger")),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "note", "verbatim": True}]},
        {"type": "actions", "block_id": "feedback", "elements": [_button(), _button(action_id="other")]},
        {"type": "divider"}])
    client.chat_postMessage(channel="C1", text="no blocks")
    fake_slack.validate_blocks = False  # deliberately bad blocks get through
    client.chat_postMessage(channel="C1", text="bad", blocks=[_section("x" * 3001)])
    assert not fake_slack.block_kit_rejections and len(fake_slack.messages("C1")) == 3


# -- the bot at the limits ----------------------------------------------------------------


class _Scripted:
    """A knowledge base that answers every question with `answer` (question filled in)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def ask(self, question, *, history=(), source_names=None, on_delta=None):
        return Answer(**{**self.answer.__dict__, "question": question})

    def status(self) -> dict:
        return {"chunks": 1}

    def close(self) -> None:
        pass


def _long_citations(count: int = 20) -> list[Citation]:
    """Sources with 500-character titles and headings and very long URLs (some too long to link)."""
    return [Citation(n, f"Title {n} " + "Ω & <t> " * 62, (f"Heading {n} " + "h" * 490,),
                     f"https://docs.example/{n}/" + "p" * (300 if n % 2 else 2600), f"doc{n}.md")
            for n in range(1, count + 1)]


def _all_blocks(messages: list[dict]) -> list[dict]:
    return [b for m in messages for b in m.get("blocks") or []]


def _section_texts(messages: list[dict]) -> list[str]:
    return [b["text"]["text"] for b in _all_blocks(messages) if b["type"] == "section"]


def _assert_links_whole(texts: list[str]) -> None:
    for text in texts:  # a link cut by a split would show its markup
        assert text.count("<") == text.count(">"), text[:200]


def _answer_posted(fake, channel: str, thread_ts: str, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        answers = final_answers(fake, channel, thread_ts)
        if answers and any(b["type"] == "actions" for b in answers[-1]["blocks"]):
            return answers
        assert time.monotonic() < deadline, f"no answer in {channel}: {fake.block_kit_rejections}"
        time.sleep(0.05)


def test_a_huge_answer_with_twenty_long_sources_is_all_posted(fake_slack, start_bot):
    paragraphs = [f"Paragraph {n} [{n % 20 + 1}]: " + ("lorem ipsum " * 120 if n % 3 else "数据存储在对象存储中。" * 150)
                  for n in range(30)]  # ~60,000 characters, a third of it Chinese (no spaces to split at)
    start_bot(_Scripted(Answer(question="", text="\n\n".join(paragraphs), status="answered",
                               citations=_long_citations(), note="n" * 5000)))
    question = fake_slack.mention("How does Milvus store data?", channel="CBIG")
    fake_slack.send_event(question)
    answers = _answer_posted(fake_slack, "CBIG", question["ts"])

    assert fake_slack.block_kit_rejections == []
    for message in answers:
        assert len(message["blocks"]) <= BLOCK_LIMIT
        assert all(len(t) <= SECTION_LIMIT for t in _section_texts([message]))
    texts = _section_texts(answers)
    body = "".join(texts)
    assert "Paragraph 29" in body and body.count("数据存储在对象存储中。") >= 10 * 150 - 10
    _assert_links_whole(texts)
    sources = "\n".join(t for t in texts if t.startswith(("*Sources*", "["))).split("\n")
    assert [line.split("]")[0] for line in sources if line.startswith("[")] == [f"[{n}" for n in range(1, 21)]
    assert answers[-1]["blocks"][-1]["type"] == "actions"  # the buttons come last


def test_a_long_question_handed_off_with_many_long_sources_is_posted(fake_slack, start_bot):
    start_bot(_Scripted(Answer(question="", text="Short answer [1].", status="answered",
                               citations=_long_citations())), escalation_contacts="CHAND=U9")
    asked = "Why does &lt;my&gt; query &amp; filter " + "fail again and again " * 190  # ~4,000 characters, as Slack escapes them
    question = fake_slack.mention(asked, channel="CHAND")
    fake_slack.send_event(question)
    answer = _answer_posted(fake_slack, "CHAND", question["ts"])[-1]  # 20 long sources take two messages
    record_id = answer["blocks"][-1]["elements"][0]["value"]
    fake_slack.send_action(fake_slack.action_payload(ASK_HUMAN, record_id, channel="CHAND", user="U1",
                                                     message_ts=answer["ts"], thread_ts=question["ts"]))
    [handoff] = fake_slack.wait_for("chat.postMessage", where=lambda c: c.params.get("text", "").startswith("🙋"))

    assert fake_slack.block_kit_rejections == []
    blocks = handoff.params["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    texts = _section_texts([{"blocks": blocks}])
    assert texts[1].startswith("*Question*\n> Why does &lt;my&gt; query &amp; filter fail")
    assert not re.search(r"&[a-z]*$", texts[1].rstrip("…"))  # no entity cut in half
    found = texts[2]
    _assert_links_whole([found])
    assert found.startswith("*What the bot looked at*\n[1] <https://docs.example/1/")
    assert found.rstrip().endswith(("more_", ">", "…"))  # whole lines only


def test_a_home_with_200_saved_answers_is_published(fake_slack, start_bot):
    bot = start_bot(_Scripted(Answer(question="", text="x", status="answered")),
                    learn_from_threads=True, admin_user_ids="UADMIN")
    store = bot.services.learner.store
    now = time.time()
    for n in range(200):
        store.add(SavedAnswer(
            id=new_id(), status=PENDING if n % 2 else ACTIVE, channel="CSAVE", channel_name="support-" + "x" * 70,
            private=False, thread_ts=f"{n}.0", message_ts=f"{n}.5", question=f"Question {n} <&> " + "q" * 4000,
            answer=f"Answer {n} " + "a" * 4000, answered_by="U2", answered_by_name="Dana " + "d" * 80,
            answered_at=now, saved_by="U1", saved_at=now, via="reaction",
            permalink=f"https://fake.slack.com/archives/CSAVE/p{n}" + "9" * 2000, source_name="team-answers"))
    fake_slack.send_event({"type": "app_home_opened", "user": "UADMIN", "channel": "D1", "tab": "home"})
    [home] = fake_slack.wait_for("views.publish")

    assert fake_slack.block_kit_rejections == []
    view = home.params["view"]
    view = json.loads(view) if isinstance(view, str) else view
    assert len(view["blocks"]) <= 100
    text = json.dumps(view, ensure_ascii=False)
    assert "*In use:* 100" in text and "*Waiting for review:* 100" in text


def test_a_private_ask_answer_that_is_huge_arrives_through_the_response_url(fake_slack, start_bot):
    start_bot(_Scripted(Answer(question="", text="\n\n".join(["答案" * 1400] * 12), status="answered",
                               citations=_long_citations(5))))
    fake_slack.send_command(fake_slack.command_payload("/ask", "How do I back up?", channel="CASK", user=BOT_USER_ID))
    replies = fake_slack.wait_for("response_url", where=lambda c: any(
        b.get("type") == "actions" for b in c.params.get("blocks") or []), timeout=60)
    assert fake_slack.block_kit_rejections == []
    messages = [c.params for c in fake_slack.calls("response_url") if c.params.get("blocks")]
    assert replies and "答案" * 1000 in "".join(_section_texts(messages))
