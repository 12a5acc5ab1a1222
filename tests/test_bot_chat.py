"""The terminal chat: the same answer path, history kept between turns, numbered sources."""

import io
import json

from bot.chat import run_chat
from bot.triage import SMALL_TALK_TEXT, THANKS_TEXT


def test_chat_streams_answers_keeps_history_and_prints_sources(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = "Milvus keeps data in object storage [1]."
    output = io.StringIO()
    answered = run_chat(kb, io.StringIO("How does Milvus store data?\n\nAnd the metadata?\nexit\nnot asked\n"),
                        output)
    text = output.getvalue()
    assert answered == 2
    assert text.count("bot> Milvus keeps data in object storage [1].") == 2
    assert "Sources:\n  [1] " in text and "https://docs.example/" in text
    assert "not asked" not in text
    # the second question went to the model with the first turn as history
    assert "How does Milvus store data?" in json.dumps(fake_openai.requests[-1])


def test_chat_shows_knowledge_errors_and_ends_at_eof(make_kb):
    kb = make_kb(refresh=False)
    output = io.StringIO()
    assert run_chat(kb, io.StringIO("x" * 5000 + "\n"), output) == 0
    assert "(error) The question is too long" in output.getvalue()


def test_chat_answers_small_talk_without_a_lookup(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0)
    fake_openai.default_text = "Milvus keeps data in object storage [1]."
    output = io.StringIO()
    answered = run_chat(kb, io.StringIO("hi\nHow does Milvus store data?\nthanks!\n👍\n"), output)
    text = output.getvalue()
    assert answered == 1
    assert len(fake_openai.requests) == 1  # only the question reached the model
    assert f"you> hi\nbot> {SMALL_TALK_TEXT}" in text
    assert f"you> thanks!\nbot> {THANKS_TEXT}" in text
    assert text.count(SMALL_TALK_TEXT) == 2  # the emoji too
    assert text.count("Sources:") == 1


def test_chat_follow_up_after_bad_bytes_and_a_failed_answer(make_kb):
    """Bad bytes from stdin arrive as lone surrogates: the follow-up searches with the cleaned
    question, and an unexpected exception in one answer does not end the conversation."""
    kb = make_kb(api_key="", reranker=False)
    failures = iter([RuntimeError("boom")])

    class FailsOnce:  # the real knowledge base, whose third answer fails with a bug
        calls = 0

        def ask(self, question, **kwargs):
            FailsOnce.calls += 1
            if FailsOnce.calls == 3:
                raise next(failures)
            return kb.ask(question, **kwargs)

    stdin = b"bad bytes \xff\xfe in a question about the index\nand why?\nwhat else?\nand data?\n"
    output = io.StringIO()
    answered = run_chat(FailsOnce(), io.StringIO(stdin.decode("utf-8", "surrogateescape")), output)
    text = output.getvalue()
    assert answered == 3
    assert "(error) The answer failed (RuntimeError)" in text
    assert text.count("Sources:") == 3
