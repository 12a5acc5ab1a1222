"""Detect the language of a question, cheaply and predictably.

Script first: a question mostly in kana is Japanese, in Hangul Korean, in Thai script
Thai, in Han characters Chinese, without any statistics. Text in scripts several
languages share (Latin, Cyrillic, Arabic, Devanagari) goes to lingua, a detector made
for short text, restricted to the configured languages. When the evidence is thin (a
two-word question, "Was ist HNSW?") the answer is "" — unsure — and the prompt then
says nothing about the language rather than forcing one.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable

log = logging.getLogger(__name__)

DEFAULT_LANGUAGES = ("en", "zh", "ja", "ko", "fr", "de", "es", "pt", "it", "ru")

# CJK Unified Ideographs (+ extension A, compatibility ideographs): Chinese characters.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Scripts written without spaces between words: each character is one unit.
_CHAR_SCRIPTS = (
    r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # Han
    r"\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # Hiragana, Katakana (+ half-width)
    r"\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
)
# Units of text: one character of a script above, or one run of other letters/digits (a word).
_UNIT = re.compile(rf"[{_CHAR_SCRIPTS}]|[^\W_{_CHAR_SCRIPTS}]+")
# Identifiers, versions, URLs and code say nothing about the language a question is written in.
_NOISE = re.compile(
    r"`[^`]*`|https?://\S+|\S*[._/\\=<>{}\[\]()]\S*[A-Za-z0-9]\S*|\b\S*\d\S*\b"
    r"|\b[A-Za-z]*[a-z][A-Z]\w*|\b[A-Z]{2,}\w*"
)

# A question is written in a script when at least this share of its units are in it.
# Counting a Latin word as one unit keeps "Milvus 支持 Windows 吗？" Chinese.
SCRIPT_RATIO = 0.4
# Scripts that one language writes: that language, whatever lingua would say.
_SCRIPT_LANGUAGE = {
    "HANGUL": "ko", "HIRAGANA": "ja", "KATAKANA": "ja", "THAI": "th", "LAO": "lo",
    "KHMER": "km", "MYANMAR": "my", "GREEK": "el", "HEBREW": "he", "ARMENIAN": "hy",
    "GEORGIAN": "ka", "BENGALI": "bn", "GUJARATI": "gu", "GURMUKHI": "pa", "TAMIL": "ta",
    "TELUGU": "te", "KANNADA": "kn", "MALAYALAM": "ml", "SINHALA": "si", "ETHIOPIC": "am",
}
# lingua's confidence for short questions is spread over the candidates: trust its pick
# only when it is this confident and this far ahead of the runner-up.
MIN_CONFIDENCE = 0.4
MIN_LEAD = 0.2

LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese (简体中文)", "ja": "Japanese (日本語)", "ko": "Korean (한국어)",
    "fr": "French (français)", "de": "German (Deutsch)", "es": "Spanish (español)",
    "pt": "Portuguese (português)", "it": "Italian (italiano)", "ru": "Russian (русский)",
    "nl": "Dutch (Nederlands)", "pl": "Polish (polski)", "tr": "Turkish (Türkçe)",
    "uk": "Ukrainian (українська)", "vi": "Vietnamese (Tiếng Việt)", "th": "Thai (ไทย)",
    "id": "Indonesian (Bahasa Indonesia)", "ar": "Arabic (العربية)", "hi": "Hindi (हिन्दी)",
    "sv": "Swedish (svenska)",
}


class LanguageDetector:
    """The language of a question among `languages` (ISO 639-1 codes), or "" when unsure.

    Building the statistical part loads lingua's models for the configured languages
    that share a script (about 30 MB and a second each); it happens once, on first use
    or `warm_up()`. Raises ValueError for a code neither a script nor lingua knows.
    """

    def __init__(self, *, languages: Iterable[str] = DEFAULT_LANGUAGES) -> None:
        codes = tuple(dict.fromkeys(code.strip().lower() for code in languages if code.strip()))
        self.languages = codes or ("en",)
        unknown = [code for code in self.languages if not _script_decides(code) and _lingua_language(code) is None]
        if unknown:
            raise ValueError(f"Unknown language code(s): {', '.join(unknown)} (use ISO 639-1, e.g. en, ja, fr)")
        # Languages whose script alone does not tell them apart: lingua's job.
        self._statistical_codes = tuple(code for code in self.languages if not _script_decides(code))
        self._lock = threading.Lock()
        self._lingua = None

    def detect(self, text: str) -> str:
        """The question's language code, or "" when the text does not say clearly."""
        units = _UNIT.findall(text or "")
        if not units:
            return ""
        by_script = _script_language(units)
        if by_script is not None:
            return by_script if by_script in self.languages else ""
        return self._statistical(_NOISE.sub(" ", text))

    def warm_up(self) -> None:
        """Build the statistical detector now (it is otherwise built on first use)."""
        if len(self._statistical_codes) > 1:
            self._detector()

    def _statistical(self, text: str) -> str:
        codes = self._statistical_codes
        if not _UNIT.search(text) or not codes:
            return ""
        if len(codes) == 1:
            return codes[0]  # nothing to choose between
        values = self._detector().compute_language_confidence_values(text)
        if not values:
            return ""
        best = values[0]
        runner_up = values[1].value if len(values) > 1 else 0.0
        if best.value < MIN_CONFIDENCE or best.value - runner_up < MIN_LEAD:
            return ""
        return best.language.iso_code_639_1.name.lower()

    def _detector(self):
        with self._lock:  # one build, even when the first questions arrive together
            if self._lingua is None:
                self._lingua = _build_lingua(self._statistical_codes)
            return self._lingua


