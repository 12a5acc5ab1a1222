"""Follow-up -> standalone query: with the model (fake server) and without."""

from __future__ import annotations

from knowledge.answerer import Answerer
from knowledge.rewrite import MAX_CONTEXT_CHARS, concatenated_query, standalone_query
from knowledge.types import Turn

HISTORY = [
    Turn("user", "How do I install Milvus?"),
    Turn("assistant", "Use Docker Compose [1]."),
    Turn("user", "Which ports does it use?"),
    Turn("assistant", "19530 and 9091 [2]."),
]


def answerer_for(fake) -> Answerer:
    return Answerer(api_key="k", base_url=fake.base_url, model="m", timeout=5, max_retries=0,
                    max_tokens=50)


def test_without_history_the_question_is_the_query(fake_openai):
    assert standalone_query("  Is Milvus free? ", [], answerer=answerer_for(fake_openai)) == "Is Milvus free?"
    assert fake_openai.requests == []


def test_without_a_model_recent_user_turns_are_prepended():
    assert standalone_query("And on ARM?", HISTORY) == (
        "How do I install Milvus?\nWhich ports does it use?\nAnd on ARM?"
    )


def test_concatenation_is_bounded_and_keeps_the_most_recent():
    history = [Turn("user", "old " * 300), Turn("user", "recent question about etcd")]
    query = concatenated_query("and backups?", history)
    assert query.endswith("recent question about etcd\nand backups?")
    assert len(query) <= MAX_CONTEXT_CHARS + len("and backups?") + 2
    assert query.startswith("old old")  # the older turn is cut at a word, not dropped whole


def test_with_a_model_its_rewrite_is_used(fake_openai):
    fake_openai.reply("Milvus Docker Compose ports on ARM")
    query = standalone_query("And on ARM?", HISTORY, answerer=answerer_for(fake_openai))
    assert query == "Milvus Docker Compose ports on ARM"
    content = fake_openai.last_request["messages"][-1]["content"]
    assert "Which ports does it use?" in content and "And on ARM?" in content


def test_a_failing_model_falls_back_to_concatenation(fake_openai):
    fake_openai.fail(503)
    query = standalone_query("And on ARM?", HISTORY, answerer=answerer_for(fake_openai))
    assert query.endswith("Which ports does it use?\nAnd on ARM?")
    assert len(fake_openai.requests) == 1
