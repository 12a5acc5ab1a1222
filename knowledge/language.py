"""Detect the language of a question, cheaply and predictably."""

from __future__ import annotations

import re

# CJK Unified Ideographs (+ extension A, compatibility ideographs): Chinese characters.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Units of text: one Han character, or one run of other letters/digits (a word).
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

# A question is Chinese when at least this share of its units are Han characters.
# Counting a Latin word as one unit keeps "Milvus 支持 Windows 吗？" Chinese.
ZH_RATIO = 0.4

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}


def detect_language(text: str) -> str:
    """Return "zh" when at least ZH_RATIO of the text's units are Han characters, else "en"."""
    units = _UNIT.findall(text)
    if not units:
        return "en"
    han = sum(1 for unit in units if _HAN.fullmatch(unit))
    return "zh" if han / len(units) >= ZH_RATIO else "en"


def language_name(code: str) -> str:
    """The name of a language code as the model is told it ("English", ...)."""
    return LANGUAGE_NAMES.get(code, code)
