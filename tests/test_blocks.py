"""Block Kit answers: sources numbered like the markers, Slack's size limits, balanced code fences."""

import json

from bot.blocks import (
    ASK_HUMAN,
    BLOCK_LIMIT,
    FEEDBACK_DOWN,
    FEEDBACK_UP,
    MESSAGE_TEXT_LIMIT,
    SECTION_LIMIT,
    answer_messages,
    progress_message,
    source_line,
    split_text,
)
from knowledge.types import Answer, Citation


def _citations(n):
    return [Citation(i, f"Doc {i}", ("Part", f"Sub {i}"), f"https://milvus.io/docs/d{i}.md#s{i}", f"d{i}.md")
            for i in range(1, n + 1)]


def _sections(message):
    return [b["text"]["text"] for b in message["blocks"] if b["type"] == "section"]


def test_answer_with_sources_and_feedback_buttons():
    answer = Answer(question="q", text="Use **etcd** [1] and MinIO [2].", status="answered", citations=_citations(2))
    [message] = answer_messages(answer, record_id="rec1")
    texts = _sections(message)
    assert texts[0] == "Use *etcd* [1] and MinIO [2]."
    assert texts[1] == ("*Sources*\n[1] <https://milvus.io/docs/d1.md#s1|Doc 1 › Part › Sub 1>\n"
                        "[2] <https://milvus.io/docs/d2.md#s2|Doc 2 › Part › Sub 2>")
    actions = message["blocks"][-1]
    assert actions["type"] == "actions"
    assert [e["action_id"] for e in actions["elements"]] == [FEEDBACK_UP, FEEDBACK_DOWN, "ask_human"]
    assert {e["value"] for e in actions["elements"]} == {"rec1"}
    assert message["text"].startswith("Use *etcd* [1]")


def test_source_titles_are_escaped_and_unsafe_urls_dropped():
    citation = Citation(1, "<!channel> & co", (), "javascript:alert(1)", "x.md")
    answer = Answer(question="q", text="x [1]", status="answered", citations=[citation])
    text = _sections(answer_messages(answer)[0])[1]
    assert text == "*Sources*\n[1] &lt;!channel&gt; &amp; co"


def test_note_shown_and_no_buttons_without_record():
    answer = Answer(question="q", text="passages", status="retrieval_only", note="No model configured.")
    [message] = answer_messages(answer)
    assert message["blocks"][-1]["type"] == "context"
    assert all(b["type"] != "actions" for b in message["blocks"])


def test_long_answer_split_within_limits():
    paragraphs = [f"Paragraph {i} " + "word " * 300 for i in range(200)]  # ~300 KB of text
    answer = Answer(question="q", text="\n\n".join(paragraphs), status="answered", citations=_citations(3))
    messages = answer_messages(answer, record_id="r")
    assert len(messages) > 1
    for message in messages:
        assert len(message["blocks"]) <= BLOCK_LIMIT
        assert all(len(t) <= SECTION_LIMIT for t in _sections(message))
        assert len(message["text"]) <= 3000
    joined = "\n\n".join(t for m in messages for t in _sections(m) if not t.startswith("*Sources*"))
    assert joined.replace("\n\n", " ").split() == "\n\n".join(paragraphs).split()
    # sources and buttons come once, at the very end
    assert messages[-1]["blocks"][-1]["type"] == "actions"
    assert sum(t.startswith("*Sources*") for m in messages for t in _sections(m)) == 1


def _block_text(value) -> int:
    """Characters in every `text` string of the blocks (what Slack's total counts)."""
    if isinstance(value, dict):
        return sum(len(v) if k == "text" and isinstance(v, str) else _block_text(v) for k, v in value.items())
    return sum(map(_block_text, value)) if isinstance(value, list) else 0


def test_a_long_answer_keeps_each_message_under_slacks_total_and_never_posts_buttons_alone():
    # Two 1,000-character paragraphs a section: the answer's messages end full, the buttons must not
    # go out alone (Slack refuses more than ~12,000 characters of block text in one message).
    answer = Answer(question="q", text="\n\n".join(["word " * 200] * 40), status="answered")
    messages = answer_messages(answer, record_id="r")
    assert len(messages) > 1
    assert all(_block_text(m["blocks"]) <= MESSAGE_TEXT_LIMIT for m in messages)
    assert [b["type"] for b in messages[-1]["blocks"]] == ["section", "actions"]
    assert all(m["text"] for m in messages)


def test_a_source_line_is_short_enough_never_to_be_cut():
    long = Citation(1, "T" * 600, ("H" * 600,), "https://docs.example/" + "p" * 1500, "a.md")
    too_long_to_link = Citation(2, "Two", (), "https://docs.example/" + "p" * 2500, "b.md")
    line = source_line(long)
    assert line.startswith("[1] <https://docs.example/ppp") and line.endswith("…>") and len(line) < 2000
    assert source_line(too_long_to_link) == "[2] Two"


def test_code_fence_is_closed_and_reopened_across_a_split():
    code = "\n".join(f"line {i} <x>" for i in range(600))
    text = f"Intro\n\n```\n{code}\n```\n\nAfter."
    parts = split_text(text, 1000)
    assert len(parts) > 3
    for part in parts:
        assert len(part) <= 1000
        assert part.count("```") % 2 == 0
    assert parts[1].startswith("```\n")
    assert parts[-1].endswith("After.")


def test_a_split_never_leaves_a_heading_at_the_end_of_a_part():
    steps = [f"*Step {i}*\n\n" + f"Do thing {i}. " * 60 for i in range(1, 9)]  # ~800 characters each
    text = "\n\n".join(steps)
    parts = split_text(text, 1000)
    assert len(parts) == 8
    for i, part in enumerate(parts, start=1):
        assert part.startswith(f"*Step {i}*\n\nDo thing {i}.") and not part.rstrip().endswith("*")
    assert "\n\n".join(parts) == text
    # Headings in a row stay together with the text they introduce.
    assert split_text("*A*\n\n*B*\n\nbody", 1000) == ["*A*\n\n*B*\n\nbody"]
    assert split_text("text\n\n*Last*", 1000) == ["text\n\n*Last*"]


def test_single_huge_line_is_cut_without_breaking_entities():
    text = "&amp;" * 2000
    parts = split_text(text, 3000)
    assert all(len(p) <= 3000 for p in parts)
    assert "".join(parts) == text


def test_progress_message():
    assert progress_message("", placeholder="Looking…")["text"] == "Looking…"
    assert progress_message("Partial **bo", placeholder="x")["text"].endswith(" …")


def test_an_abstention_lists_its_closest_sections_once_and_offers_one_hand_off(make_kb):
    kb = make_kb(abstain_threshold=1.0, abstain_dense_threshold=1.0)  # always abstain
    answer = kb.ask("Can Milvus make coffee?")
    assert answer.status == "abstained" and answer.citations
    assert "http" not in answer.text  # the sections are the citations, listed under Sources
    [message] = answer_messages(answer, record_id="rec1")
    shown = json.dumps(message["blocks"])
    assert all(shown.count(citation.url) == 1 for citation in answer.citations)
    buttons = [element for block in message["blocks"]
               for element in [*(block.get("elements") or []), *([block["accessory"]] if "accessory" in block else [])]]
    assert [b["action_id"] for b in buttons].count(ASK_HUMAN) == 1
    assert {FEEDBACK_UP, FEEDBACK_DOWN} <= {b["action_id"] for b in buttons}
