"""Whether to decline a question: one calibrated decision over several signals.

A single cosine threshold cannot tell "close to a documented topic but not in the
docs" from "asked in other words than the docs use". So the decision combines what
retrieval already measured (``signals``): the best body, sentence and title cosines, whether
the question names something the docs never mention that is no everyday word
(``foreign_term``: "LDAP", "GraphQL", "Okta"), and the reranker's P(yes) when
reranking is on. A tiny logistic model over them is fitted by ``supportbot eval
--fit-abstention`` on eval files with unanswerable items, saved as JSON, and read
back by the retriever; without a saved model (or one fitted for another embedder or
reranking setting) the plain thresholds decide as before.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from knowledge.errors import KnowledgeError
from knowledge.keywords import analyze, keyword_query
from knowledge.vocabulary import Vocabulary, query_terms, terms

logger = logging.getLogger(__name__)

# Which passages the signals look at: the first few of the final order.
TOP_PASSAGES = 3
# The signals a model may combine; `fit` picks which by leave-one-out on the eval file.
# The word-overlap signals (coverage, rare_coverage, unknown_share) are still computed
# for diagnosis but not offered: they measure how the question is phrased, and models
# fitted with them on the dev set declined half of the answerable support tickets
# (docs/answer-quality.md).
DENSE_SIGNALS = ("dense_top", "sentence_top", "title_top", "foreign_term")
RERANK_SIGNALS = ("rerank_top", *DENSE_SIGNALS)
# How many of the question's rarest known words `rare_coverage` looks for.
RARE_TERMS = 2
# L2 strengths tried (C of scikit-learn): eval files hold few unanswerable items.
REGULARISATIONS = (1.0, 0.1)
MAX_SIGNALS = 3
# The cut wrongly declines at most this share of the fitting items' answerable questions
# (the bar): declining every unanswerable item overfits once there are many.
MAX_FALSE_ABSTAIN = 0.10
# A word the docs never use and rarer than this in general use (Zipf scale: 4 is ten
# per million words, e.g. "keyboard"; "LDAP" is 2.2) names something the docs lack.
FOREIGN_ZIPF = 4.0
# Everyday words of these languages are not foreign terms. wordfreq's "small" lists
# (words down to Zipf 3; rarer ones count as 0) take 24 MB for all seven and 10 ms each
# to load; its default "large" lists took 264 MB and 1.3 s.
WORD_LANGUAGES = ("en", "fr", "de", "es", "pt", "it", "nl")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# An acronym as written ("KMS", "LDAP", "SSO"): wordfreq lower-cases every word, so its
# frequency is that of a word it collides with ("kms", kilometres), not its own.
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]*[A-Z][A-Z0-9]*")


def signals(
    result, question: str, vocabulary: Vocabulary | None, *, features: Sequence[str] | None = None
) -> dict[str, float]:
    """The decision's inputs for one retrieval result (see the module docstring).

    `foreign_term` (which loads word lists on first use) is left at 0 unless `features`
    is None (all signals, e.g. to fit a model) or names it."""
    candidates = result.candidates_top_k
    dense = [c.dense_score for c in candidates if c.dense_score is not None]
    title = [c.title_score for c in candidates if c.title_score is not None]
    rerank = [c.rerank_score for c in result.reranked_top_n if c.rerank_score is not None]
    sentence = [c.sentence_score for c in candidates if c.sentence_score is not None]
    wanted = query_terms(question)
    top = (result.reranked_top_n or candidates)[:TOP_PASSAGES]
    used = set()
    for candidate in top:
        used.update(terms(analyze(candidate.chunk.search_text)))
    if vocabulary is not None and vocabulary.sections:
        weights = {t: max(vocabulary.idf(t), 0.0) for t in wanted}
    else:
        weights = dict.fromkeys(wanted, 1.0)
    total = sum(weights.values())
    coverage = sum(w for t, w in weights.items() if t in used) / total if total else 1.0
    # The question's rarest words the docs know: what a right passage should quote.
    known = [t for t in wanted if vocabulary is None or t in vocabulary.df]
    rarest = sorted(known, key=lambda t: -weights.get(t, 0.0))[:RARE_TERMS]
    rare_coverage = sum(1 for t in rarest if t in used) / len(rarest) if rarest else 1.0
    best_dense = max(dense) if dense else 0.0
    return {
        "dense_top": best_dense,
        "title_top": max(title) if title else best_dense,
        # The best single sentence (knowledge.evidence): a near-miss question matches
        # the topic of whole sections, rarely one sentence as closely as an answer does.
        "sentence_top": max(sentence) if sentence else best_dense,
        "coverage": coverage,
        "rare_coverage": rare_coverage,
        "unknown_share": vocabulary.unknown_share(question) if vocabulary is not None else 0.0,
        "foreign_term": foreign_term(question, vocabulary)
        if features is None or "foreign_term" in features else 0.0,
        "rerank_top": max(rerank) if rerank else 0.0,
    }


def missing_signals(result) -> set[str]:
    """The score signals this result cannot measure (no title vectors, no sentence vectors,
    no reranking): `signals` stands the best body cosine in for them, which is on another
    scale, so a model needing one of them must not decide on this result."""
    missing = set()
    if not any(c.title_score is not None for c in result.candidates_top_k):
        missing.add("title_top")
    if not any(c.sentence_score is not None for c in result.candidates_top_k):
        missing.add("sentence_top")
    if not any(c.rerank_score is not None for c in result.reranked_top_n):
        missing.add("rerank_top")
    return missing


def foreign_term(question: str, vocabulary: Vocabulary | None) -> float:
    """How clearly the question names something the docs never mention: for its words no
    indexed section uses, FOREIGN_ZIPF minus their general frequency (wordfreq's Zipf
    scale, the highest of WORD_LANGUAGES), the largest such gap; 0 when there is none.

    A casual word the docs lack ("blows", "teammate") is frequent and scores ~0; a
    product or protocol they lack ("LDAP", "GraphQL") scores 4, and so does any acronym
    they never use ("KMS"), whatever word it spells in lower case.
    """
    if vocabulary is None or not vocabulary.sections:
        return 0.0
    gap = 0.0
    for word in dict.fromkeys(_LATIN_WORD.findall(keyword_query(question))):
        stems = terms(analyze(word))
        if not stems or any(stem in vocabulary.df for stem in stems):
            continue
        frequency = 0.0 if _ACRONYM.fullmatch(word) else _zipf(word)
        gap = max(gap, FOREIGN_ZIPF - frequency)
    return gap


def warm_up(model: AbstentionModel | None) -> None:
    """Load what the model's signals need now rather than on the first question
    (wordfreq's lists: about 0.3 s)."""
    if model is not None and "foreign_term" in model.features:
        _zipf("the")


def _zipf(word: str) -> float:
    from wordfreq import zipf_frequency  # loads each language's list on first use

    return max(zipf_frequency(word, lang, wordlist="small") for lang in WORD_LANGUAGES)


@dataclass(frozen=True)
class AbstentionModel:
    """Logistic P(answerable) over standardised signals, and the cut below which to decline."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    threshold: float
    score: str  # "dense" (reranking off) or "rerank"
    model_id: str = ""  # the embedder it was fitted with
    fitted_on: str = ""  # the eval file
    false_abstain: float | None = None  # on the items it was fitted on
    declined_unanswerable: str = ""

    def p_answerable(self, values: Mapping[str, float]) -> float:
        z = self.intercept + sum(
            c * (values.get(f, 0.0) - m) / s
            for f, m, s, c in zip(self.features, self.mean, self.scale, self.coef)
        )
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def declines(self, values: Mapping[str, float]) -> bool:
        return self.p_answerable(values) < self.threshold

    def describe(self) -> str:
        terms_ = " ".join(
            f"{c:+.2f}*z({f})" for f, c in zip(self.features, self.coef)
        )
        return (f"P(answerable) = sigmoid({self.intercept:+.2f} {terms_}); decline below "
                f"{self.threshold:.3f}")

    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> AbstentionModel | None:
        """The saved model, None when there is none. Raises KnowledgeError when unreadable."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for key in ("features", "mean", "scale", "coef"):
                data[key] = tuple(data[key])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise KnowledgeError(f"Cannot read the abstention model {path}: {error}.") from None


def fit(
    outcomes: Sequence[dict], *, score: str, model_id: str = "", fitted_on: str = ""
) -> AbstentionModel | None:
    """Fit P(answerable) on outcomes carrying ``signals`` and ``answerable``.

    Which signals (up to MAX_SIGNALS, always with the best dense or rerank score) and
    which regularisation are chosen by leave-one-out over the items: most held-out
    unanswerable items declined, then fewest held-out answerable ones declined, then
    more signals. The cut is the highest that wrongly declines at most MAX_FALSE_ABSTAIN
    of the answerable items, midway between them and the best-scoring unanswerable item
    below. Answerable items whose answer retrieval did not find (``rank_before`` None)
    are left out: their signals measure a retrieval miss, and an answer from those
    passages would be wrong anyway, so they say nothing about where to cut (with an
    embedder that cannot read a language, they would pull the cut below every question
    in it). Returns None without both answerable and unanswerable items.
    """
    rows = [o for o in outcomes if o.get("signals") and _found(o)]
    if len({bool(o["answerable"]) for o in rows}) < 2:
        return None
    anchor, *others = RERANK_SIGNALS if score == "rerank" else DENSE_SIGNALS
    best = None
    for size in range(MAX_SIGNALS):
        for extra in itertools.combinations(others, size):
            features = (anchor, *extra)
            for strength in REGULARISATIONS:
                declined = false = 0
                for held in range(len(rows)):
                    model = _fit(rows[:held] + rows[held + 1:], features, strength, score)
                    if model is None:
                        continue
                    decision = model.declines(rows[held]["signals"])
                    if rows[held]["answerable"]:
                        false += decision
                    else:
                        declined += decision
                key = (declined, -false, len(features))
                if best is None or key > best[0]:
                    best = (key, features, strength)
    _, features, strength = best
    model = _fit(rows, features, strength, score)
    positives = sum(1 for o in rows if o["answerable"])
    negatives = len(rows) - positives
    false = sum(1 for o in rows if o["answerable"] and model.declines(o["signals"]))
    declined = sum(1 for o in rows if not o["answerable"] and model.declines(o["signals"]))
    return dataclasses.replace(
        model, model_id=model_id, fitted_on=fitted_on,
        false_abstain=round(false / positives, 4),
        declined_unanswerable=f"{declined}/{negatives}",
    )


def _found(outcome: dict) -> bool:
    """Unanswerable, or answerable with its answer among the candidates (rows without a
    rank, as in hand-made rows, count as found)."""
    return not outcome["answerable"] or outcome.get("rank_before", 0) is not None


def _fit(rows: Sequence[dict], features: tuple[str, ...], strength: float, score: str):
    """Logistic regression on standardised features, cut as ``fit`` says."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    labels = np.array([1 if o["answerable"] else 0 for o in rows])
    if len(set(labels.tolist())) < 2:
        return None
    x = np.array([[o["signals"].get(f, 0.0) for f in features] for o in rows], dtype=float)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    regression = LogisticRegression(C=strength, class_weight="balanced", solver="liblinear")
    regression.fit((x - mean) / scale, labels)
    model = AbstentionModel(
        features=features, mean=tuple(mean.tolist()), scale=tuple(scale.tolist()),
        coef=tuple(regression.coef_[0].tolist()), intercept=float(regression.intercept_[0]),
        threshold=0.5, score=score,
    )
    p = [model.p_answerable(o["signals"]) for o in rows]
    positives = sorted(pi for pi, y in zip(p, labels) if y)
    allowed = math.floor(MAX_FALSE_ABSTAIN * len(positives) + 1e-9)
    # Declining below `upper` wrongly declines `allowed` answerable items at most.
    upper = positives[allowed] if allowed < len(positives) else positives[-1] + 1e-6
    lower = max([positives[allowed - 1] if allowed else 0.0,
                 *(pi for pi, y in zip(p, labels) if not y and pi < upper)])
    return dataclasses.replace(model, threshold=(lower + upper) / 2)