def _script_language(units: list[str]) -> str | None:
    """The language the script decides ("zh", "ja", "ko", ...), "" for a script no
    configured language claims, None when the script leaves it to statistics."""
    han = kana = 0
    scripts: dict[str, int] = {}
    for unit in units:
        script = _script(unit[0])
        if script == "HAN":
            han += 1
        elif script in ("HIRAGANA", "KATAKANA"):
            kana += 1
        scripts[script] = scripts.get(script, 0) + 1
    total = len(units)
    if kana and (han + kana) / total >= SCRIPT_RATIO:
        return "ja"
    if han / total >= SCRIPT_RATIO:
        return "zh"
    script, count = max(scripts.items(), key=lambda item: item[1])
    if script in _SCRIPT_LANGUAGE and count / total >= SCRIPT_RATIO:
        return _SCRIPT_LANGUAGE[script]
    return None


def _script(char: str) -> str:
    """The Unicode script of a character, from its name (LATIN, CYRILLIC, HANGUL, ...)."""
    if _HAN.match(char):
        return "HAN"
    name = unicodedata.name(char, "")
    if name.startswith("CJK UNIFIED"):
        return "HAN"
    if name.startswith("HALFWIDTH KATAKANA"):
        return "KATAKANA"
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def _script_decides(code: str) -> bool:
    return code in {"zh", "ja", *_SCRIPT_LANGUAGE.values()}


def _lingua_language(code: str):
    from lingua import IsoCode639_1, Language

    iso = getattr(IsoCode639_1, code.upper(), None)
    if iso is None:
        return None
    try:
        return Language.from_iso_code_639_1(iso)
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _build_lingua(codes: tuple[str, ...]):
    """One lingua detector per set of (two or more) languages, shared by the whole process."""
    from lingua import LanguageDetectorBuilder

    log.debug("building the language detector for %s", ", ".join(codes))
    languages = [_lingua_language(code) for code in codes]
    return LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build()


@functools.lru_cache(maxsize=8)
def language_detector(languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> LanguageDetector:
    """The process-wide detector for these languages (built once, shared by every caller)."""
    return LanguageDetector(languages=languages)


def detect_language(text: str, *, languages: Iterable[str] = DEFAULT_LANGUAGES) -> str:
    """The language code of `text` among `languages`, or "" when unsure."""
    return language_detector(tuple(languages)).detect(text)


def is_mostly_non_latin(text: str) -> bool:
    """True when at least SCRIPT_RATIO of the text's units are in a script other than Latin.

    Han, kana, Thai (no spaces between words) and Hangul (particles glued to words) are not
    split into the documents' words by the BM25 analyzer, and Cyrillic, Arabic, ... words
    are not searched by keyword at all: such a question keeps only its identifiers.
    """
    units = _UNIT.findall(text or "")
    if not units:
        return False
    other = sum(1 for unit in units if not unit[0].isdigit() and _script(unit[0]) != "LATIN")
    return other / len(units) >= SCRIPT_RATIO


def language_name(code: str) -> str:
    """The name of a language code as the model is told it ("English", ...)."""
    return LANGUAGE_NAMES.get(code, code)
