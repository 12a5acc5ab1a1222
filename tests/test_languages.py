"""Questions in languages beyond English and Chinese: detected by script or by lingua among
ANSWER_LANGUAGES, answered in that language, no language named when the detector is unsure,
and keyword search left out for scripts it cannot split into the documents' words."""

from __future__ import annotations

import pytest

from knowledge.keywords import keyword_query
from knowledge.language import LanguageDetector, detect_language

QUESTIONS = {
    "ja": ("Milvusはどのようにデータを保存しますか？", "Japanese"),
    "ko": ("Milvus는 데이터를 어떻게 저장하나요?", "Korean"),
    "fr": ("Comment Milvus stocke-t-il les données ?", "French"),
    "de": ("Wie speichert Milvus die Daten?", "German"),
    "es": ("¿Cómo almacena Milvus los datos?", "Spanish"),
    "pt": ("Qual é o limite de dimensões de um vetor?", "Portuguese"),
    "zh": ("Milvus 支持 Windows 吗？", "Chinese"),
    "en": ("How do I create a collection?", "English"),
}
UNSURE = ["Was ist HNSW?", "ok", "index_type IVF_FLAT nlist", "", "?!"]


@pytest.mark.parametrize("code", sorted(QUESTIONS))
def test_each_language_is_detected(code):
    assert detect_language(QUESTIONS[code][0]) == code


@pytest.mark.parametrize("text", UNSURE)
def test_short_or_ambiguous_text_is_unsure(text):
    assert detect_language(text) == ""


def test_only_configured_languages_are_answered():
    detector = LanguageDetector(languages=["en", "zh"])
    assert detector.detect(QUESTIONS["ja"][0]) == ""  # kana: Japanese, which is not configured
    assert detector.detect(QUESTIONS["zh"][0]) == "zh"
    assert LanguageDetector(languages=["en", "ja"]).detect(QUESTIONS["fr"][0]) == "en"  # the only Latin one
    with pytest.raises(ValueError, match="xx"):
        LanguageDetector(languages=["en", "xx"])


def test_keyword_search_keeps_identifiers_only_for_other_scripts():
    # Japanese, Korean, Thai, Russian: no keyword search without an identifier (dense only).
    for question in (QUESTIONS["ja"][0], QUESTIONS["ko"][0], "Milvus รองรับ Windows หรือไม่",
                     "Как Milvus хранит данные?"):
        assert keyword_query(question) == "", question
    assert keyword_query("IVF_FLAT の nlist はどう選びますか？") == "IVF_FLAT"
    assert keyword_query("HNSW 인덱스의 efConstruction 값은?") == "HNSW efConstruction"
    # Latin-script questions keep their words.
    assert "speichert" in keyword_query(QUESTIONS["de"][0])


def test_the_prompt_names_the_question_language_or_none(make_kb, fake_openai):
    kb = make_kb(abstain_threshold=0.0, reranker=False, abstain_dense_threshold=-1.0)
    for code, (question, name) in QUESTIONS.items():
        answer = kb.ask(question)
        assert answer.language == code and answer.status == "answered", (code, answer.note)
        system, user = (m["content"] for m in fake_openai.last_request["messages"])
        assert f"The question is in {name}" in system, code
        assert f", in {name}" in user.rstrip().splitlines()[-1], (code, user[-80:])

    answer = kb.ask("Was ist HNSW?")
    assert answer.language == "" and answer.status == "answered"
    system, user = (m["content"] for m in fake_openai.last_request["messages"])
    assert "The question is in" not in system and "Answer in the language of the question." in system
    assert "English" not in system + user and user.rstrip().endswith("citing them with [n].")
