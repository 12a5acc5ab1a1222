"""Detect the language of a question, cheaply and predictably."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ extension A, compatibility ideographs): Chinese characters.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Anything that counts as "a character of text": letters and digits of any script.
_WORD_CHAR = re.compile(r"[^\W_]", re.UNICODE)

# A question is Chinese when at least this share of its letters are Han characters;
# a Chinese sentence naming "Milvus" or "IVF_FLAT" stays well above it.
ZH_RATIO = 0.2

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}


def detect_language(text: str) -> str:
    """Return "zh" when the text is mostly Chinese characters, else "en"."""
    letters = _WORD_CHAR.findall(text)
    if not letters:
        return "en"
    han = sum(1 for ch in letters if _HAN.match(ch))
    return "zh" if han / len(letters) >= ZH_RATIO else "en"


def language_name(code: str) -> str:
    """The name of a language code as the model is told it ("English", ...)."""
    return LANGUAGE_NAMES.get(code, code)
