"""The keyword (BM25) side's text analysis, shared by indexing and searching.

Milvus builds the BM25 vectors, but Milvus Lite's analyzer ignores its stop-word and
stemmer filters, so "changed" would never match "changes". The English stemming
happens here instead (Snowball, through PyStemmer), applied the same way to the
passage text stored for BM25 and to the question: ``analyze`` is that one rule.
``keyword_query`` picks which of the question's words are worth searching for.
"""

from __future__ import annotations

import functools
import re
import threading
from importlib.metadata import version

import Stemmer

from knowledge.language import is_mostly_non_latin

# Changes whenever `analyze` or the stemmer library does: an index analysed another way
# must be rebuilt.
ANALYZER_VERSION = f"snowball-english-2+pystemmer-{version('PyStemmer')}"

# Function and question words: in nearly every passage, so on the BM25 side they only
# add noise.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers him his how i if in into is it its itself just let me
more most my no nor not now of off on once only or other our ours out over own same she
should so some such than that the their theirs them then there these they this those through
to too under until up very was we were what when where which while who whom why will with
would you your yours yourself get got use using used want need please tell know way ways
many much several one something nothing anything right away also like
s t don doesn didn isn aren wasn weren won
""".split())
# Latin-script words; inner dots, dashes, slashes and underscores keep identifiers whole.
_LATIN_WORD = re.compile(r"[A-Za-z0-9]+(?:[._/\\-][A-Za-z0-9]+)*(?:'[A-Za-z]+)?")
# Runs of Latin letters get stemmed; digits, punctuation and Han text pass as they are.
_LETTERS = re.compile(r"[A-Za-z]+")
# Plural acronyms (GPUs, SDKs), which Snowball leaves as they are.
_ACRONYM_PLURAL = re.compile(r"\b([A-Z]{2,})s\b")
# What marks a word as an identifier: a dot, underscore or slash inside, a digit, an
# inner capital (camelCase), or all capitals of length two or more (FLAT, IVF_SQ8).
_IDENTIFIER = re.compile(r"[._/\\]|\d|[a-z][A-Z]|^[A-Z]{2,}$")
_STEMMER = Stemmer.Stemmer("english")
_STEMMER_LOCK = threading.Lock()  # a PyStemmer object is not safe to share between threads


def analyze(text: str) -> str:
    """`text` with every run of Latin letters lower-cased and stemmed.

    Digits, punctuation and other scripts stay in place, so Milvus's standard
    tokenizer still splits identifiers (`milvus.yaml`, `IVF_SQ8`) the same way
    on both sides.
    """
    text = _ACRONYM_PLURAL.sub(r"\1", text)
    return _LETTERS.sub(lambda match: _stem(match.group().lower()), text)


def keyword_query(query: str) -> str:
    """The words of a question the BM25 side searches with: all but stop words.

    A question written mostly in another script than Latin (Chinese, Japanese, Korean,
    Thai, Russian...) keeps only its identifiers (`IVF_FLAT`, `2.4.5`,
    `common.security.authorizationEnabled`): the standard analyzer cannot split Han, kana
    or Thai into words, and the plain English words of a mixed question ("Milvus",
    "Windows") match too many passages to help. Returns "" when nothing is
    left, meaning: search dense only. The store analyses what this returns.
    """
    words = _LATIN_WORD.findall(query)
    if is_mostly_non_latin(query):
        words = [w for w in words if _IDENTIFIER.search(w)]
    # "what's", "can't": the part before the apostrophe decides.
    return " ".join(w for w in words if w.lower().split("'")[0] not in STOP_WORDS)


def identifiers(query: str) -> list[str]:
    """The words of a query that look like identifiers (names, versions, error types)."""
    return [w for w in _LATIN_WORD.findall(query) if _IDENTIFIER.search(w)]


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    # A corpus repeats a few thousand words; the cache makes indexing cost nothing here.
    with _STEMMER_LOCK:
        return _STEMMER.stemWord(word)
